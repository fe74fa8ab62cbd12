import BardMetrics
import BardModel
import BardNumerics
import BardTraining
import Foundation
import XCTest
import BardCluster

/// The coordinator shards' math (issue 11), without processes: slices of the parameters, the column-order sum of the
/// workers' gradient slices, the global norm from the shards' block parts, and the optimiser on each slice.
final class ShardCoreTests: XCTestCase {
    func testSlicesAreContiguousBlockAlignedAndAsEqualAsBlocksAllow() throws {
        for n in [Blocks.size, 5 * Blocks.size - 17, 7 * Blocks.size, 2_200_000] {
            for k in 1...4 where k <= Blocks.count(n) {
                let slices = try ParameterSlices.plan(parameterCount: n, shards: k)
                XCTAssertEqual(slices.count, k)
                XCTAssertEqual(slices.first?.lowerBound, 0)
                XCTAssertEqual(slices.last?.upperBound, n)
                for (a, b) in zip(slices, slices.dropFirst()) { XCTAssertEqual(a.upperBound, b.lowerBound) }
                XCTAssertTrue(slices.allSatisfy { $0.lowerBound % Blocks.size == 0 && !$0.isEmpty }, "\(n) over \(k)")
                let blocks = slices.map { Blocks.count($0.count) }
                XCTAssertLessThanOrEqual((blocks.max() ?? 0) - (blocks.min() ?? 0), 1, "\(n) over \(k): \(blocks)")
            }
        }
        XCTAssertThrowsError(try ParameterSlices.plan(parameterCount: 2 * Blocks.size, shards: 3)) { error in
            XCTAssertTrue("\(error)".contains("--shards 2 or fewer"), "\(error)")
        }
        XCTAssertThrowsError(try ParameterSlices.plan(parameterCount: 100, shards: 0))
    }

    /// Three workers with uneven column shares, Adam with clipping (it clips on some steps and not on others) and
    /// averaging: with 1 to 4 shards, the parameters, average and moments are the same bits as one optimiser's over
    /// the column-order sum.
    func testShardsGiveTheSameBitsAsOneOptimiser() throws {
        let n = 4 * Blocks.size + 1234, columns = [0..<3, 3..<5, 5..<10], meanOver = 10 * 7, steps = 6
        let owners: [PeerID] = columns.indices.map { [UInt8($0)] }
        let initial = FloatBuffer(count: n)
        var rng = RNG(seed: 11)
        for i in 0..<n { initial[i] = rng.uniform(-0.5, 0.5) }
        /// Worker gradient sums of each step; large on even steps, so the clip (5) bites on those only.
        func gradients(step: Int, worker: Int) -> [Float] {
            var r = RNG(seed: UInt64(100 * step + worker))
            let scale: Float = step % 2 == 0 ? 400 : 0.5
            return (0..<n).map { _ in r.uniform(-0.5, 0.5) * scale }
        }
        // The reference: one optimiser over the whole vector.
        let params = FloatBuffer(count: n), average = FloatBuffer(count: n), grads = FloatBuffer(count: n)
        params.copy(from: initial); average.copy(from: initial)
        let optimizer = Optimizer(kind: .adam, lr: 0, parameterCount: n)
        var norms: [Double] = []
        for step in 0..<steps {
            grads.zero()
            for w in columns.indices {
                gradients(step: step, worker: w).withUnsafeBufferPointer { Kernels.add($0.baseAddress!, into: grads.pointer, count: n) }
            }
            optimizer.lr = 1e-3 * Double(step + 1)
            let report = optimizer.step(params: params, grads: grads, meanOver: meanOver, clip: 5, average: average, decay: 0.9,
                                        threads: 2)
            norms.append(report.norm)
        }
        XCTAssertTrue(norms.enumerated().contains { $0.offset % 2 == 0 && $0.element > 5 }, "\(norms)")
        XCTAssertTrue(norms.enumerated().contains { $0.offset % 2 == 1 && $0.element < 5 }, "\(norms)")

        for k in 1...4 {
            let slices = try ParameterSlices.plan(parameterCount: n, shards: k)
            let shards = slices.map { ShardCore(slice: $0, optimizer: .adam, averaging: true, threads: k % 2 + 1) }
            for s in shards {
                let p = Array(initial.array[s.slice])
                try s.seed(params: p, average: p, step: 0, m: [Float](repeating: 0, count: p.count),
                           v: [Float](repeating: 0, count: p.count), version: 0)
            }
            for step in 0..<steps {
                var parts: [[Double]] = Array(repeating: [], count: k)
                for s in shards { s.begin(stepID: UInt64(step + 1), columns: columns, owners: owners, meanOver: meanOver) }
                // Workers answer in any order; each sends shard j its slice.
                for w in columns.indices.reversed() {
                    let g = gradients(step: step, worker: w)
                    for (j, s) in shards.enumerated() {
                        switch s.accept(stepID: UInt64(step + 1), columns: columns[w], gradients: Array(g[s.slice]), from: owners[w]) {
                        case .complete(let p): parts[j] = p
                        case .accepted: XCTAssertNotEqual(w, 0)
                        case .rejected(let why): XCTFail(why)
                        }
                    }
                }
                let norm = parts.joined().reduce(0, +).squareRoot()
                XCTAssertEqual(norm, norms[step], "\(k) shards, step \(step): the norm")
                for s in shards {
                    let report = s.apply(stepID: UInt64(step + 1), lr: 1e-3 * Double(step + 1), norm: norm, clip: 5, decay: 0.9,
                                         version: UInt64(step + 1))
                    XCTAssertEqual(report?.paramsFinite, true)
                    XCTAssertEqual(s.version, UInt64(step + 1))
                }
            }
            XCTAssertEqual(shards.flatMap(\.params.array), params.array, "\(k) shards: parameters")
            XCTAssertEqual(shards.flatMap { $0.average!.array }, average.array, "\(k) shards: average")
            XCTAssertEqual(shards.flatMap(\.optimizer.m.array), optimizer.m.array, "\(k) shards: first moments")
            XCTAssertEqual(shards.flatMap(\.optimizer.v.array), optimizer.v.array, "\(k) shards: second moments")
            XCTAssertTrue(shards.allSatisfy { $0.optimizer.step == steps })
        }
    }

