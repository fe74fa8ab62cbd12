import BardCluster
import BardModel
import BardNumerics
import XCTest

/// The coordinator's and the worker's parts driven in memory with a fake clock: no sockets, no threads, no waiting.
final class MembershipTests: XCTestCase {
    let a: PeerID = Array("a.1".utf8), b: PeerID = Array("b.1".utf8), b2: PeerID = Array("b.2".utf8)

    func testEvictionComesExactlyAtTheHeartbeatTimeout() {
        var m = Membership()
        m.policy.heartbeatTimeout = 3
        XCTAssertEqual(m.register(peer: a, name: "a", credential: nil, now: 10), .joined)
        XCTAssertEqual(m.nextSilence, 13)
        XCTAssertTrue(m.silent(now: 12.999).isEmpty)
        XCTAssertEqual(m.silent(now: 13).map(\.name), ["a"])
        m.heard(a, now: 12)
        XCTAssertTrue(m.silent(now: 14.999).isEmpty)
        XCTAssertEqual(m.silent(now: 15).map(\.name), ["a"])
    }

    func testTimeAwayFromTheSocketIsNobodysSilence() {
        var m = Membership()
        _ = m.register(peer: a, name: "a", credential: nil, now: 0)
        // The coordinator validated for 10 s: nobody could be heard meanwhile.
        m.excuse(gap: 10, now: 10)
        XCTAssertTrue(m.silent(now: 10).isEmpty)
        XCTAssertEqual(m.silent(now: 13).count, 1)
    }

    func testEvictedWorkerRejoinsAndRestartedWorkerTakesItsPlaceBack() {
        var m = Membership()
        _ = m.register(peer: a, name: "a", credential: nil, now: 0)
        _ = m.register(peer: b, name: "b", credential: nil, now: 0)
        m.assigned(b, columns: 4..<8, parameterVersion: 7)
        // Restarted on a new connection: same name, same (no) key: it replaces the old connection, keeps its place in
        // the order, and has no parameters any more.
        XCTAssertEqual(m.register(peer: b2, name: "b", credential: nil, now: 1), .restarted(previous: b))
        XCTAssertEqual(m.members.map(\.peer), [a, b2])
        XCTAssertEqual(m.member(b2)?.parameterVersion, .max)
        XCTAssertNil(m.member(b))
        // Evicted, then back: it joins at the end.
        m.remove(a)
        XCTAssertEqual(m.register(peer: a, name: "a", credential: nil, now: 2), .joined)
        XCTAssertEqual(m.members.map(\.name), ["b", "a"])
    }

    func testNamesAreBoundToKeysAndRoles() {
        var m = Membership()
        let owner = Credential(key: "K1", role: .worker), thief = Credential(key: "K2", role: .worker)
        XCTAssertEqual(m.register(peer: a, name: "w", credential: owner, now: 0), .joined)
        guard case .refused(.nameTaken, _) = m.register(peer: b, name: "w", credential: thief, now: 1) else {
            return XCTFail("another key took a registered name")
        }
        XCTAssertEqual(m.members.map(\.peer), [a])
        XCTAssertFalse(m.isAuthentic(a, credential: thief))
        XCTAssertTrue(m.isAuthentic(a, credential: owner))
        XCTAssertTrue(m.isAuthentic(b, credential: thief), "an unregistered connection speaks for nobody yet")
        guard case .refused(.wrongRole, _) = m.register(peer: b, name: "laptop", credential: Credential(key: "K3", role: .fetch), now: 1) else {
            return XCTFail("a fetch key registered as a worker")
        }
        // The owner restarting with its own key is fine.
        XCTAssertEqual(m.register(peer: b2, name: "w", credential: owner, now: 2), .restarted(previous: a))
    }

    func testNamesAndNumbersAreBounded() {
        var m = Membership()
        m.policy.maxWorkers = 2
        for bad in ["", String(repeating: "x", count: 65), "two words", "line\nbreak", "caf\u{e9}"] {
            guard case .refused(.badName, _) = m.register(peer: a, name: bad, credential: nil, now: 0) else {
                return XCTFail("accepted the name \(bad.debugDescription)")
            }
        }
        XCTAssertEqual(m.register(peer: a, name: String(repeating: "x", count: 64), credential: nil, now: 0), .joined)
        XCTAssertEqual(m.register(peer: b, name: "b", credential: nil, now: 0), .joined)
        guard case .refused(.full, _) = m.register(peer: b2, name: "c", credential: nil, now: 0) else { return XCTFail("over the cap") }
    }

