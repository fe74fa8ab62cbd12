import BardCluster
import BardMetrics
import BardModel
import BardNumerics
import BardTraining
import Foundation
import XCTest

final class WireTests: XCTestCase {
    func sampleStep() -> StepRequest {
        StepRequest(stepID: 7, parameterVersion: 3, columns: 2..<5, totalColumns: 8, steps: 2, dropoutSeed: 9, dropoutStep: 4,
                    training: true, parameters: [1, 2, 3], tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9], h: [0.5, 0.25], c: [])
    }

    func testRoundTrips() throws {
        let messages: [Message] = [
            .hello(name: "w1", fingerprint: "abc"), .welcome(ModelShape(cell: "gru", activation: "tanh", layers: 2, embed: 3, hidden: 4, dropout: 0.5, outputBias: false,
                               vocabularySize: 65, steps: 7, columns: 9), fingerprint: "f"),
            .refuse(.nameTaken, reason: "no"), .done, .heartbeat, .fetch(offset: 10, final: true), .step(sampleStep()),
            .result(StepResult(stepID: 7, columns: 2..<5, lossSum: 1.5, computeSeconds: 0.1, gradients: [1, -1], h: [2], c: [3])),
            .chunk(Chunk(step: 4, final: true, totalBytes: 10, offset: 2, sha256: "s", bytes: [1, 2, 3])),
            // Shared memory: the host in a hello, an offer in a welcome, the flags of a step and a result.
            .hello(name: "w2", fingerprint: "", host: "4f1c-boot"),
            .welcome(ModelShape(cell: "lstm", activation: "tanh", layers: 1, embed: 3, hidden: 4, dropout: 0, outputBias: true,
                                vocabularySize: 65, steps: 7, columns: 9), fingerprint: "f",
                     shared: SharedOffer(parameters: "bard-0-12-1-ab", gradients: "bard-0-12-2-cd", token: 42)),
            .step(StepRequest(stepID: 8, parameterVersion: 3, columns: 2..<5, totalColumns: 8, steps: 2, dropoutSeed: 9, dropoutStep: 4,
                              training: true, parameters: [], tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9], h: [0.5, 0.25], c: [],
                              sharedParameters: true)),
            .result(StepResult(stepID: 8, columns: 2..<5, lossSum: 1.5, computeSeconds: 0.1, gradients: [], h: [2], c: [3],
                               sharedGradients: true)),
        ]
        for m in messages { XCTAssertEqual(try Message.decode(m.encode()), m) }
    }

    /// Sharded coordinators' messages round-trip, and what a shard, lead or worker acts on is checked at decoding: slices
    /// inside the vector, states that fit their slice, finite numbers, endpoints and keys that are one, maps in order.
    func testShardMessagesRoundTripAndAreChecked() {
        let key = String(repeating: "a", count: 39) + "Z"
        let state = SliceState(index: 1, shards: 2, slice: 4..<7, parameterCount: 9, optimizer: "adam", optimizerStep: 5,
                               version: 5, params: [1, 2, 3], average: [], m: [0.1, 0.2, 0.3], v: [1, 1, 1])
        let order = UpdateOrder(stepID: 3, lr: 1e-3, norm: 2.5, clip: 5, decay: 0.998, version: 9)
        let messages: [Message] = [
            .join(name: "s0", endpoint: "tcp://10.0.0.2:5600", serverKey: key), .join(name: "s1", endpoint: "tcp://h:1", serverKey: ""),
            .assign(state), .gathered(state), .gather(version: 5), .plan(stepID: 3, meanOver: 350, columns: [0..<3, 3..<7], owners: [[1], Array("w.1f".utf8)]),
            .summed(stepID: 3, parts: [0.5, 0, 2, .infinity]), .apply(order),
            .applied(stepID: 3, version: 9, paramsFinite: true, momentsFinite: false),
            .applied(stepID: 4, version: 10, paramsFinite: true, momentsFinite: true, traffic: Traffic(sent: 1 << 40, received: 7)),
            .shardMap([ShardEndpoint(endpoint: "tcp://a:1", serverKey: key, slice: 0..<4), ShardEndpoint(endpoint: "tcp://b:2", serverKey: key, slice: 4..<9)]),
            .want(version: 8), .parameters(version: 8, [1, 2]), .gradient(stepID: 3, columns: 2..<5, [0.5, -0.5]),
        ]
        for m in messages { XCTAssertEqual(try Message.decode(m.encode()), m, "\(m.type)") }
        var outside = state; outside.slice = 7..<10
        var misfit = state; misfit.average = [1]
        var nan = state; nan.m[1] = .nan
        var index = state; index.index = 2
        var nanOrder = order; nanOrder.norm = .nan
        var badDecay = order; badDecay.decay = 1
        let bad: [Message] = [
            .join(name: "s", endpoint: "ipc:///tmp/x", serverKey: ""), .join(name: "s", endpoint: "tcp://a b:1", serverKey: ""),
            .join(name: "s", endpoint: "tcp://a:1", serverKey: "short"), .assign(outside), .assign(misfit), .gathered(nan),
            .assign(index), .plan(stepID: 1, meanOver: 0, columns: [0..<1], owners: [[1]]),
            .plan(stepID: 1, meanOver: 5, columns: [], owners: []), .plan(stepID: 1, meanOver: 5, columns: [3..<3], owners: [[1]]),
            .plan(stepID: 1, meanOver: 5, columns: [0..<3], owners: [[]]), .summed(stepID: 1, parts: [-1]), .summed(stepID: 1, parts: [.nan]),
            .apply(nanOrder), .apply(badDecay), .parameters(version: 1, [.nan]), .gradient(stepID: 1, columns: 0..<1, [.infinity]),
            .shardMap([ShardEndpoint(endpoint: "tcp://a:1", serverKey: "", slice: 0..<4), ShardEndpoint(endpoint: "tcp://b:1", serverKey: "", slice: 5..<9)]),
            .shardMap([ShardEndpoint(endpoint: "tcp://a:1", serverKey: "", slice: 1..<4)]), .shardMap([]),
        ]
        for m in bad { XCTAssertThrowsError(try Message.decode(m.encode()), "\(m)") }
        var applied = Message.applied(stepID: 3, version: 9, paramsFinite: true, momentsFinite: true).encode()
        applied[0][applied[0].count - 17] = 2  // the second flag, before the traffic counts
        XCTAssertThrowsError(try Message.decode(applied))
        var odd = Message.gradient(stepID: 3, columns: 2..<5, [0.5]).encode()
        odd[1].removeLast()
        XCTAssertThrowsError(try Message.decode(odd))
    }

    /// A worker's result and a shard's acknowledgement carry the bytes the process moved since its last one, its own
    /// bytes included, stamped as they are sent; nothing else is stamped, and the counter starts afresh after each.
    func testTrafficIsStampedIntoResultsAndAcknowledgementsOnly() throws {
        var frames = Message.result(StepResult(stepID: 4, columns: 0..<2, lossSum: 1, computeSeconds: 0.5, gradients: [1, 2, 3],
                                               h: [1, 2], c: [])).encode()
        let own = UInt64(frames.reduce(0) { $0 + $1.count })
        XCTAssertTrue(Message.stampTraffic(&frames, Traffic(sent: 100, received: 50)))
        guard case .result(let r) = try Message.decode(frames) else { return XCTFail("a result") }
        XCTAssertEqual(r.traffic, Traffic(sent: 100 + own, received: 50))
        XCTAssertEqual(r.gradients, [1, 2, 3])
        var heartbeat = Message.heartbeat.encode()
        XCTAssertFalse(Message.stampTraffic(&heartbeat, Traffic(sent: 1, received: 1)))
        XCTAssertEqual(heartbeat, Message.heartbeat.encode())

        let counter = TrafficCounter()
        counter.sent([[1, 2, 3]])
        counter.received([[1], [2, 3]])
        counter.report(in: &heartbeat)  // not a report: counted as sent
        var applied = Message.applied(stepID: 2, version: 7, paramsFinite: true, momentsFinite: true).encode()
        let size = UInt64(applied.reduce(0) { $0 + $1.count })
        counter.report(in: &applied)
        XCTAssertEqual(try Message.decode(applied), .applied(stepID: 2, version: 7, paramsFinite: true, momentsFinite: true,
                                                             traffic: Traffic(sent: 3 + UInt64(heartbeat[0].count) + size, received: 3)))
        var next = Message.applied(stepID: 3, version: 8, paramsFinite: true, momentsFinite: true).encode()
        counter.report(in: &next)
        XCTAssertEqual(try Message.decode(next), .applied(stepID: 3, version: 8, paramsFinite: true, momentsFinite: true,
                                                          traffic: Traffic(sent: size, received: 0)))
    }

    /// The coordinator's receive limit holds the largest legitimate result (the whole gradient and the state of every
    /// column), its header's fields included: a field added to the header must not push real results out.
    func testTheLargestResultFitsTheReceiveLimit() {
        let result = StepResult(stepID: .max, columns: 0..<8, lossSum: 1, computeSeconds: 1, gradients: [Float](repeating: 1, count: 1000),
                                h: [Float](repeating: 0, count: 96), c: [Float](repeating: 0, count: 96), traffic: Traffic(sent: .max, received: .max))
        var frames = Message.result(result).encode()
        Message.stampTraffic(&frames, Traffic(sent: 1, received: 1))
        XCTAssertLessThanOrEqual(frames.reduce(0) { $0 + $1.count }, Wire.largestResultBytes(parameterCount: 1000, stateFloats: 96))
    }

    /// An offer must name regions and nothing else; a step or result cannot be both shared and sent, or flag 2.
    func testSharedMemoryFieldsAreChecked() {
        let shape = ModelShape(cell: "lstm", activation: "tanh", layers: 1, embed: 3, hidden: 4, dropout: 0, outputBias: true,
                               vocabularySize: 65, steps: 7, columns: 9)
        for name in ["../../etc/passwd", "a/b", ".hidden", "", String(repeating: "x", count: 65), "sp ace"] {
            let offer = Message.welcome(shape, fingerprint: "", shared: SharedOffer(parameters: name.isEmpty ? "ok" : name,
                                                                                     gradients: name, token: 1))
            XCTAssertThrowsError(try Message.decode(offer.encode()), name)
        }
        var both = sampleStep(); both.sharedParameters = true
        XCTAssertThrowsError(try Message.decode(Message.step(both).encode()))
        var flagTwo = Message.step(sampleStep()).encode()
        flagTwo[0][flagTwo[0].count - 1] = 2
        XCTAssertThrowsError(try Message.decode(flagTwo))
        let sent = StepResult(stepID: 7, columns: 2..<5, lossSum: 1, computeSeconds: 0, gradients: [1], h: [], c: [], sharedGradients: true)
        XCTAssertThrowsError(try Message.decode(Message.result(sent).encode()))
    }

    /// Truncated, oversized-count, wrong-version, wrong-magic, NaN-filled and random frames are errors, not crashes.
    func testHostileFramesAreRejected() {
        let good = Message.step(sampleStep()).encode()
        var wrongVersion = good; wrongVersion[0][4] = 9
        var wrongMagic = good; wrongMagic[0][0] = 0x58
        var nan = good; nan[1] = Array(repeating: 0xFF, count: 12)
        var shortTokens = good; shortTokens[2].removeLast()
        var badRange = good; badRange[0][23] = 0xFF  // columns lo beyond hi
        for frames in [wrongVersion, wrongMagic, nan, shortTokens, badRange, [Array(good[0].prefix(10))] + good.dropFirst(),
                       Array(good.prefix(3)), [], [[]]] {
            XCTAssertThrowsError(try Message.decode(frames))
        }
        // Random damage: a frame cut short always fails (every frame's size is checked against the header's counts);
        // whatever still decodes (a flipped byte inside a value) is a well-formed message that encodes back to itself.
        var rng = RNG(seed: 1)
        var decoded = 0, rejectedTruncations = 0, truncations = 0
        for _ in 0..<20000 {
            var frames = good
            let f = Int(rng.next() % UInt64(frames.count))
            if frames[f].isEmpty { continue }
            let kind = rng.next() % 3
            switch kind {
            case 0: frames[f][Int(rng.next() % UInt64(frames[f].count))] = UInt8(truncatingIfNeeded: rng.next())
            case 1: frames[f] = Array(frames[f].prefix(Int(rng.next() % UInt64(frames[f].count))))
            default: frames[f] = (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            }
            if kind == 1 { truncations += 1 }
            guard let m = try? Message.decode(frames) else {
                if kind == 1 { rejectedTruncations += 1 }
                continue
            }
            decoded += 1
            XCTAssertEqual(try Message.decode(m.encode()), m)
        }
        XCTAssertEqual(rejectedTruncations, truncations, "a truncated frame decoded")
        XCTAssertGreaterThan(truncations, 5000)
        XCTAssertLessThan(decoded, 20000 - truncations)
    }
}