    func testOnlyOwedFiniteSlicesOfTheStepInProgressAreTaken() throws {
        let s = ShardCore(slice: Blocks.size..<(Blocks.size + 8), optimizer: .sgd, averaging: false, threads: 1)
        try s.seed(params: [Float](repeating: 1, count: 8), average: nil, step: 0, m: [], v: [], version: 0)
        let ok = [Float](repeating: 1, count: 8)
        let a: PeerID = [1], b: PeerID = [2]
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: ok, from: a), .rejected("a gradient slice for step 1, which is not the step in progress"))
        s.begin(stepID: 1, columns: [0..<2, 2..<4], owners: [a, b], meanOver: 4)
        XCTAssertNil(s.apply(stepID: 1, lr: 0.1, norm: 1, clip: 0, decay: 0, version: 1), "not summed yet")
        XCTAssertEqual(s.accept(stepID: 2, columns: 0..<2, gradients: ok, from: a), .rejected("a gradient slice for step 2, which is not the step in progress"))
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<3, gradients: ok, from: a), .rejected("a gradient slice for columns 0..<3, not owed"))
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: [1, 2], from: a), .rejected("a gradient slice of 2 floats, the slice has 8"))
        var bad = ok; bad[3] = .nan
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: bad, from: a), .rejected("non-finite gradients for columns 0..<2"))
        // Only the worker that owes the columns may send them (another worker cannot get in first).
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: ok, from: b),
                       .rejected("a gradient slice for columns 0..<2 from a worker that does not owe them"))
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: ok, from: a), .accepted)
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: ok, from: a), .rejected("a second gradient slice for columns 0..<2"))
        // The lead abandons step 1 (a worker was lost) and tries again as step 2 over one worker.
        s.begin(stepID: 2, columns: [0..<4], owners: [b], meanOver: 4)
        XCTAssertEqual(s.accept(stepID: 1, columns: 2..<4, gradients: ok, from: b), .rejected("a gradient slice for step 1, which is not the step in progress"))
        guard case .complete(let parts) = s.accept(stepID: 2, columns: 0..<4, gradients: [Float](repeating: 2, count: 8), from: b) else {
            return XCTFail("the only slice completes the step")
        }
        XCTAssertEqual(parts, [8 * 0.25])  // mean 2/4 = 0.5 per element, squared 0.25, eight elements, one block
        XCTAssertNil(s.apply(stepID: 1, lr: 0.1, norm: 1, clip: 0, decay: 0, version: 1), "not the summed step")
        XCTAssertNotNil(s.apply(stepID: 2, lr: 0.1, norm: 1, clip: 0, decay: 0, version: 7))
        XCTAssertEqual(s.params.array, [Float](repeating: 0.95, count: 8))
        XCTAssertEqual(s.version, 7)
        XCTAssertNil(s.apply(stepID: 2, lr: 0.1, norm: 1, clip: 0, decay: 0, version: 8), "applied once")
    }
}