    func testQuarantineGrowsAndEnds() {
        var m = Membership()
        m.policy.quarantineBase = 5
        _ = m.register(peer: a, name: "a", credential: nil, now: 0)
        _ = m.register(peer: b, name: "b", credential: nil, now: 0)
        XCTAssertEqual(m.quarantine(b, now: 100), 5)
        XCTAssertEqual(m.active(now: 104.9).map(\.name), ["a"])
        XCTAssertEqual(m.nextRelease(now: 101), 105)
        XCTAssertEqual(m.active(now: 105).map(\.name), ["a", "b"])
        XCTAssertEqual(m.quarantine(b, now: 200), 10)
        XCTAssertEqual(m.quarantine(b, now: 300), 20)
        XCTAssertEqual(m.members.count, 2, "quarantine is not eviction: the worker stays registered")
    }
}

final class StepRoundTests: XCTestCase {
    let a: PeerID = [1], b: PeerID = [2], c: PeerID = [3]
    let shape = ResultShape(parameterCount: 3, stateFloatsPerColumn: 2, hasCell: false)

    func result(_ step: UInt64, _ columns: Range<Int>) -> StepResult {
        StepResult(stepID: step, columns: columns, lossSum: 1, computeSeconds: 0, gradients: [1, 2, 3],
                   h: [Float](repeating: 0, count: columns.count * 2), c: [])
    }

    func testStaleDuplicateAndMisfitRepliesAreRejected() {
        var round = StepRound(stepID: 9, assignments: ColumnPlan.assign(columns: 4, to: [a, b]), now: 0, timeout: 5)
        XCTAssertEqual(round.pending[a], 0..<2)
        guard case .rejected = round.accept(result(8, 0..<2), from: a, shape: shape) else { return XCTFail("stale accepted") }
        guard case .rejected = round.accept(result(9, 2..<4), from: a, shape: shape) else { return XCTFail("wrong columns accepted") }
        guard case .rejected = round.accept(result(9, 0..<2), from: c, shape: shape) else { return XCTFail("a stranger's result accepted") }
        var short = result(9, 0..<2); short.gradients = [1]
        guard case .rejected = round.accept(short, from: a, shape: shape) else { return XCTFail("wrong shape accepted") }
        XCTAssertEqual(round.accept(result(9, 0..<2), from: a, shape: shape), .accepted)
        guard case .rejected = round.accept(result(9, 0..<2), from: a, shape: shape) else { return XCTFail("duplicate accepted") }
        XCTAssertFalse(round.isComplete)
        XCTAssertEqual(round.accept(result(9, 2..<4), from: b, shape: shape), .accepted)
        XCTAssertTrue(round.isComplete)
        XCTAssertEqual(round.results.count, 2)
    }

    /// A result whose gradient is in shared memory is taken only from a worker given a region, and carries no
    /// gradient frame of its own.
    func testSharedResultsOnlyFromWorkersWithARegion() {
        var round = StepRound(stepID: 9, assignments: ColumnPlan.assign(columns: 4, to: [a, b]), now: 0, timeout: 5)
        var shared = result(9, 0..<2); shared.gradients = []; shared.sharedGradients = true
        guard case .rejected = round.accept(shared, from: a, shape: shape) else { return XCTFail("a region it was not given") }
        var both = result(9, 0..<2); both.sharedGradients = true
        guard case .rejected = round.accept(both, from: a, shape: shape, sharedAllowed: true) else { return XCTFail("both shared and sent") }
        XCTAssertEqual(round.accept(shared, from: a, shape: shape, sharedAllowed: true), .accepted)
        XCTAssertEqual(round.accept(result(9, 2..<4), from: b, shape: shape, sharedAllowed: true), .accepted)
        XCTAssertTrue(round.isComplete)
    }

    func testDeadlineAndOneResendPerWorker() {
        var round = StepRound(stepID: 1, assignments: ColumnPlan.assign(columns: 4, to: [a, b]), now: 10, timeout: 5)
        XCTAssertTrue(round.overdue(now: 14.99).isEmpty)
        XCTAssertEqual(Set(round.overdue(now: 15)), [a, b])
        XCTAssertTrue(round.mayResend(to: a))
        XCTAssertFalse(round.mayResend(to: a), "a second resend within one step")
        XCTAssertFalse(round.mayResend(to: c), "a resend to a worker that owes nothing")
    }