/// The coordinator and workers over the in-memory transport: the same parameters as one process.
/// A word corpus of about 4,000 characters for in-memory runs.
func wordCorpus() -> String {
    var rng = RNG(seed: 4), s = ""
    let words = ["to", "be", "or", "not", "that", "is", "the", "question", "\n"]
    while s.count < 4000 { s += words[Int(rng.next() % UInt64(words.count))] + " " }
    return s
}

final class InMemoryClusterTests: XCTestCase {
    func text() -> String { wordCorpus() }

    func config() -> Config {
        var c = Config()
        c.layers = 2; c.embed = 8; c.hidden = 10; c.dropout = 0.2; c.batch = 7; c.bptt = 5; c.steps = 25; c.seed = 3
        return c
    }

    func trainer(_ out: String, parameterStorage: ((Model) -> FloatBuffer?)? = nil) throws -> Trainer {
        var o = TrainOptions(config: config(), dataPath: "mem")
        o.outDir = out; o.logInterval = 1e9; o.sampleLength = 5
        return try Trainer(options: o, corpus: Corpus(text: text()), log: { _ in }, parameterStorage: parameterStorage)
    }

    func testSameMathAsOneProcess() throws {
        let base = NSTemporaryDirectory() + "bard-cluster-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let single = try trainer(base + "/single")
        try single.run()
        for workers in [1, 3] {
            let t = try trainer(base + "/w\(workers)")
            let hub = InMemoryHub()
            let coordinator = Coordinator(transport: hub.server(), model: t.model, fingerprint: "fp", minWorkers: workers, log: { _ in })
            coordinator.workerWait = 60  // a run that loses its workers fails, never hangs
            var threads: [Thread] = []
            for i in 0..<workers {
                let w = WorkerCore(transport: hub.client(id: "w\(i)"), name: "w\(i)", fingerprint: "", threads: 1, log: { _ in })
                let th = Thread { try? w.run() }
                th.start(); threads.append(th)
            }
            try coordinator.waitForWorkers(workers, timeout: 10)
            try t.run(computer: coordinator)
            try coordinator.finish(linger: 0)
            let a = single.params.array, b = t.params.array
            XCTAssertLessThan(relativeDifference(b, from: a), Tolerance.cluster, "\(workers) workers")
        }
    }