/// A shard process's driver over in-memory sockets and a fake clock, the lead and two workers played by the test.
final class ShardServerTests: XCTestCase {
    func testAShardServesItsSliceThroughAStep() throws {
        let leadHub = InMemoryHub(), workerHub = InMemoryHub()
        let lead = leadHub.server()
        let w0 = workerHub.client(id: "w0"), w1 = workerHub.client(id: "w1")
        let fetcher = workerHub.client(id: "f", credential: Credential(key: "k", role: .fetch))
        var now = 100.0
        var lines: [String] = []
        let shard = ShardServer(lead: leadHub.client(id: "s0"), workers: workerHub.server(), name: "s0",
                                endpoint: "tcp://127.0.0.1:5601", serverKey: "", threads: 1, clock: { now }, log: { lines.append($0) })
        func fromLead() throws -> Message? { try lead.receive(timeout: 0).map { try Message.decode($0.frames) } }
        func toShard(_ m: Message) { _ = lead.send(to: Array("s0".utf8), m.encode()) }
        func reply(_ c: ClientTransport) throws -> Message? { try c.receive(timeout: 0).map { try Message.decode($0) } }

        XCTAssertTrue(try shard.pass())
        XCTAssertEqual(try fromLead(), .join(name: "s0", endpoint: "tcp://127.0.0.1:5601", serverKey: ""))
        // A worker before the slice is assigned is told to come back.
        _ = w0.send(Message.want(version: 0).encode())
        XCTAssertTrue(try shard.pass())
        guard case .refuse(.staleParameters, _) = try reply(w0) else { return XCTFail("a want before the assignment") }

        let initial: [Float] = (0..<8).map { Float($0) / 8 }
        toShard(.assign(SliceState(index: 0, shards: 2, slice: 0..<8, parameterCount: 16, optimizer: "adam", optimizerStep: 0,
                                   version: 0, params: initial, average: [], m: [Float](repeating: 0, count: 8),
                                   v: [Float](repeating: 0, count: 8))))
        XCTAssertTrue(try shard.pass())
        XCTAssertEqual(shard.core?.slice, 0..<8)
        // The seeding is acknowledged as an update of step 0 to the seeded version.
        guard case .applied(0, 0, true, true, let seeded) = try fromLead() else { return XCTFail("the seeding's acknowledgement") }
        // It received the assignment at least, and sent its join and this acknowledgement.
        XCTAssertGreaterThanOrEqual(seeded.received, UInt64(4 * 8 * 3))
        XCTAssertGreaterThan(seeded.sent, 0)
        _ = w0.send(Message.want(version: 0).encode())
        _ = w1.send(Message.want(version: 1).encode())  // the next version: answered once it is made
        _ = fetcher.send(Message.want(version: 0).encode())
        XCTAssertTrue(try shard.pass())
        XCTAssertEqual(try reply(w0), .parameters(version: 0, initial))
        XCTAssertNil(try reply(w1))
        guard case .refuse(.wrongRole, _) = try reply(fetcher) else { return XCTFail("a fetch key at a shard") }

        toShard(.plan(stepID: 5, meanOver: 4, columns: [0..<2, 2..<4], owners: [Array("w0".utf8), Array("w1".utf8)]))
        XCTAssertTrue(try shard.pass())
        let g0 = [Float](repeating: 1, count: 8), g1 = [Float](repeating: 3, count: 8)
        _ = w1.send(Message.gradient(stepID: 5, columns: 2..<4, g1).encode())
        _ = w0.send(Message.gradient(stepID: 4, columns: 0..<2, g0).encode())  // an old step's
        _ = w0.send(Message.gradient(stepID: 5, columns: 0..<2, [1, 2]).encode())  // the wrong size
        XCTAssertTrue(try shard.pass())
        XCTAssertNil(try fromLead())
        _ = w0.send(Message.gradient(stepID: 5, columns: 0..<2, g0).encode())
        _ = w0.send(Message.gradient(stepID: 5, columns: 0..<2, g0).encode())  // once summed, nothing more is taken
        XCTAssertTrue(try shard.pass())
        XCTAssertEqual(try fromLead(), .summed(stepID: 5, parts: [8]))  // mean (1 + 3) / 4 = 1, squared, 8 elements
        XCTAssertEqual(shard.rejected, 3)

        toShard(.apply(UpdateOrder(stepID: 5, lr: 0.1, norm: 8.0.squareRoot(), clip: 0, decay: 0, version: 1)))
        XCTAssertTrue(try shard.pass())
        guard case .applied(5, 1, true, true, let step) = try fromLead() else { return XCTFail("the update's acknowledgement") }
        // Since the seeding: the parameters to w0 went out, and two accepted gradients of 8 floats came in.
        XCTAssertGreaterThanOrEqual(step.sent, UInt64(4 * 8))
        XCTAssertGreaterThanOrEqual(step.received, UInt64(2 * 4 * 8))
        guard case .parameters(1, let updated) = try reply(w1) else { return XCTFail("the waiting worker gets version 1") }
        XCTAssertEqual(updated, initial.map { $0 - 0.1 }, accuracy: 1e-6)  // Adam's first step: lr x sign
        // A worker may ask for a version twice (a reply lost on the way), not three times; a version far ahead is
        // refused, not remembered.
        _ = w1.send(Message.want(version: 1).encode())
        _ = w1.send(Message.want(version: 1).encode())
        _ = w0.send(Message.want(version: 7).encode())
        XCTAssertTrue(try shard.pass())
        guard case .parameters(1, _) = try reply(w1), case .refuse(.badRequest, _) = try reply(w1) else {
            return XCTFail("a second want is served, a third refused")
        }
        XCTAssertEqual(shard.rejected, 4)
        guard case .refuse(.staleParameters, _) = try reply(w0) else { return XCTFail("a want of a version far ahead") }

        toShard(.apply(UpdateOrder(stepID: 5, lr: 0.1, norm: 1, clip: 0, decay: 0, version: 2)))  // applied once
        toShard(.gather(version: 1))
        XCTAssertTrue(try shard.pass())
        guard case .refuse(.badRequest, _) = try fromLead(), case .gathered(let state) = try fromLead() else {
            return XCTFail("a second apply is refused, a gather answered")
        }
        XCTAssertEqual(state.version, 1)
        XCTAssertEqual(state.optimizerStep, 1)
        XCTAssertEqual(state.params, updated)

        // A gradient slice that overtakes its step's plan (the worker's path was faster than the lead's) is kept
        // until the plan comes.
        _ = w0.send(Message.gradient(stepID: 6, columns: 0..<4, [Float](repeating: 1, count: 8)).encode())
        XCTAssertTrue(try shard.pass())
        XCTAssertNil(try fromLead())
        toShard(.plan(stepID: 6, meanOver: 4, columns: [0..<4], owners: [Array("w0".utf8)]))
        XCTAssertTrue(try shard.pass())
        XCTAssertEqual(try fromLead(), .summed(stepID: 6, parts: [0.5]))  // (1/4)^2 x 8
        XCTAssertEqual(shard.rejected, 4)
        // Not for a step far ahead, nor another worker's columns.
        _ = w0.send(Message.gradient(stepID: 10, columns: 0..<4, [Float](repeating: 1, count: 8)).encode())
        toShard(.plan(stepID: 7, meanOver: 4, columns: [0..<4], owners: [Array("w0".utf8)]))
        XCTAssertTrue(try shard.pass())
        _ = w1.send(Message.gradient(stepID: 7, columns: 0..<4, [Float](repeating: 1, count: 8)).encode())
        XCTAssertTrue(try shard.pass())
        XCTAssertNil(try fromLead())
        XCTAssertEqual(shard.rejected, 6)

        // The lead goes silent: the shard says join again, and stops when the lead says done.
        now += 11
        XCTAssertTrue(try shard.pass())
        XCTAssertEqual(try fromLead(), .join(name: "s0", endpoint: "tcp://127.0.0.1:5601", serverKey: ""))
        toShard(.done)
        XCTAssertFalse(try shard.pass())
    }
}

