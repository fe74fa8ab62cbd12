import BardNumerics
import Foundation
import XCTest

final class ThreadTeamTests: XCTestCase {
    /// `parallel` runs every index exactly once: alone, from inside one of its own bodies (the team is busy: the inner
    /// call runs on its caller's thread), and from several threads at once (one takes the team, the others run
    /// alone). Every wait has a total bound.
    func testParallelRunsEveryIndexOnceWhateverElseUsesTheTeam() {
        let counts = Counts()
        ThreadTeam.parallel(3) { i in counts.add("alone", i) }
        XCTAssertEqual(counts.of("alone"), [0: 1, 1: 1, 2: 1])
        ThreadTeam.parallel(3) { i in
            ThreadTeam.parallel(3) { j in counts.add("nested", 3 * i + j) }
        }
        XCTAssertEqual(counts.of("nested"), Dictionary(uniqueKeysWithValues: (0..<9).map { ($0, 1) }))
        let done = DispatchSemaphore(value: 0)
        for caller in 0..<4 {
            Thread {
                ThreadTeam.parallel(2) { i in counts.add("concurrent", 2 * caller + i) }
                done.signal()
            }.start()
        }
        let end = DispatchTime.now() + 30
        for _ in 0..<4 { XCTAssertEqual(done.wait(timeout: end), .success, "a caller of parallel did not return") }
        XCTAssertEqual(counts.of("concurrent"), Dictionary(uniqueKeysWithValues: (0..<8).map { ($0, 1) }))
        ThreadTeam.parallel(1) { i in counts.add("one", i) }
        ThreadTeam.parallel(0) { i in counts.add("none", i) }
        XCTAssertEqual(counts.of("one"), [0: 1])
        XCTAssertEqual(counts.of("none"), [:])
    }

    final class Counts: @unchecked Sendable {
        let lock = NSLock()
        var seen: [String: [Int: Int]] = [:]
        func add(_ what: String, _ i: Int) { lock.withLock { seen[what, default: [:]][i, default: 0] += 1 } }
        func of(_ what: String) -> [Int: Int] { lock.withLock { seen[what] ?? [:] } }
    }
}