    /// Workers on the coordinator's host exchange parameters and gradients through shared memory, the others by
    /// messages, and one that is told it is on the host but cannot open the regions (another mount namespace, as
    /// here another memory) falls back to messages: the same parameters as one process in every case, and no region
    /// is left once the coordinator closes. As `bard coordinator` runs it, the trainer's parameters live in the
    /// shared region itself (nothing is copied to publish them).
    func testSharedMemoryKeepsTheMath() throws {
        let base = NSTemporaryDirectory() + "bard-cluster-shm-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let single = try trainer(base + "/single")
        try single.run()
        let memory = InMemorySharedMemory(host: "this-host")
        let lines = LockedLines()
        let (t, made) = try trainerOnSharedMemory(base + "/shm", memory: memory, log: lines.append)
        XCTAssertTrue(t.params.pointer == made.parameterStorage.pointer, "the trainer's parameters live in the region")
        let hub = InMemoryHub()
        let coordinator = Coordinator(transport: hub.server(), model: t.model, fingerprint: "fp", minWorkers: 4, log: lines.append)
        coordinator.workerWait = 60  // a run that loses its workers fails, never hangs
        coordinator.shared = made
        // w0 (2 threads) and w3 share the coordinator's memory, so the coordinator adds two tables' gradients and the
        // messages of w1, on another host, and w2, which claims this host but sees other memory.
        let memories: [SharedMemory] = [memory, InMemorySharedMemory(host: "other-host"), InMemorySharedMemory(host: "this-host"), memory]
        var workers: [WorkerCore] = []
        for i in 0..<4 {
            let w = WorkerCore(transport: hub.client(id: "w\(i)"), name: "w\(i)", fingerprint: "", threads: i == 0 ? 2 : 1,
                               sharedMemory: memories[i], log: lines.append)
            workers.append(w)
            Thread { try? w.run() }.start()
        }
        try coordinator.waitForWorkers(4, timeout: 10)
        try t.run(computer: coordinator)
        XCTAssertEqual(workers.map(\.usesSharedMemory), [true, false, false, true])
        // The table the local workers read was made here, and the step's record says how long that took.
        var record = MetricsRecord()
        coordinator.annotate(&record)
        XCTAssertGreaterThan(try XCTUnwrap(record.tableS), 0)
        XCTAssertTrue(coordinator.statusSuffix.contains("table "), coordinator.statusSuffix)
        XCTAssertEqual(workers.map(\.stepsComputed), [25, 25, 25, 25])
        XCTAssertTrue(lines.contains("w2 cannot use the shared memory it was offered"), lines.text)
        // The parameters region and w0's and w3's gradient regions.
        XCTAssertEqual(memory.names.count, 3)
        try coordinator.finish(linger: 0)
        coordinator.shared?.close()
        XCTAssertEqual(memory.names, [])
        let a = single.params.array, b = t.params.array
        XCTAssertLessThan(relativeDifference(b, from: a), Tolerance.cluster)
    }

