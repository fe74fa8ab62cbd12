import Foundation
import XCTest

/// Three hosts in network namespaces (scripts/netns-cluster.sh, which creates and removes them): the coordinator
/// on one, a worker on each of the others, one worker's link cut mid-run. Needs root and iproute2; skipped with the
/// script's reason otherwise. Slow: BARD_SLOW=1.
final class NetworkNamespaceTests: ProcessTestCase {
    func testCutLinkIsEvictedAndTheRunCompletes() throws {
        let data = try writeCorpus()
        let script = CLITests.root.appendingPathComponent("scripts/netns-cluster.sh").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [script, "--steps", "600", "--data", data, "--heal"]
        var env = ProcessInfo.processInfo.environment
        env["BARD_BIN"] = CLITests.binary
        p.environment = env
        let out = Pipe()
        p.standardOutput = out; p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        if p.terminationStatus == 77 {
            throw XCTSkip("network namespaces unavailable: " + (text.split(separator: "\n").last.map(String.init) ?? ""))
        }
        XCTAssertEqual(p.terminationStatus, 0, text)
        XCTAssertTrue(text.contains("netns-cluster: ok:"), text)
        XCTAssertTrue(text.contains("evicted"), text)
    }
}