private func XCTAssertEqual(_ a: [Float], _ b: [Float], accuracy: Float, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, file: file, line: line)
    for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: accuracy, file: file, line: line) }
}

/// The lead's bookkeeping of one sharded step: parts in any order give one process's norm, and only what is owed,
/// once, for this step, counts.
final class ShardRoundTests: XCTestCase {
    func testPartsInAnyOrderGiveOneProcesssNormAndOnlyWhatIsOwedCounts() throws {
        let n = 4 * Blocks.size + 99  // 5 blocks: slices of 1, 2 and 2
        let grads = FloatBuffer(count: n)
        var rng = RNG(seed: 3)
        for i in 0..<n { grads[i] = rng.uniform(-2, 2) }
        let whole = Optimizer.mean(FloatBuffer(grads.array), over: 7, threads: 2).reduce(0, +).squareRoot()
        let slices = try ParameterSlices.plan(parameterCount: n, shards: 3)
        let peers: [PeerID] = [[1], [2], [3]]
        var round = ShardRound(stepID: 9, shards: Array(zip(peers, slices)).map { (peer: $0.0, slice: $0.1) })
        let parts = slices.map { Optimizer.mean(FloatBuffer(Array(grads.array[$0])), over: 7, threads: 1) }
        XCTAssertEqual(round.summed(stepID: 8, parts: parts[2], from: peers[2]), .rejected("norm parts for step 8, the current one is 9"))
        XCTAssertEqual(round.summed(stepID: 9, parts: parts[2], from: [7]), .rejected("norm parts from a shard not in this step"))
        XCTAssertEqual(round.summed(stepID: 9, parts: parts[0], from: peers[2]), .rejected("1 norm parts for a slice of 2 blocks"))
        for i in [2, 0] { XCTAssertEqual(round.summed(stepID: 9, parts: parts[i], from: peers[i]), .accepted) }
        XCTAssertEqual(round.summed(stepID: 9, parts: parts[0], from: peers[0]), .rejected("norm parts sent twice for step 9"))
        XCTAssertNil(round.norm)
        XCTAssertEqual(round.owing, [peers[1]])
        XCTAssertEqual(round.summed(stepID: 9, parts: parts[1], from: peers[1]), .accepted)
        XCTAssertEqual(round.norm, whole, "the same bits as one process's norm")

        XCTAssertEqual(round.applied(stepID: 9, version: 4, paramsFinite: true, momentsFinite: true, from: peers[0]),
                       .rejected("an acknowledgement of step 9 version 4, the update in progress is step 9 version none"))
        round.ordered(version: 4)
        XCTAssertEqual(round.owing, peers)
        XCTAssertEqual(round.applied(stepID: 9, version: 3, paramsFinite: true, momentsFinite: true, from: peers[0]),
                       .rejected("an acknowledgement of step 9 version 3, the update in progress is step 9 version 4"))
        XCTAssertEqual(round.applied(stepID: 9, version: 4, paramsFinite: true, momentsFinite: true, from: peers[0]), .accepted)
        XCTAssertEqual(round.applied(stepID: 9, version: 4, paramsFinite: true, momentsFinite: true, from: peers[0]),
                       .rejected("an acknowledgement sent twice for step 9"))
        XCTAssertEqual(round.applied(stepID: 9, version: 4, paramsFinite: true, momentsFinite: false, from: peers[2]), .accepted)
        XCTAssertFalse(round.isApplied)
        XCTAssertEqual(round.applied(stepID: 9, version: 4, paramsFinite: true, momentsFinite: true, from: peers[1]), .accepted)
        XCTAssertTrue(round.isApplied)
        XCTAssertTrue(round.paramsFinite)
        XCTAssertFalse(round.momentsFinite)
        XCTAssertEqual(round.owing, [])
    }
}