    func testRestartedWorkerOwesWhatItsOldConnectionOwed() {
        var round = StepRound(stepID: 1, assignments: ColumnPlan.assign(columns: 4, to: [a, b]), now: 0, timeout: 5)
        round.move(from: b, to: c)
        XCTAssertFalse(round.owes(b))
        XCTAssertEqual(round.pending[c], 2..<4)
        XCTAssertEqual(round.accept(result(1, 2..<4), from: c, shape: shape), .accepted)
    }

    func testTheDeadlineFollowsTheMeasuredStepTime() {
        var d = StepDeadline()
        XCTAssertEqual(d.seconds, StepDeadline.initial)
        for s in [0.2, 0.25, 0.3] { d.record(s) }
        XCTAssertEqual(d.seconds, StepDeadline.floor, "5 x 0.25 s is under the floor")
        for _ in 0..<20 { d.record(4) }
        XCTAssertEqual(d.seconds, 20)
        for _ in 0..<20 { d.record(100) }
        XCTAssertEqual(d.seconds, StepDeadline.ceiling)
        d.override = 7
        XCTAssertEqual(d.seconds, 7)
    }

    func testShardsAreContiguousAndCoverAllColumns() {
        for workers in 1...6 {
            let s = ColumnPlan.shards(columns: 32, workers: workers)
            XCTAssertEqual(s.first?.lowerBound, 0)
            XCTAssertEqual(s.last?.upperBound, 32)
            for (x, y) in zip(s, s.dropFirst()) { XCTAssertEqual(x.upperBound, y.lowerBound) }
            XCTAssertLessThanOrEqual(s.map(\.count).max()! - s.map(\.count).min()!, 1)
        }
        XCTAssertEqual(ColumnPlan.shards(columns: 2, workers: 4).count, 2)
    }
}

final class WorkerSessionTests: XCTestCase {
    let shape = ModelShape(cell: "lstm", activation: "tanh", layers: 1, embed: 4, hidden: 6, dropout: 0, outputBias: true,
                           vocabularySize: 10, steps: 3, columns: 4)

    func request(_ id: UInt64, parameters: [Float] = []) -> StepRequest {
        StepRequest(stepID: id, parameterVersion: 1, columns: 0..<2, totalColumns: 4, steps: 3, dropoutSeed: 0, dropoutStep: 0,
                    training: true, parameters: parameters, tokens: [Int32](repeating: 1, count: 8), h: [], c: [])
    }

    func testHelloUntilWelcomedThenHeartbeatsThenIdleTimeout() {
        var s = WorkerSession(name: "w", fingerprint: "fp", maxParameters: 1 << 20, now: 0)
        XCTAssertEqual(s.tick(now: 0), [.send(.hello(name: "w", fingerprint: "fp"))])
        XCTAssertEqual(s.tick(now: 0.5), [])
        XCTAssertEqual(s.tick(now: 1), [.send(.hello(name: "w", fingerprint: "fp"))])
        XCTAssertEqual(s.receive(.welcome(shape, fingerprint: "fp"), now: 1.5), [.build(shape)])
        XCTAssertEqual(s.tick(now: 2), [.send(.heartbeat)])
        s.idleTimeout = 10
        XCTAssertEqual(s.tick(now: 11.5), [.send(.heartbeat)])
        XCTAssertEqual(s.tick(now: 11.6), [.stop(.coordinatorSilent(seconds: 10))])
    }

    /// The hello names the host; an offer is opened once, a new one (another coordinator) abandons the step in flight
    /// and its queue, and a welcome without one lets go of it.
    func testSharedMemoryOffersAreAttachedOnceAndANewOneVoidsWork() {
        var s = WorkerSession(name: "w", fingerprint: "", maxParameters: 1 << 20, now: 0)
        s.host = "boot-1"
        XCTAssertEqual(s.tick(now: 0), [.send(.hello(name: "w", fingerprint: "", host: "boot-1"))])
        let first = SharedOffer(parameters: "p1", gradients: "g1", token: 5)
        XCTAssertEqual(s.receive(.welcome(shape, fingerprint: "", shared: first), now: 0), [.build(shape), .attach(first)])
        XCTAssertEqual(s.receive(.welcome(shape, fingerprint: "", shared: first), now: 0), [])
        XCTAssertEqual(s.receive(.step(request(1)), now: 0), [.compute(request(1))])
        _ = s.receive(.step(request(2)), now: 0)
        let second = SharedOffer(parameters: "p2", gradients: "g2", token: 6)
        XCTAssertEqual(s.receive(.welcome(shape, fingerprint: "", shared: second), now: 0), [.abandon, .attach(second)])
        XCTAssertTrue(s.queue.isEmpty)
        XCTAssertEqual(s.receive(.welcome(shape, fingerprint: ""), now: 0), [.attach(nil)])
    }

