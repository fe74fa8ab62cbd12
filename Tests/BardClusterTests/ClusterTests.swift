import BardCluster
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
            .hello(name: "w1", fingerprint: "abc"), .welcome(configJSON: "{}", vocabularySize: 65, fingerprint: "f"),
            .refuse(reason: "no"), .done, .heartbeat, .fetch(offset: 10, final: true), .step(sampleStep()),
            .result(StepResult(stepID: 7, columns: 2..<5, lossSum: 1.5, computeSeconds: 0.1, gradients: [1, -1], h: [2], c: [3])),
            .chunk(Chunk(step: 4, final: true, totalBytes: 10, offset: 2, sha256: "s", bytes: [1, 2, 3])),
        ]
        for m in messages { XCTAssertEqual(try Message.decode(m.encode()), m) }
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

    func testShardsAreContiguousAndCoverAllColumns() {
        for workers in 1...6 {
            let s = Coordinator.shards(columns: 32, workers: workers)
            XCTAssertEqual(s.first?.lowerBound, 0)
            XCTAssertEqual(s.last?.upperBound, 32)
            for (a, b) in zip(s, s.dropFirst()) { XCTAssertEqual(a.upperBound, b.lowerBound) }
            XCTAssertLessThanOrEqual(s.map(\.count).max()! - s.map(\.count).min()!, 1)
        }
        XCTAssertEqual(Coordinator.shards(columns: 2, workers: 4).count, 2)
    }
}

/// The coordinator and workers over the in-memory transport: the same parameters as one process.
final class InMemoryClusterTests: XCTestCase {
    func text() -> String {
        var rng = RNG(seed: 4), s = ""
        let words = ["to", "be", "or", "not", "that", "is", "the", "question", "\n"]
        while s.count < 4000 { s += words[Int(rng.next() % UInt64(words.count))] + " " }
        return s
    }

    func config() -> Config {
        var c = Config()
        c.layers = 2; c.embed = 8; c.hidden = 10; c.dropout = 0.2; c.batch = 7; c.bptt = 5; c.steps = 25; c.seed = 3
        return c
    }

    func trainer(_ out: String) throws -> Trainer {
        var o = TrainOptions(config: config(), dataPath: "mem")
        o.outDir = out; o.logInterval = 1e9; o.sampleLength = 5
        return try Trainer(options: o, corpus: Corpus(text: text()), log: { _ in })
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
            var diff = 0.0, norm = 0.0
            for i in 0..<a.count { diff += Double(a[i] - b[i]) * Double(a[i] - b[i]); norm += Double(a[i]) * Double(a[i]) }
            XCTAssertLessThan((diff / norm).squareRoot(), 1e-5, "\(workers) workers")
        }
    }

    func testCorpusMismatchIsRefusedWithBothFingerprints() throws {
        let t = try trainer(NSTemporaryDirectory() + "bard-cluster-mm-\(getpid())")
        let hub = InMemoryHub()
        var messages: [String] = []
        let coordinator = Coordinator(transport: hub.server(), model: t.model, fingerprint: "aaaaaaaaaaaaaaaa", minWorkers: 1, log: { messages.append($0) })
        let w = WorkerCore(transport: hub.client(id: "w"), name: "w", fingerprint: "bbbbbbbbbbbbbbbb", threads: 1, log: { _ in })
        let box = runInBackground(w)
        XCTAssertThrowsError(try coordinator.waitForWorkers(1, timeout: 3))
        box.waitForError(seconds: 5)
        // The worker's error says which side has which corpus, and is a refusal (its supervisor must not restart it).
        guard case .refused(let reason) = box.error as? BardError else { return XCTFail("\(String(describing: box.error))") }
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
        let old = hub.client(id: "old")
        var hello = Message.hello(name: "old", fingerprint: "").encode()
        hello[0][4] = UInt8(truncatingIfNeeded: Wire.version + 1)  // the version's low byte, after the magic
        XCTAssertTrue(old.send(hello))
        XCTAssertThrowsError(try coordinator.waitForWorkers(1, timeout: 1))
        guard let reply = try old.receive(timeout: 1), case .refuse(let reason) = try Message.decode(reply) else {
            return XCTFail("no refusal for a hello of another protocol version")
        }
        XCTAssertTrue(reason.contains("protocol version \(Wire.version + 1) is not this coordinator's (\(Wire.version))"), reason)

        let hub2 = InMemoryHub()
        let server = hub2.server()
        let worker = WorkerCore(transport: hub2.client(id: "w"), name: "w", fingerprint: "", threads: 1, log: { _ in })
        let box = runInBackground(worker)
        guard let peer = try server.receive(timeout: 3)?.peer else { return XCTFail("the worker never said hello") }
        var refusal = Message.refuse(reason: "protocol version 1 is not this coordinator's (2)").encode()
        refusal[0][4] = UInt8(truncatingIfNeeded: Wire.version + 1)
        XCTAssertTrue(server.send(to: peer, refusal))
        box.waitForError(seconds: 5)
        guard case .refused(let why) = box.error as? BardError else { return XCTFail("\(String(describing: box.error))") }
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
