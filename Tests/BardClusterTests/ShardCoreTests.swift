import BardModel
import BardNumerics
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
                for s in shards { s.begin(stepID: UInt64(step + 1), columns: columns, meanOver: meanOver) }
                // Workers answer in any order; each sends shard j its slice.
                for w in columns.indices.reversed() {
                    let g = gradients(step: step, worker: w)
                    for (j, s) in shards.enumerated() {
                        switch s.accept(stepID: UInt64(step + 1), columns: columns[w], gradients: Array(g[s.slice])) {
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
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: ok), .rejected("a gradient slice for step 1, which is not the step in progress"))
        s.begin(stepID: 1, columns: [0..<2, 2..<4], meanOver: 4)
        XCTAssertNil(s.apply(stepID: 1, lr: 0.1, norm: 1, clip: 0, decay: 0, version: 1), "not summed yet")
        XCTAssertEqual(s.accept(stepID: 2, columns: 0..<2, gradients: ok), .rejected("a gradient slice for step 2, which is not the step in progress"))
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<3, gradients: ok), .rejected("a gradient slice for columns 0..<3, not owed"))
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: [1, 2]), .rejected("a gradient slice of 2 floats, the slice has 8"))
        var bad = ok; bad[3] = .nan
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: bad), .rejected("non-finite gradients for columns 0..<2"))
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: ok), .accepted)
        XCTAssertEqual(s.accept(stepID: 1, columns: 0..<2, gradients: ok), .rejected("a second gradient slice for columns 0..<2"))
        // The lead abandons step 1 (a worker was lost) and tries again as step 2 over one worker.
        s.begin(stepID: 2, columns: [0..<4], meanOver: 4)
        XCTAssertEqual(s.accept(stepID: 1, columns: 2..<4, gradients: ok), .rejected("a gradient slice for step 1, which is not the step in progress"))
        guard case .complete(let parts) = s.accept(stepID: 2, columns: 0..<4, gradients: [Float](repeating: 2, count: 8)) else {
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
        _ = w0.send(Message.want(version: 0).encode())
        _ = w1.send(Message.want(version: 1).encode())  // the next version: answered once it is made
        _ = fetcher.send(Message.want(version: 0).encode())
        XCTAssertTrue(try shard.pass())
        XCTAssertEqual(try reply(w0), .parameters(version: 0, initial))
        XCTAssertNil(try reply(w1))
        guard case .refuse(.wrongRole, _) = try reply(fetcher) else { return XCTFail("a fetch key at a shard") }

        toShard(.plan(stepID: 5, meanOver: 4, columns: [0..<2, 2..<4]))
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
        XCTAssertEqual(try fromLead(), .applied(stepID: 5, version: 1, paramsFinite: true, momentsFinite: true))
        guard case .parameters(1, let updated) = try reply(w1) else { return XCTFail("the waiting worker gets version 1") }
        XCTAssertEqual(updated, initial.map { $0 - 0.1 }, accuracy: 1e-6)  // Adam's first step: lr x sign
        // Each worker gets each version once; a version far ahead is refused, not remembered.
        _ = w1.send(Message.want(version: 1).encode())
        _ = w0.send(Message.want(version: 7).encode())
        XCTAssertTrue(try shard.pass())
        XCTAssertNil(try reply(w1))
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