    func testOneStepAtATimeNewerStepsSupersedeAndReRegistrationVoidsWork() {
        var s = WorkerSession(name: "w", fingerprint: "", maxParameters: 1 << 20, now: 0)
        XCTAssertEqual(s.receive(.step(request(1)), now: 0), [.log("ignored a step request before a welcome")])
        _ = s.receive(.welcome(shape, fingerprint: ""), now: 0)
        XCTAssertEqual(s.receive(.step(request(1, parameters: [1, 2])), now: 0), [.compute(request(1, parameters: [1, 2]))])
        XCTAssertEqual(s.receive(.step(request(2, parameters: [3])), now: 0), [])
        XCTAssertEqual(s.receive(.step(request(3)), now: 0), [], "queued behind the step in flight")
        // Step 3 superseded step 2 but keeps the parameters it carried.
        let (send, next) = s.computed(stepID: 1)
        XCTAssertTrue(send)
        XCTAssertEqual(next, [.compute(request(3, parameters: [3]))])
        // The coordinator restarted: the step in flight is void and the worker says hello at once.
        XCTAssertEqual(s.receive(.refuse(.reRegister, reason: "who?"), now: 1),
                       [.log("the coordinator asks this worker to register again"), .abandon])
        XCTAssertFalse(s.registered)
        XCTAssertEqual(s.tick(now: 1.01), [.send(.hello(name: "w", fingerprint: ""))])
        XCTAssertFalse(s.computed(stepID: 3).send, "a reply of a void registration went out")
    }

    func testATooLargeModelIsRefusedBeforeAnythingIsAllocated() {
        var big = shape
        big.hidden = 4096; big.layers = 4; big.vocabularySize = 100_000
        var s = WorkerSession(name: "w", fingerprint: "", maxParameters: 1_000_000, now: 0)
        let actions = s.receive(.welcome(big, fingerprint: ""), now: 0)
        XCTAssertFalse(actions.contains { if case .build = $0 { return true } else { return false } })
        guard case .stop(.refused(let why)) = actions.last else { return XCTFail("\(actions)") }
        XCTAssertTrue(why.contains("--max-parameters 1000000"), why)
        // Nonsense shapes are rejected and counted, not built.
        var nonsense = shape
        nonsense.cell = "transformer"
        XCTAssertEqual(s.receive(.welcome(nonsense, fingerprint: ""), now: 0).count, 1)
        XCTAssertEqual(s.rejected, 1)
        XCTAssertNil(s.shape)
    }

    func testFinalRefusalsStopTheWorkerAndPassingOnesDoNot() {
        var s = WorkerSession(name: "w", fingerprint: "", maxParameters: 1 << 20, now: 0)
        guard case .stop(.refused) = s.receive(.refuse(.nameTaken, reason: "taken"), now: 0).last else { return XCTFail() }
        var t = WorkerSession(name: "w", fingerprint: "", maxParameters: 1 << 20, now: 0)
        let actions = t.receive(.refuse(.full, reason: "full"), now: 0)
        XCTAssertFalse(actions.contains { if case .stop = $0 { return true } else { return false } })
    }
}

final class LogTextTests: XCTestCase {
    func testPeerStringsCannotForgeLogLines() {
        let forged = LogText.escape("w1\ncoordinator: done: step 100\u{1b}[2J")
        XCTAssertFalse(forged.contains("\n"))
        XCTAssertFalse(forged.contains("\u{1b}"))
        XCTAssertEqual(forged, "w1\\x0acoordinator: done: step 100\\x1b[2J")
        XCTAssertEqual(LogText.escape(String(repeating: "y", count: 300)).count, 203)
    }
}

