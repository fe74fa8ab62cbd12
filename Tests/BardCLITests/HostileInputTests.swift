import BardCluster
import BardModel
import BardNumerics
import BardTraining
import BardTransport
import Foundation
import XCTest

/// Another process (this test) floods a real coordinator and a real worker with hostile frames: random bytes,
/// truncated, oversized, wrong-version, wrong-step, duplicated and NaN-filled messages. Nothing crashes, every bad
/// message is counted, and training gives the same result as without them. Slow: BARD_SLOW=1.
final class HostileInputTests: ProcessTestCase {
    /// Valid-looking messages gone wrong, and plain garbage.
    func hostileMessages(count: Int, stepID: UInt64, parameters: Int, rng: inout RNG) -> [[[UInt8]]] {
        let result = StepResult(stepID: stepID, columns: 0..<4, lossSum: 1, computeSeconds: 0.1,
                                gradients: [Float](repeating: 0.5, count: parameters), h: [1, 2], c: [3, 4])
        let good = Message.result(result).encode()
        var nan = result; nan.gradients[parameters / 2] = .nan
        var out: [[[UInt8]]] = []
        for i in 0..<count {
            switch i % 8 {
            case 0:  // random frames
                out.append((0..<(1 + Int(rng.next() % 4))).map { _ in (0..<Int(rng.next() % 200)).map { _ in UInt8(truncatingIfNeeded: rng.next()) } })
            case 1:  // truncated header
                out.append([Array(good[0].prefix(Int(rng.next() % UInt64(good[0].count))))] + good.dropFirst())
            case 2:  // counts that do not match the frames
                out.append([good[0], Array(good[1].dropLast(4)), good[2], good[3]])
            case 3:  // wrong protocol version
                var head = good[0]; head[4] = 99
                out.append([head] + good.dropFirst())
            case 4:  // a result for a step that does not exist, sent twice
                var r = result; r.stepID = stepID &+ 1_000_000 &+ UInt64(i)
                let m = Message.result(r).encode()
                out.append(m); out.append(m)
            case 5:  // NaN-filled gradient
                out.append([good[0], nan.gradients.withUnsafeBytes { Array($0) }, good[2], good[3]])
            case 6:  // messages only the coordinator sends, and a fetch past any file
                out.append(Message.done.encode())
                out.append(Message.fetch(offset: Int.max, final: false).encode())
            default:  // a frame claiming an absurd parameter count
                var head = good[0]
                let at = head.count - 24
                for k in 0..<8 { head[at + k] = 0xFF }
                out.append([head] + good.dropFirst())
            }
        }
        return out
    }

    func testHostileFramesChangeNothing() throws {
        let data = try writeCorpus()
        let flags = ["--data", data, "--layers", "2", "--embed", "16", "--hidden", "64", "--dropout", "0.1", "--batch", "32",
                     "--bptt", "20", "--seed", "9", "--lr", "0.002"]
        let steps = 150
        let (initFile, reference) = try singleProcessReference(flags, steps: steps)
        let endpoint = "tcp://127.0.0.1:\(Self.freePort())"
        let out = dir + "/c", clog = dir + "/c.log"
        let coordinator = try launch(["coordinator"] + flags + ["--steps", String(steps), "--init", initFile, "--out", out,
                                      "--workers", "2", "--bind", endpoint], log: clog)
        let pool = try launch(["worker", "--connect", endpoint, "--count", "2"], log: dir + "/w.log")
        XCTAssertNotNil(waitFor(60) { stepsDone(out) >= 5 }, read(clog))

        // Attackers with their own identities, and one big message over the frame size limit (ZeroMQ drops the link).
        let context = try ZMQContext()
        var rng = RNG(seed: 42)
        var sent = 0
        let parameters = try ModelCheckpoint.load(path: initFile).params.count
        for a in 0..<4 {
            let attacker = try ZMQClientTransport(context: context, connect: endpoint, identity: "attacker-\(a)")
            for m in hostileMessages(count: 400, stepID: UInt64(stepsDone(out)), parameters: parameters, rng: &rng) {
                if deliver({ attacker.send(m) }) { sent += 1 }
            }
            Thread.sleep(forTimeInterval: 0.2)
            attacker.close()
        }
        let big = try ZMQClientTransport(context: context, connect: endpoint, identity: "attacker-big")
        _ = big.send([Message.heartbeat.encode()[0], [UInt8](repeating: 7, count: Wire.maxFrameBytes + 1)])
        Thread.sleep(forTimeInterval: 0.5)
        big.close()
        XCTAssertGreaterThan(sent, 1000)

        XCTAssertTrue(waitExit(coordinator, timeout: 300))
        XCTAssertEqual(coordinator.terminationStatus, 0, read(clog))
        XCTAssertTrue(waitExit(pool, timeout: 30))
        let log = read(clog)
        let rejected = log.components(separatedBy: "evictions, ").last?.split(separator: " ").first.flatMap { Int($0) } ?? 0
        XCTAssertGreaterThan(rejected, 1000, "bad messages must be counted: \(log.suffix(400))")
        XCTAssertFalse(log.contains("evicting"), log)
        let params = try ModelCheckpoint.load(path: out + "/model.safetensors").params.array
        XCTAssertLessThan(relativeDifference(params, reference), 1e-5)
    }

