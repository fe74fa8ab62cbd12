import BardNumerics
import Foundation
import XCTest

final class ThreadTeamTests: XCTestCase {
    /// `parallel` runs every index exactly once: alone, from inside one of its own bodies (the team is busy: the inner
    /// call runs on its caller's thread), and from four threads at once, all inside their bodies together (one takes
    /// the team, the other three run theirs on their own threads). Everything runs off the test's thread, and every
    /// wait has a total bound.
    func testParallelRunsEveryIndexOnceWhateverElseUsesTheTeam() {
        let counts = Counts()
        let end = DispatchTime.now() + 60
        let done = DispatchSemaphore(value: 0)
        Thread {
            ThreadTeam.parallel(3) { i in counts.add("alone", i) }
            ThreadTeam.parallel(3) { i in
                ThreadTeam.parallel(3) { j in counts.add("nested", 3 * i + j) }
            }
            ThreadTeam.parallel(1) { i in counts.add("one", i) }
            ThreadTeam.parallel(0) { i in counts.add("none", i) }
            done.signal()
        }.start()
        XCTAssertEqual(done.wait(timeout: end), .success, "parallel did not return")
        XCTAssertEqual(counts.of("alone"), [0: 1, 1: 1, 2: 1])
        XCTAssertEqual(counts.of("nested"), Dictionary(uniqueKeysWithValues: (0..<9).map { ($0, 1) }))
        XCTAssertEqual(counts.of("one"), [0: 1])
        XCTAssertEqual(counts.of("none"), [:])

        // A team size nothing else asks for (Blocks asks for the core count), so that only these callers contend.
        let callers = 4, size = 7
        for caller in 0..<callers {
            Thread {
                var threads: [Int: pthread_t] = [:]
                let lock = NSLock()
                ThreadTeam.parallel(size) { i in
                    lock.withLock { threads[i] = pthread_self() }
                    counts.add("concurrent", size * caller + i)
                    guard i == 0 else { return }
                    // Index 0 waits until every caller is inside its body, so that the team is busy for the others.
                    counts.add("inside", caller)
                    while counts.of("inside").count < callers && DispatchTime.now() < end { usleep(1000) }
                }
                if Set(threads.values.map { "\($0)" }).count == 1 { counts.add("on its own thread", caller) }
                done.signal()
            }.start()
        }
        for _ in 0..<callers { XCTAssertEqual(done.wait(timeout: end), .success, "a caller of parallel did not return") }
        XCTAssertEqual(counts.of("concurrent"), Dictionary(uniqueKeysWithValues: (0..<size * callers).map { ($0, 1) }))
        XCTAssertEqual(counts.of("inside").count, callers, "the callers were not inside their bodies together")
        XCTAssertEqual(counts.of("on its own thread").count, callers - 1, "one caller takes the team, the others run alone")
    }

    final class Counts: @unchecked Sendable {
        let lock = NSLock()
        var seen: [String: [Int: Int]] = [:]
        func add(_ what: String, _ i: Int) { lock.withLock { seen[what, default: [:]][i, default: 0] += 1 } }
        func of(_ what: String) -> [Int: Int] { lock.withLock { seen[what] ?? [:] } }
    }
}