    /// A trainer whose parameters live in a new exchange's parameters region, as `bard coordinator` makes them.
    func trainerOnSharedMemory(_ out: String, memory: SharedMemory, log: @escaping (String) -> Void) throws -> (Trainer, SharedExchange) {
        var exchange: Result<SharedExchange, Error>?
        let t = try trainer(out, parameterStorage: { model in
            exchange = Result { try SharedExchange(memory: memory, model: model, log: log) }
            return try? exchange?.get().parameterStorage
        })
        return (t, try XCTUnwrap(exchange, "the trainer did not ask for its parameter storage").get())
    }

    /// A peer of the protocol that misbehaves on purpose, on its own thread: it registers and heartbeats, and
    /// answers step requests as `behaviour` says.
    /// `helloAgainMidStep`: on the coordinator's host, it answers a step sent through shared memory by saying hello
    /// again on the same connection (so its region is replaced and the step sent again by message) and then "done, in
    /// shared memory" for the first request; the step by message it answers with a divergence.
    /// `sharedPoisoner`: on the coordinator's host (`memory`), it answers every step "done, in shared memory" with a NaN
    /// in its gradient region.
    enum Behaviour {
        case silent, poisoning, thief(name: String), sharedPoisoner(memory: SharedMemory), helloAgainMidStep(memory: SharedMemory)
    }

