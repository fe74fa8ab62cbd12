import BardModel
import Foundation
import XCTest

/// Real processes over tcp loopback. Slow: run when BARD_SLOW=1 (CI sets it).
final class ClusterProcessTests: XCTestCase {
    var dir = ""
    var started: [Process] = []

    override func setUpWithError() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["BARD_SLOW"] == "1", "slow multi-process test: set BARD_SLOW=1")
        dir = NSTemporaryDirectory() + "bard-cluster-e2e-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        for p in started where p.isRunning { p.terminate() }
        for p in started { p.waitUntilExit() }
        try? FileManager.default.removeItem(atPath: dir)
    }

    func launch(_ args: [String], log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binary)
        p.arguments = args
        FileManager.default.createFile(atPath: log, contents: nil)
        let h = FileHandle(forWritingAtPath: log)
        p.standardOutput = h; p.standardError = h
        try p.run()
        started.append(p)
        return p
    }

    func waitExit(_ p: Process, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        return !p.isRunning
    }

    static func freePort() -> Int { 20000 + Int(getpid() % 20000) + Int.random(in: 0..<5000) }

    /// `bard train` and a coordinator with 1, 2, 3 (uneven shards of 32 columns) and 4 workers, 30 steps from the
    /// same --init and --seed: the final parameters agree within 1e-5 relative.
    func testCoordinatorWithOneToFourWorkersMatchesSingleProcess() throws {
        var text = ""
        var x: UInt64 = 7
        let words = ["to", "be", "or", "not", "that", "is", "the", "question", "\n", "ROMEO:", "JULIET:"]
        while text.count < 40000 { x = x &* 6364136223846793005 &+ 1442695040888963407; text += words[Int(x >> 59) % words.count] + " " }
        let data = dir + "/corpus.txt"
        try text.write(toFile: data, atomically: true, encoding: .utf8)
        let common = ["--data", data, "--layers", "2", "--embed", "16", "--hidden", "24", "--dropout", "0.2", "--batch", "32",
                      "--bptt", "10", "--steps", "30", "--seed", "11", "--lr", "0.003"]
        // The shared initial weights, written by a one-step run with another seed.
        let initRun = try launch(["train"] + common.map { $0 == "30" ? "1" : $0 } + ["--out", dir + "/init", "--seed", "99"], log: dir + "/init.log")
        XCTAssertTrue(waitExit(initRun, timeout: 60)); XCTAssertEqual(initRun.terminationStatus, 0)
        let initFile = dir + "/init/model.safetensors"
        let single = try launch(["train"] + common + ["--init", initFile, "--out", dir + "/single"], log: dir + "/single.log")
        XCTAssertTrue(waitExit(single, timeout: 120)); XCTAssertEqual(single.terminationStatus, 0)
        let reference = try ModelCheckpoint.load(path: dir + "/single/model.safetensors").params.array

        for workers in 1...4 {
            let port = Self.freePort()
            let endpoint = "tcp://127.0.0.1:\(port)"
            let out = dir + "/c\(workers)"
            let coordinator = try launch(["coordinator"] + common + ["--init", initFile, "--out", out, "--workers", String(workers),
                                          "--bind", endpoint], log: dir + "/c\(workers).log")
            let pool = try launch(["worker", "--connect", endpoint, "--count", String(workers), "--data", data],
                                  log: dir + "/w\(workers).log")
            XCTAssertTrue(waitExit(coordinator, timeout: 180), "coordinator with \(workers) workers did not finish")
            XCTAssertEqual(coordinator.terminationStatus, 0, (try? String(contentsOfFile: dir + "/c\(workers).log", encoding: .utf8)) ?? "")
            XCTAssertTrue(waitExit(pool, timeout: 30), "workers did not exit after training")
            let params = try ModelCheckpoint.load(path: out + "/model.safetensors").params.array
            var diff = 0.0, norm = 0.0
            for i in 0..<params.count {
                diff += Double(params[i] - reference[i]) * Double(params[i] - reference[i])
                norm += Double(reference[i]) * Double(reference[i])
            }
            XCTAssertLessThan((diff / norm).squareRoot(), 1e-5, "\(workers) workers")
            let log = try String(contentsOfFile: dir + "/c\(workers).log", encoding: .utf8)
            XCTAssertTrue(log.contains("done: step 30"), log)
        }
    }

    /// A fetch during and after training gets a verified checkpoint; the coordinator lingers to serve it.
    func testFetchWaitsForTheFinalCheckpoint() throws {
        let text = String(repeating: "the quick brown fox jumps over the lazy dog\n", count: 400)
        let data = dir + "/c.txt"
        try text.write(toFile: data, atomically: true, encoding: .utf8)
        let endpoint = "tcp://127.0.0.1:\(Self.freePort())"
        let coordinator = try launch(["coordinator", "--data", data, "--layers", "1", "--embed", "8", "--hidden", "16",
                                      "--batch", "8", "--bptt", "10", "--steps", "80", "--workers", "2", "--bind", endpoint,
                                      "--out", dir + "/out", "--linger", "30", "--checkpoint-every", "10"], log: dir + "/c.log")
        _ = try launch(["worker", "--connect", endpoint, "--count", "2"], log: dir + "/w.log")
        let fetch = try launch(["fetch", "--from", endpoint, "--out", dir + "/fetched", "--wait", "--timeout", "120"], log: dir + "/f.log")
        XCTAssertTrue(waitExit(fetch, timeout: 150))
        XCTAssertEqual(fetch.terminationStatus, 0, (try? String(contentsOfFile: dir + "/f.log", encoding: .utf8)) ?? "")
        let fetched = try ModelCheckpoint.load(path: dir + "/fetched/model.safetensors")
        XCTAssertEqual(fetched.step, 80)
        coordinator.interrupt()
        XCTAssertTrue(waitExit(coordinator, timeout: 10))
    }
}