final class ReducerTests: XCTestCase {
    /// The workers' gradients are added in column order, whichever worker answered first, and spreading the addition
    /// over threads by blocks of parameters gives the same bits as one thread.
    func testSumIsInColumnOrderAndTheSameBitsForAnyThreadCount() {
        var config = Config()
        config.layers = 1; config.embed = 4; config.hidden = 3; config.dropout = 0
        let model = Model(config: config, vocabularySize: 5)
        let n = 2 * Blocks.size + 7
        var rng = RNG(seed: 5)
        let results = [4..<7, 0..<1, 1..<4].map { columns in  // uneven shares, answered out of order
            StepResult(stepID: 1, columns: columns, lossSum: Double(columns.count), computeSeconds: 0,
                       gradients: (0..<n).map { _ in Float(rng.next() % 100_000) / 7 - 7000 },
                       h: [Float](repeating: Float(columns.lowerBound), count: columns.count * 3),
                       c: [Float](repeating: 1, count: columns.count * 3))
        }
        var reference = [Float](repeating: 0, count: n)
        for r in results.sorted(by: { $0.columns.lowerBound < $1.columns.lowerBound }) {
            for i in 0..<n { reference[i] += r.gradients[i] }
        }
        // The mean of the sum and its blocks' sums of squares, as the trainer's own pass makes them.
        let mean = FloatBuffer(reference)
        let meanSquares = Optimizer.mean(mean, over: 7 * 25, threads: 1)
        for threads in [1, 2, 5] {
            // Whatever the buffer held before is overwritten, not added to.
            let grads = FloatBuffer([Float](repeating: 3, count: n)), state = model.makeState(columns: 7)
            let (loss, _, squares) = Reducer.reduce(results, into: grads, state: state, threads: threads)
            XCTAssertEqual(loss, 7)
            XCTAssertEqual(squares, [])
            XCTAssertTrue(grads.array == reference, "\(threads) threads")
            XCTAssertEqual(state.h.array, [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 4])
            let meaned = FloatBuffer([Float](repeating: -1, count: n))
            let m = Reducer.reduce(results, into: meaned, state: model.makeState(columns: 7), threads: threads, meanOver: 7 * 25)
            XCTAssertTrue(meaned.array == mean.array, "\(threads) threads, mean")
            XCTAssertEqual(m.squares, meanSquares, "\(threads) threads, mean")
        }
    }