    final class HostilePeer: @unchecked Sendable {
        let transport: ClientTransport
        let behaviour: Behaviour
        var stop = false
        var refusals: [RefusalCode] = []
        init(_ transport: ClientTransport, _ behaviour: Behaviour) { self.transport = transport; self.behaviour = behaviour }

        func run(seconds: Double) {
            let end = Date().addingTimeInterval(seconds)
            var lastBeat = Date.distantPast
            var name = "hostile", registered = false
            if case .thief(let stolen) = behaviour { name = stolen }
            var memory: SharedMemory?, gradients: SharedRegion?, layout: SharedLayout?
            if case .sharedPoisoner(let m) = behaviour { memory = m }
            if case .helloAgainMidStep(let m) = behaviour { memory = m }
            while !stop && Date() < end {
                if Date().timeIntervalSince(lastBeat) > 0.2 {
                    _ = transport.send((registered ? Message.heartbeat : .hello(name: name, fingerprint: "", host: memory?.host ?? "")).encode())
                    lastBeat = Date()
                }
                guard let frames = try? transport.receive(timeout: 0.05), let m = try? Message.decode(frames) else { continue }
                switch m {
                case .welcome(let shape, _, let offer):
                    registered = true
                    if let memory, let offer, let config = WorkerSession.config(for: shape) {
                        layout = SharedLayout(Model(config: config, vocabularySize: shape.vocabularySize))
                        gradients = try? memory.open(offer.gradients, count: layout?.count ?? 0, token: offer.token, writable: true)
                    }
                case .refuse(let code, _): refusals.append(code)
                case .step(let r):
                    if case .helloAgainMidStep = behaviour {
                        if r.sharedParameters {
                            // Its sums for the first request are where it was told to write them (left as they are).
                            _ = transport.send(Message.hello(name: name, fingerprint: "", host: memory?.host ?? "").encode())
                            _ = transport.send(Message.result(StepResult(stepID: r.stepID, columns: r.columns, lossSum: 1, computeSeconds: 0,
                                                                         gradients: [], h: r.h, c: r.c, sharedGradients: true)).encode())
                        } else {
                            _ = transport.send(Message.refuse(.diverged, reason: "non-finite loss at step \(r.dropoutStep + 1) (a lie)").encode())
                        }
                        continue
                    }
                    if case .poisoning = behaviour {
                        _ = transport.send(Message.refuse(.diverged, reason: "non-finite loss at step \(r.dropoutStep + 1) (a lie)").encode())
                    }
                    if let gradients, let layout, r.sharedParameters {
                        // In its table's gradient, which the coordinator adds before the rest (the rest: ReducerTests).
                        gradients.floats[layout.parameterCount + layout.tableCount / 2] = .nan
                        _ = transport.send(Message.result(StepResult(stepID: r.stepID, columns: r.columns, lossSum: 1, computeSeconds: 0,
                                                                     gradients: [], h: r.h, c: r.c, sharedGradients: true)).encode())
                    }
                case .done: return
                default: break
                }
            }
        }
    }