    /// A fake coordinator (this test) floods a real worker with hostile frames, then asks for one real step: the
    /// worker is still alive, answers it exactly as the in-process computation does, and exits on `done`.
    func testWorkerSurvivesHostileFramesAndStillComputesCorrectly() throws {
        var cfg = Config()
        cfg.layers = 1; cfg.embed = 8; cfg.hidden = 16; cfg.batch = 8; cfg.bptt = 10; cfg.dropout = 0
        let vocabulary = 20
        let model = Model(config: cfg, vocabularySize: vocabulary)
        let params = model.makeParameters(seed: 3)
        let context = try ZMQContext()
        let server = try ZMQServerTransport(context: context, bind: "tcp://127.0.0.1:0")
        defer { server.close() }
        let worker = try launch(["worker", "--connect", server.endpoint, "--name", "target", "--idle-timeout", "60"], log: dir + "/w.log")
        guard let (peer, first) = waitForMessage(server, timeout: 30) else { return XCTFail("the worker never said hello") }
        XCTAssertEqual(try Message.decode(first).type, .hello)

        var rng = RNG(seed: 1)
        var floods = hostileMessages(count: 800, stepID: 1, parameters: model.parameterCount, rng: &rng)
        floods.append(Message.welcome(configJSON: "{not json", vocabularySize: 5, fingerprint: "").encode())
        // `done` is the coordinator's to send: a worker must obey it, so it is no attack from this side.
        for m in floods where (try? Message.decode(m)) != .done { XCTAssertTrue(deliver { server.send(to: peer, m) }) }
        XCTAssertTrue(worker.isRunning)
        XCTAssertTrue(deliver { server.send(to: peer, Message.welcome(configJSON: cfg.jsonString(), vocabularySize: vocabulary, fingerprint: "").encode()) })
        // A request whose tokens lie outside the vocabulary must be refused, not computed.
        let columns = 2..<6
        var tokens = (0..<((cfg.bptt + 1) * columns.count)).map { _ in Int32(rng.next() % UInt64(vocabulary)) }
        let h = [Float](repeating: 0.1, count: columns.count * cfg.hidden), c = [Float](repeating: -0.2, count: columns.count * cfg.hidden)
        var request = StepRequest(stepID: 7, parameterVersion: 1, columns: columns, totalColumns: cfg.batch, steps: cfg.bptt,
                                  dropoutSeed: 0, dropoutStep: 0, training: true, parameters: params.array,
                                  tokens: tokens.map { _ in Int32(vocabulary + 5) }, h: h, c: c)
        XCTAssertTrue(deliver { server.send(to: peer, Message.step(request).encode()) })
        request.tokens = tokens
        request.stepID = 8
        XCTAssertTrue(deliver { server.send(to: peer, Message.step(request).encode()) })
        var reply: StepResult?
        let deadline = Date().addingTimeInterval(30)
        while reply == nil && Date() < deadline {
            guard let frames = try server.receive(timeout: 0.5)?.frames, let m = try? Message.decode(frames) else { continue }
            if case .result(let r) = m { reply = r }
        }
        guard let reply else { return XCTFail("no result from the worker: " + read(dir + "/w.log")) }
        XCTAssertEqual(reply.stepID, 8)

        // The same shard in this process.
        let runner = ColumnParallel(model: model, steps: cfg.bptt, columns: 0..<columns.count, threads: 1)
        let state = model.makeState(columns: columns.count)
        state.h.copy(from: FloatBuffer(h)); state.c.copy(from: FloatBuffer(c))
        let grads = FloatBuffer(count: model.parameterCount)
        let loss = tokens.withUnsafeMutableBufferPointer { w in
            runner.run(params: params, grads: grads, window: w.baseAddress!, steps: cfg.bptt, totalColumns: columns.count,
                       state: state, dropout: nil)
        }
        XCTAssertEqual(reply.lossSum, loss, accuracy: 1e-9 * abs(loss))
        XCTAssertEqual(reply.gradients, grads.array)
        XCTAssertEqual(reply.h, state.h.array)
        _ = server.send(to: peer, Message.done.encode())
        XCTAssertTrue(waitExit(worker, timeout: 10))
        XCTAssertEqual(worker.terminationStatus, 0, read(dir + "/w.log"))
        XCTAssertTrue(read(dir + "/w.log").contains("rejected"), read(dir + "/w.log"))
        tokens.removeAll()
    }

    /// Sends, waiting while the socket's queue is full (a flood outruns the peer).
    func deliver(_ send: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if send() { return true }
            Thread.sleep(forTimeInterval: 0.001)
        }
        return false
    }

    func waitForMessage(_ server: ZMQServerTransport, timeout: Double) -> (PeerID, [[UInt8]])? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let m = try? server.receive(timeout: 0.5) { return (m.peer, m.frames) }
        }
        return nil
    }
}