final class ShardRosterTests: XCTestCase {
    /// The lead's list of shards through a run: slices in join order once all are in, planned again over those that
    /// remain after a loss, a replacement waiting without a slice, a restart on a new connection losing its state,
    /// and no renaming of a shard that owns a slice.
    func testSlicesArePlannedOverTheShardsThereAre() throws {
        var roster = ShardRoster(wanted: 3)
        let n = 4 * Blocks.size
        for k in 0..<3 {
            XCTAssertEqual(roster.join(peer: [UInt8(k)], name: "s\(k)", endpoint: "tcp://h:\(k)", serverKey: "", credential: nil, now: 0), .joined)
        }
        XCTAssertTrue(roster.isComplete)
        XCTAssertFalse(roster.isSeeded)
        try roster.assignSlices(parameterCount: n)
        XCTAssertEqual(roster.shards.map(\.slice), [0..<Blocks.size, Blocks.size..<2 * Blocks.size, 2 * Blocks.size..<n])
        for k in 0..<3 { roster.seeded([UInt8(k)]) }
        XCTAssertTrue(roster.isSeeded)
        XCTAssertEqual(roster.join(peer: [0], name: "other", endpoint: "tcp://h:9", serverKey: "", credential: nil, now: 1),
                       .refused(.badName, "a coordinator shard that owns a slice cannot change its name (s0 to other)"))
        // s1 is lost; the slices are planned over s0 and s2, each unseeded until it acknowledges.
        XCTAssertEqual(roster.remove([1])?.name, "s1")
        XCTAssertTrue(try roster.assignSlices(parameterCount: n))
        XCTAssertEqual(roster.shards.map(\.slice), [0..<2 * Blocks.size, 2 * Blocks.size..<n])
        XCTAssertFalse(roster.isSeeded)
        XCTAssertEqual(roster.owners, 2)
        // A replacement joins without a slice and waits for the next plan; a restarted s2 has lost its state.
        XCTAssertEqual(roster.join(peer: [7], name: "s3", endpoint: "tcp://h:3", serverKey: "", credential: nil, now: 2), .joined)
        XCTAssertEqual(roster.waiting.map(\.name), ["s3"])
        XCTAssertEqual(roster.join(peer: [8], name: "s2", endpoint: "tcp://h:2", serverKey: "", credential: nil, now: 2),
                       .rejoined(previous: [2], lostState: true))
        XCTAssertEqual(roster.join(peer: [8], name: "s2", endpoint: "tcp://h:2", serverKey: "", credential: nil, now: 3),
                       .rejoined(previous: [8], lostState: false))
        try roster.assignSlices(parameterCount: n)
        XCTAssertEqual(roster.owners, 3)
        XCTAssertEqual(roster.waiting.count, 0)
        XCTAssertEqual(roster.join(peer: [9], name: "s4", endpoint: "tcp://h:4", serverKey: "", credential: nil, now: 4),
                       .refused(.full, "this run has its 3 coordinator shards"))
    }
}