    /// One honest worker and one hostile peer: the run ends with the single process's parameters, and the hostile
    /// peer cost a quarantine (silent, poisoning) or a refusal (a name thief), never the run.
    func testNoSinglePeerEndsOrStallsTheRun() throws {
        let base = NSTemporaryDirectory() + "bard-cluster-hostile-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let single = try trainer(base + "/single")
        try single.run()
        let memory = InMemorySharedMemory(host: "this-host")
        for behaviour in [Behaviour.silent, .poisoning, .thief(name: "honest"), .sharedPoisoner(memory: memory),
                          .helloAgainMidStep(memory: memory)] {
            // The peers that use shared memory meet a coordinator whose parameters live there, as they do in `bard`.
            var exchange: SharedExchange?
            let t: Trainer
            switch behaviour {
            case .sharedPoisoner, .helloAgainMidStep:
                (t, exchange) = try trainerOnSharedMemory(base + "/\(behaviour)", memory: memory, log: { _ in })
            default:
                t = try trainer(base + "/\(behaviour)")
            }
            let hub = InMemoryHub()
            var lines: [String] = []
            let lock = NSLock()
            let coordinator = Coordinator(transport: hub.server(), model: t.model, fingerprint: "fp", minWorkers: 1,
                                          log: { line in lock.lock(); lines.append(line); lock.unlock() })
            coordinator.workerWait = 60  // a run that loses its workers fails, never hangs
            // Only the silent peer needs a short deadline; the others are caught without one, and an honest worker
            // slowed by a busy machine must not be called late.
            if case .silent = behaviour { coordinator.deadline.override = 0.5 } else { coordinator.deadline.override = 20 }
            coordinator.membership.policy.quarantineBase = 60
            coordinator.shared = exchange
            let honest = WorkerCore(transport: hub.client(id: "honest.1", credential: Credential(key: "K-honest", role: .worker)),
                                    name: "honest", fingerprint: "", threads: 1, log: { _ in })
            Thread { try? honest.run() }.start()
            try coordinator.waitForWorkers(1, timeout: 10)
            let peer = HostilePeer(hub.client(id: "hostile.1", credential: Credential(key: "K-hostile", role: .worker)), behaviour)
            Thread { peer.run(seconds: 60) }.start()
            if case .thief = behaviour {} else {
                try coordinator.waitForWorkers(2, timeout: 10)
            }
            let started = Date()
            try t.run(computer: coordinator)
            try coordinator.finish(linger: 0)
            peer.stop = true
            XCTAssertLessThan(Date().timeIntervalSince(started), 30, "\(behaviour) stalled the run")
            XCTAssertLessThan(relativeDifference(t.params.array, from: single.params.array), Tolerance.cluster, "\(behaviour)")
            switch behaviour {
            case .silent:
                XCTAssertEqual(coordinator.quarantines, 1, lines.joined(separator: "\n"))
            case .poisoning:
                XCTAssertEqual(coordinator.verifications.refuted, 1, lines.joined(separator: "\n"))
                XCTAssertEqual(coordinator.quarantines, 1)
            case .thief:
                XCTAssertTrue(peer.refusals.contains(.nameTaken), "\(peer.refusals)")
                XCTAssertEqual(coordinator.workerNames, ["honest"])
            case .sharedPoisoner:
                // The NaN in its region was found as it was added; its columns were computed by the coordinator,
                // finite, and it was quarantined.
                XCTAssertEqual(coordinator.quarantines, 1, lines.joined(separator: "\n"))
                XCTAssertEqual(coordinator.verifications.refuted, 1, lines.joined(separator: "\n"))
                XCTAssertTrue(lines.contains { $0.contains("hostile left non-finite (or overflowing) gradients in shared memory") }, lines.joined(separator: "\n"))
                coordinator.shared?.close()
            case .helloAgainMidStep:
                // Its answer for the first request was not read from the region that replaced the one it went
                // through; the step sent again by message it answered with a divergence the coordinator refuted.
                XCTAssertTrue(lines.contains { $0.contains("a result in shared memory, where its request did not go") },
                              lines.joined(separator: "\n"))
                XCTAssertEqual(coordinator.verifications.refuted, 1, lines.joined(separator: "\n"))
                XCTAssertEqual(coordinator.quarantines, 1, lines.joined(separator: "\n"))
                coordinator.shared?.close()
            }
        }
    }