    /// Results in shared memory hold their table's gradient instead of the embedding's and W_ih0's: the sum is that of
    /// results by message holding those two gradients (`Model.addTableGradients` of each table), whatever the other
    /// results' regions hold in those places; it is the same bits for any thread count; and a NaN or an infinity in a
    /// region is found as it is added, in the table's gradient or elsewhere (but not where the region is not read).
    func testResultsInSharedMemoryAddTheirTablesGradients() throws {
        var config = Config()
        config.layers = 1; config.embed = 100; config.hidden = 100; config.dropout = 0
        let model = Model(config: config, vocabularySize: 7)
        let layout = SharedLayout(model), n = model.parameterCount
        XCTAssertGreaterThan(n, 2 * Blocks.size)  // several blocks, cut at the table's parameters
        let params = model.makeParameters(seed: 3)
        var rng = RNG(seed: 9)
        func random(_ count: Int) -> [Float] { (0..<count).map { _ in Float(rng.next() % 100_000) / 7_000 - 7 } }
        let columns = [4..<7, 0..<1, 1..<4]
        let gradients = columns.map { _ in random(n) }, tables = columns.map { _ in random(layout.tableCount) }
        // What each would send by message: its gradient with the two made from its table.
        let asMessages = zip(gradients, tables).map { g, t -> [Float] in
            let full = FloatBuffer(g)
            for r in model.tableParameterRanges { (full.pointer + r.lowerBound).update(repeating: 0, count: r.count) }
            t.withUnsafeBufferPointer { model.addTableGradients($0.baseAddress!, params: params.pointer, into: full.pointer, part: 0, of: 1) }
            return full.array
        }
        func result(_ k: Int, shared: Bool) -> StepResult {
            StepResult(stepID: 1, columns: columns[k], lossSum: 1, computeSeconds: 0, gradients: shared ? [] : asMessages[k],
                       h: [Float](repeating: 0, count: columns[k].count * 100), c: [Float](repeating: 0, count: columns[k].count * 100),
                       sharedGradients: shared)
        }
        var reference = [Float](repeating: 0, count: n)
        for k in [1, 2, 0] { for i in 0..<n { reference[i] += asMessages[k][i] } }
        let memory = InMemorySharedMemory()
        var regions: [Int: SharedRegion] = [:]
        for k in 0..<3 {
            let region = try memory.create(count: layout.count, token: 1)
            gradients[k].withUnsafeBufferPointer { region.floats.update(from: $0.baseAddress!, count: n) }
            tables[k].withUnsafeBufferPointer { layout.table(in: region).update(from: $0.baseAddress!, count: layout.tableCount) }
            // Where the embedding's and W_ih0's gradients would be: never read.
            for r in model.tableParameterRanges { region.floats[r.lowerBound + r.count / 2] = .nan }
            regions[columns[k].lowerBound] = region
        }
        let table = TableReduction(model: model)
        var sumOf: [[Int]: [Float]] = [:]
        for sharedOnes in [[0, 1, 2], [1], [0, 2]] {
            let results = (0..<3).map { result($0, shared: sharedOnes.contains($0)) }
            var sums: [[Float]] = []
            for threads in [1, 2, 5] {
                let grads = FloatBuffer([Float](repeating: 3, count: n))
                let (loss, nonFinite, _) = Reducer.reduce(results, into: grads, state: model.makeState(columns: 7), threads: threads,
                                                          shared: regions, table: table, params: params)
                XCTAssertEqual(loss, 3)
                XCTAssertEqual(nonFinite, [], "\(sharedOnes)")
                sums.append(grads.array)
            }
            XCTAssertTrue(sums.allSatisfy { $0 == sums[0] }, "\(sharedOnes): the bits depend on the thread count")
            XCTAssertLessThan(relativeDifference(sums[0], from: reference), Tolerance.reduction, "\(sharedOnes)")
            sumOf[sharedOnes] = sums[0]
        }
        // A NaN or an infinity in a table's gradient, or in the rest of what is read, is that region's writer's: each
        // region in turn, all in shared memory (the first in column order copied, not added) and with column 0 by
        // message (the regions then are not the results' indexes).
        let last = model.layout.total - 1  // the decoder's bias: not one of the table's parameters
        XCTAssertFalse(model.tableParameterRanges.contains { $0.contains(last) })
        let firstRead = try XCTUnwrap((0..<n).first { i in !model.tableParameterRanges.contains { $0.contains(i) } })
        for sharedOnes in [[0, 1, 2], [0, 2]] {
            let results = (0..<3).map { result($0, shared: sharedOnes.contains($0)) }
            for k in sharedOnes {
                let first = columns[k].lowerBound, region = regions[first]!
                for bad in [Float.nan, .infinity] {
                    for at in [layout.parameterCount + layout.tableCount - 1, layout.parameterCount, last, firstRead] {
                        let keep = region.floats[at]
                        region.floats[at] = bad
                        let (_, nonFinite, _) = Reducer.reduce(results, into: FloatBuffer(count: n), state: model.makeState(columns: 7),
                                                               threads: 2, shared: regions, table: table, params: params)
                        XCTAssertEqual(nonFinite, [first], "\(sharedOnes): \(bad) at \(at) of column \(first)'s region")
                        region.floats[at] = keep
                    }
                }
            }
        }
        // A finite table's gradient whose products overflow is its writer's too, and no other result is blamed, even
        // if the region holds something else by the time that is found (what is blamed is what was added); after it,
        // the same sum as before.
        let results = (0..<3).map { result($0, shared: $0 != 1) }  // column 0 by message
        let region = regions[4]!, keep = Array(UnsafeBufferPointer(start: layout.table(in: region), count: layout.tableCount))
        layout.table(in: region).update(repeating: .greatestFiniteMagnitude, count: layout.tableCount)
        XCTAssertEqual(Reducer.reduce(results, into: FloatBuffer(count: n), state: model.makeState(columns: 7), threads: 2,
                                      shared: regions, table: table, params: params).nonFinite, [4])
        keep.withUnsafeBufferPointer { layout.table(in: region).update(from: $0.baseAddress!, count: layout.tableCount) }
        XCTAssertEqual(table.overflowing(count: 2, params: params, threads: 2), [1], "the table as it was added, not as it is now")
        let again = FloatBuffer(count: n)
        XCTAssertEqual(Reducer.reduce(results, into: again, state: model.makeState(columns: 7), threads: 2, shared: regions,
                                      table: table, params: params).nonFinite, [])
        XCTAssertTrue(again.array == sumOf[[0, 2]], "the sum after an overflow")
    }
}