/// Shard servers and workers on threads over in-memory hubs, the lead's `hub` among them: what the sharded runs
/// below are made of.
final class InMemoryFleet: @unchecked Sendable {
    let hub = InMemoryHub()
    let lock = NSLock()
    var shardHubs: [String: InMemoryHub] = [:]
    private(set) var servers: [ShardServer] = []

    /// Shard `s<k>`, serving its workers at tcp://shard-<k>:1.
    func startShard(_ k: Int) {
        let endpoint = "tcp://shard-\(k):1", shardHub = InMemoryHub()
        let server = ShardServer(lead: hub.client(id: "s\(k)"), workers: shardHub.server(), name: "s\(k)", endpoint: endpoint,
                                 serverKey: "", threads: 1, log: { _ in })
        lock.lock(); shardHubs[endpoint] = shardHub; servers.append(server); lock.unlock()
        Thread { try? server.run() }.start()
    }

    /// Worker `w<i>`; without `linked`, it has no way to reach the shards.
    func startWorker(_ i: Int, linked: Bool = true) {
        let w = WorkerCore(transport: hub.client(id: "w\(i)"), name: "w\(i)", fingerprint: "", threads: 1, log: { _ in })
        if linked {
            w.shardConnector = { [self] s in
                lock.lock(); defer { lock.unlock() }
                guard let h = shardHubs[s.endpoint] else { throw BardError.io("no shard at \(s.endpoint)") }
                return h.client(id: "w\(i)")
            }
        }
        Thread { try? w.run() }.start()
    }
}

/// A whole sharded run over the in-memory transport: a lead, K shard servers and N workers on threads, against the
/// star coordinator and one process.
final class InMemoryShardedRunTests: XCTestCase {
    func text() -> String { wordCorpus() }