    /// A clock the test moves by hand.
    final class FakeClock: @unchecked Sendable {
        let lock = NSLock()
        var value = 1000.0
        var now: Double { lock.lock(); defer { lock.unlock() }; return value }
        func advance(_ seconds: Double) { lock.lock(); value += seconds; lock.unlock() }
    }

    /// The driver on a fake clock: one of two workers goes silent mid-step; when the clock passes its heartbeat
    /// timeout it is evicted and the step is redone over the other, with the single process's result.
    func testSilentWorkerIsEvictedOnTheClockAndTheStepRedone() throws {
        let base = NSTemporaryDirectory() + "bard-cluster-clock-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: base) }
        func oneStep(_ dir: String) throws -> Trainer {
            var o = TrainOptions(config: config(), dataPath: "mem")
            o.config.steps = 1; o.outDir = dir; o.logInterval = 1e9; o.sampleLength = 5
            return try Trainer(options: o, corpus: Corpus(text: text()), log: { _ in })
        }
        let single = try oneStep(base + "/single")
        try single.run()
        let t = try oneStep(base + "/cluster")
        let clock = FakeClock(), hub = InMemoryHub()
        let coordinator = Coordinator(transport: hub.server(), model: t.model, fingerprint: "fp", minWorkers: 1,
                                      clock: { clock.now }, log: { _ in })
        coordinator.workerWait = 60  // a run that loses its workers fails, never hangs
        let honest = WorkerCore(transport: hub.client(id: "a.1"), name: "a", fingerprint: "", threads: 1, log: { _ in })
        honest.heartbeatInterval = 0.02
        Thread { try? honest.run() }.start()
        let silent = hub.client(id: "b.1")
        _ = silent.send(Message.hello(name: "b", fingerprint: "").encode())
        try coordinator.waitForWorkers(2, timeout: 10)
        let done = DispatchSemaphore(value: 0)
        let outcome = WorkerOutcome()
        Thread {
            do { try t.run(computer: coordinator) } catch { outcome.error = error }
            done.signal()
        }.start()
        // b got its share of the step and says nothing more; the clock moves 0.25 s every 50 ms of real time.
        var requested = false
        let end = Date().addingTimeInterval(30)
        while done.wait(timeout: .now() + 0.05) == .timedOut {
            if !requested, let frames = try silent.receive(timeout: 0), case .step = try? Message.decode(frames) { requested = true }
            if requested { clock.advance(0.25) }
            guard Date() < end else { return XCTFail("the step was not redone within 30 s") }
        }
        XCTAssertNil(outcome.error)
        XCTAssertTrue(requested)
        XCTAssertEqual(coordinator.evictions, 1)
        XCTAssertEqual(coordinator.redone, 1)
        XCTAssertEqual(coordinator.workerNames, ["a"])
        XCTAssertLessThan(relativeDifference(t.params.array, from: single.params.array), Tolerance.sameSums)
        try coordinator.finish(linger: 0)
    }

    /// If authentication can no longer be enforced (the ZAP handler died, so libzmq would admit anyone who knows the
    /// server key), the coordinator stops with an error instead of training on.
    func testCoordinatorStopsWhenAuthenticationFails() throws {
        let t = try trainer(NSTemporaryDirectory() + "bard-cluster-zap-\(getpid())")
        let hub = InMemoryHub()
        let coordinator = Coordinator(transport: hub.server(), model: t.model, fingerprint: "fp", minWorkers: 1, log: { _ in })
        coordinator.workerWait = 60  // a run that loses its workers fails, never hangs
        let w = WorkerCore(transport: hub.client(id: "w.1"), name: "w", fingerprint: "", threads: 1, log: { _ in })
        Thread { try? w.run() }.start()
        try coordinator.waitForWorkers(1, timeout: 10)
        hub.authenticationHealthy = false
        XCTAssertThrowsError(try t.run(computer: coordinator)) { error in
            XCTAssertTrue("\(error)".contains("authentication"), "\(error)")
        }
        XCTAssertEqual(t.step, 0)
    }