    /// Four blocks of parameters (about 125 K), Adam with clipping that bites, dropout and an average.
    func trainer(_ out: String, log: @escaping (String) -> Void = { _ in }) throws -> Trainer {
        var c = Config()
        c.layers = 2; c.embed = 32; c.hidden = 96; c.dropout = 0.2; c.batch = 7; c.bptt = 5; c.steps = 12; c.seed = 3
        c.clip = 0.5; c.ema = 0.9
        var o = TrainOptions(config: c, dataPath: "mem")
        o.outDir = out; o.logInterval = 1e9; o.sampleLength = 5; o.checkpointEvery = 5
        return try Trainer(options: o, corpus: Corpus(text: text()), log: log)
    }

    /// Runs `t` on a coordinator with `workers` workers and, when `shards` > 0, that many shard servers.
    func run(_ t: Trainer, workers: Int, shards: Int) throws -> Coordinator {
        let fleet = InMemoryFleet()
        let coordinator = Coordinator(transport: fleet.hub.server(), model: t.model, fingerprint: "fp", minWorkers: workers, log: { _ in })
        coordinator.workerWait = 60  // a run that loses its workers fails, never hangs
        if shards > 0 { coordinator.useShards(shards) }
        for k in 0..<shards { fleet.startShard(k) }
        for i in 0..<workers { fleet.startWorker(i) }
        if shards > 0 { try coordinator.waitForShards(timeout: 10) }
        try coordinator.waitForWorkers(workers, timeout: 10)
        try t.run(computer: coordinator, remote: shards > 0 ? coordinator : nil)
        try coordinator.finish(linger: 0)
        if shards > 0 { XCTAssertEqual(fleet.servers.map(\.stepsApplied), Array(repeating: 12, count: shards)) }
        return coordinator
    }

    /// With 1 to 3 shards and 1 to 3 workers (uneven column shares of 7): the final parameters, average and moments
    /// equal the star coordinator's with as many workers to 1e-6 relative (the same sums in the same order: measured
    /// 0), and one process's to the cluster tolerance (1e-5).
    func testShardedRunsHaveTheMathOfOneCoordinator() throws {
        let base = NSTemporaryDirectory() + "bard-sharded-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let single = try trainer(base + "/single")
        XCTAssertEqual(Blocks.count(single.model.parameterCount), 4)
        try single.run()
        for (workers, shards) in [(1, 1), (2, 2), (3, 3), (2, 4)] {
            let star = try trainer(base + "/star\(workers)-\(shards)")
            _ = try run(star, workers: workers, shards: 0)
            let sharded = try trainer(base + "/sharded\(workers)-\(shards)")
            let c = try run(sharded, workers: workers, shards: shards)
            let what = "\(workers) workers, \(shards) shards"
            XCTAssertEqual(sharded.step, 12, what)
            XCTAssertEqual(sharded.optimizer.step, star.optimizer.step, what)
            XCTAssertLessThan(relativeDifference(sharded.params.array, from: star.params.array), Tolerance.sameSums, what)
            XCTAssertLessThan(relativeDifference(sharded.average!.array, from: star.average!.array), Tolerance.sameSums, what)
            XCTAssertLessThan(relativeDifference(sharded.optimizer.v.array, from: star.optimizer.v.array), Tolerance.sameSums, what)
            XCTAssertLessThan(relativeDifference(sharded.params.array, from: single.params.array), Tolerance.cluster, what)
            XCTAssertEqual(c.redone, 0, what)
            // The model file is the gathered average, as without shards.
            let saved = try ModelCheckpoint.load(path: sharded.modelPath)
            XCTAssertEqual(saved.step, 12)
            XCTAssertLessThan(relativeDifference(saved.params.array, from: star.average!.array), Tolerance.sameSums, what)
        }
    }