    func testCorpusMismatchIsRefusedWithBothFingerprints() throws {
        let t = try trainer(NSTemporaryDirectory() + "bard-cluster-mm-\(getpid())")
        let hub = InMemoryHub()
        var messages: [String] = []
        let coordinator = Coordinator(transport: hub.server(), model: t.model, fingerprint: "aaaaaaaaaaaaaaaa", minWorkers: 1, log: { messages.append($0) })
        coordinator.workerWait = 60  // a run that loses its workers fails, never hangs
        let w = WorkerCore(transport: hub.client(id: "w"), name: "w", fingerprint: "bbbbbbbbbbbbbbbb", threads: 1, log: { _ in })
        let box = runInBackground(w)
        XCTAssertThrowsError(try coordinator.waitForWorkers(1, timeout: 3))
        box.waitForError(seconds: 5)
        // The worker's error says which side has which corpus, and is a refusal (its supervisor must not restart it).
        guard case .refused(let reason) = box.error as? WorkerStop else { return XCTFail("\(String(describing: box.error))") }
        XCTAssertTrue(reason.contains("this worker's --data has fingerprint bbbbbbbbbbbb"), reason)
        XCTAssertTrue(reason.contains("the coordinator's corpus has aaaaaaaaaaaa"), reason)
        XCTAssertTrue(messages.contains { $0.contains("aaaaaaaaaaaa") })
    }

    /// Releases speaking another protocol version cannot talk, but say why: the coordinator answers such a hello with
    /// a refusal naming both versions, and a worker refused by a coordinator of another version stops with a refusal.
    func testAnotherProtocolVersionIsToldWhy() throws {
        let t = try trainer(NSTemporaryDirectory() + "bard-cluster-version-\(getpid())")
        let hub = InMemoryHub()
        let coordinator = Coordinator(transport: hub.server(), model: t.model, fingerprint: "f", minWorkers: 1, log: { _ in })
        coordinator.workerWait = 60  // a run that loses its workers fails, never hangs
        let old = hub.client(id: "old")
        var hello = Message.hello(name: "old", fingerprint: "").encode()
        hello[0][4] = UInt8(truncatingIfNeeded: Wire.version + 1)  // the version's low byte, after the magic
        XCTAssertTrue(old.send(hello))
        XCTAssertThrowsError(try coordinator.waitForWorkers(1, timeout: 1))
        guard let reply = try old.receive(timeout: 1), case .refuse(.protocolVersion, let reason) = try Message.decode(reply) else {
            return XCTFail("no refusal for a hello of another protocol version")
        }
        XCTAssertTrue(reason.contains("protocol version \(Wire.version + 1) is not this coordinator's (\(Wire.version))"), reason)

        let hub2 = InMemoryHub()
        let server = hub2.server()
        let worker = WorkerCore(transport: hub2.client(id: "w"), name: "w", fingerprint: "", threads: 1, log: { _ in })
        let box = runInBackground(worker)
        guard let peer = try server.receive(timeout: 3)?.peer else { return XCTFail("the worker never said hello") }
        var refusal = Message.refuse(.protocolVersion, reason: "protocol version 1 is not this coordinator's (2)").encode()
        refusal[0][4] = UInt8(truncatingIfNeeded: Wire.version + 1)
        XCTAssertTrue(server.send(to: peer, refusal))
        box.waitForError(seconds: 5)
        guard case .refused(let why) = box.error as? WorkerStop else { return XCTFail("\(String(describing: box.error))") }
        XCTAssertTrue(why.contains("speaks protocol version \(Wire.version + 1), this worker \(Wire.version)"), why)
        XCTAssertTrue(why.contains("not this coordinator's (2)"), why)
    }

    /// The error a worker's run ended with, once it has.
    final class WorkerOutcome: @unchecked Sendable {
        var error: Error?
        func waitForError(seconds: Double) {
            let deadline = Date().addingTimeInterval(seconds)
            while error == nil && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        }
    }

    func runInBackground(_ worker: WorkerCore) -> WorkerOutcome {
        let outcome = WorkerOutcome()
        Thread { do { try worker.run() } catch { outcome.error = error } }.start()
        return outcome
    }
}

/// Log lines collected from several threads.
final class LockedLines: @unchecked Sendable {
    let lock = NSLock()
    var lines: [String] = []
    func append(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
    var text: String { lock.lock(); defer { lock.unlock() }; return lines.joined(separator: "\n") }
    func contains(_ part: String) -> Bool { text.contains(part) }
}