    /// A shard cut off mid-run (its link to the lead severed at step 7): the lead notices its silence, the trainer goes
    /// back to the checkpoint of step 5 and the slices are planned again over the two shards that remain; a
    /// replacement that joins later gets a slice at the next checkpoint (step 10). The math is unchanged: the final
    /// parameters, average and moments equal the star coordinator's to 1e-6, and metrics.jsonl has each step once.
    func testALostShardSendsTheRunBackToItsCheckpointAndOnWithTheRest() throws {
        let base = NSTemporaryDirectory() + "bard-sharded-lost-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let star = try trainer(base + "/star")
        _ = try run(star, workers: 2, shards: 0)

        var lines: [String] = []
        let lock = NSLock()
        let t = try trainer(base + "/sharded", log: { line in lock.lock(); lines.append(line); lock.unlock() })
        let fleet = InMemoryFleet()
        let coordinator = Coordinator(transport: fleet.hub.server(), model: t.model, fingerprint: "fp", minWorkers: 2,
                                      log: { line in lock.lock(); lines.append(line); lock.unlock() })
        coordinator.workerWait = 60  // a run that loses its workers fails, never hangs
        coordinator.useShards(3, heartbeatTimeout: 4)
        for k in 0..<3 { fleet.startShard(k) }
        for i in 0..<2 { fleet.startWorker(i) }
        var records: [MetricsRecord] = []
        t.onRecord = { r in
            records.append(r)
            if r.step == 7 && records.filter({ $0.step == 7 }).count == 1 { fleet.hub.sever(Array("s1".utf8)) }
            if r.step == 6 && records.filter({ $0.step == 6 }).count == 2 { fleet.startShard(3) }  // after the loss, once
        }
        try coordinator.waitForShards(timeout: 10)
        try coordinator.waitForWorkers(2, timeout: 10)
        try t.run(computer: coordinator, remote: coordinator)
        try coordinator.finish(linger: 0)

        lock.lock(); let log = lines; lock.unlock()
        XCTAssertEqual(t.step, 12)
        XCTAssertTrue(log.contains { $0.contains("coordinator shard s1 was silent") && $0.contains("going back to step 5") },
                      log.joined(separator: "\n"))
        XCTAssertFalse(log.contains { $0.contains("rejected") }, log.joined(separator: "\n"))
        XCTAssertTrue(log.contains { $0.contains("coordinator shard s3 joins the run") }, log.joined(separator: "\n"))
        XCTAssertEqual(records.map(\.step!), Array(1...7) + Array(6...12), "back to step 5 once, from step 7 or 8")
        XCTAssertEqual(records.last?.rollbacks, 1)
        XCTAssertLessThan(relativeDifference(t.params.array, from: star.params.array), Tolerance.sameSums)
        XCTAssertLessThan(relativeDifference(t.average!.array, from: star.average!.array), Tolerance.sameSums)
        XCTAssertLessThan(relativeDifference(t.optimizer.v.array, from: star.optimizer.v.array), Tolerance.sameSums)
        XCTAssertEqual(t.optimizer.step, star.optimizer.step)
        // The log on disk: each step once, as if nothing had happened.
        let logged = try String(contentsOfFile: base + "/sharded/metrics.jsonl", encoding: .utf8)
            .split(separator: "\n").compactMap { MetricsRecord.decode(line: $0)?.step }
        XCTAssertEqual(logged, Array(1...12))
    }

    /// A worker that cannot reach the shards (here: it has no way to connect) refuses its columns and is quarantined;
    /// the run goes on over the others and ends with one process's parameters (the cluster tolerance).
    func testAWorkerWithoutShardLinksIsQuarantinedNotTheRun() throws {
        let base = NSTemporaryDirectory() + "bard-sharded-nolinks-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let single = try trainer(base + "/single")
        try single.run()
        let t = try trainer(base + "/sharded")
        let fleet = InMemoryFleet()
        let coordinator = Coordinator(transport: fleet.hub.server(), model: t.model, fingerprint: "fp", minWorkers: 2, log: { _ in })
        coordinator.workerWait = 60  // a run that loses its workers fails, never hangs
        coordinator.useShards(2)
        coordinator.membership.policy.quarantineBase = 60
        for k in 0..<2 { fleet.startShard(k) }
        for i in 0..<3 { fleet.startWorker(i, linked: i < 2) }
        try coordinator.waitForShards(timeout: 10)
        try coordinator.waitForWorkers(3, timeout: 10)
        let started = Date()
        try t.run(computer: coordinator, remote: coordinator)
        try coordinator.finish(linger: 0)
        XCTAssertEqual(t.step, 12)
        XCTAssertEqual(coordinator.quarantines, 1)
        XCTAssertLessThan(Date().timeIntervalSince(started), 30)
        XCTAssertLessThan(relativeDifference(t.params.array, from: single.params.array), Tolerance.cluster)
    }

    /// A model with fewer blocks than shards is refused before anyone joins.
    func testMoreShardsThanBlocksIsAnError() throws {
        let t = try trainer(NSTemporaryDirectory() + "bard-sharded-blocks-\(getpid())")
        XCTAssertThrowsError(try ParameterSlices.plan(parameterCount: t.model.parameterCount, shards: 5))
    }
}
