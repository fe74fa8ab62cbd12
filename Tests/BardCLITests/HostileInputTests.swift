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

    /// Peak resident memory of a process so far (VmHWM), in bytes.
    func peakMemory(_ p: Process) -> Int {
        let status = read("/proc/\(p.processIdentifier)/status")
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kb * 1024
    }

    func testHostileFramesChangeNothing() throws {
        let data = try writeCorpus()
        let flags = ["--data", data, "--layers", "2", "--embed", "16", "--hidden", "64", "--dropout", "0.1", "--batch", "32",
                     "--bptt", "20", "--seed", "9", "--lr", "0.002"]
        // Long enough that the run is still going while the attackers send (checked below), on a fast machine too.
        let steps = 800
        let (initFile, reference) = try singleProcessReference(flags, steps: steps)
        let endpoint = "tcp://127.0.0.1:\(Self.freePort())"
        let out = dir + "/c", clog = dir + "/c.log"
        let coordinator = try launch(["coordinator"] + flags + ["--steps", String(steps), "--init", initFile, "--out", out,
                                      "--workers", "2", "--bind", endpoint], log: clog)
        let pool = try launch(["worker", "--connect", endpoint, "--count", "2"], log: dir + "/w.log")
        XCTAssertNotNil(waitFor(60) { stepsDone(out) >= 5 }, read(clog))
        let calmPeak = peakMemory(coordinator)

        // Attackers with their own identities; all of it within one total time bound.
        let attackEnd = Date().addingTimeInterval(90)
        let context = try ZMQContext()
        var rng = RNG(seed: 42)
        var sent = 0
        let parameters = try ModelCheckpoint.load(path: initFile).params.count
        for a in 0..<4 {
            let attacker = try ZMQClientTransport(context: context, connect: endpoint, identity: "attacker-\(a)")
            for m in hostileMessages(count: 400, stepID: UInt64(stepsDone(out)), parameters: parameters, rng: &rng) {
                if deliver(until: attackEnd, { attacker.send(m) }) { sent += 1 }
            }
            attacker.close()
        }
        // Messages larger than anything legitimate: one frame past the frame limit (ZeroMQ drops the link), and
        // six frames each under it but together far over the largest legitimate message (read and dropped frame by
        // frame); and hellos with long names.
        let big = try ZMQClientTransport(context: context, connect: endpoint, identity: "attacker-big")
        _ = deliver(until: attackEnd) { big.send([Message.heartbeat.encode()[0], [UInt8](repeating: 7, count: 32 << 20)]) }
        let wide = try ZMQClientTransport(context: context, connect: endpoint, identity: "attacker-wide")
        let frame = [UInt8](repeating: 9, count: parameters * 4)
        for _ in 0..<20 { if deliver(until: attackEnd, { wide.send([Message.heartbeat.encode()[0]] + Array(repeating: frame, count: 5)) }) { sent += 1 } }
        for i in 0..<50 {
            let name = "n\(i)" + String(repeating: "\n", count: 1000)
            if deliver(until: attackEnd, { wide.send(Message.hello(name: name, fingerprint: "").encode()) }) { sent += 1 }
        }
        Thread.sleep(forTimeInterval: 0.5)
        big.close(); wide.close()
        XCTAssertGreaterThan(sent, 1000)
        XCTAssertLessThan(Date(), attackEnd, "the attack did not finish within its time bound")
        // The attack means nothing if the run was over before it ended.
        XCTAssertLessThan(stepsDone(out), steps, "the run ended before the attackers were done; make it longer")
        let attackedPeak = peakMemory(coordinator)
        XCTAssertLessThan(attackedPeak - calmPeak, 100 << 20, "the floods grew the coordinator from \(calmPeak >> 20) MB to \(attackedPeak >> 20) MB")

        XCTAssertTrue(waitExit(coordinator, timeout: 300))
        XCTAssertEqual(coordinator.terminationStatus, 0, read(clog))
        XCTAssertTrue(waitExit(pool, timeout: 30))
        let log = read(clog)
        let rejected = log.components(separatedBy: "evictions, ").last?.split(separator: " ").first.flatMap { Int($0) } ?? 0
        XCTAssertGreaterThan(rejected, 1000, "bad messages must be counted: \(log.suffix(400))")
        XCTAssertFalse(log.contains("evicting"), log)
        XCTAssertFalse(log.contains("\n\n\n"), "a peer's name broke the log's lines")
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
        let shape = ModelShape(cell: cfg.cell.rawValue, activation: cfg.activation.rawValue, layers: cfg.layers, embed: cfg.embed,
                               hidden: cfg.hidden, dropout: cfg.dropout, outputBias: cfg.outputBias, vocabularySize: vocabulary,
                               steps: cfg.bptt, columns: cfg.batch)
        var nonsense = shape
        nonsense.cell = "transformer"
        XCTAssertEqual(try Message.decode(first).type, .hello)

        var rng = RNG(seed: 1)
        var floods = hostileMessages(count: 800, stepID: 1, parameters: model.parameterCount, rng: &rng)
        floods.append(Message.welcome(nonsense, fingerprint: "").encode())
        // `done` is the coordinator's to send: a worker must obey it, so it is no attack from this side.
        let floodEnd = Date().addingTimeInterval(60)
        for m in floods where (try? Message.decode(m)) != .done { XCTAssertTrue(deliver(until: floodEnd) { server.send(to: peer, m) }) }
        XCTAssertTrue(worker.isRunning)
        XCTAssertTrue(deliver(until: floodEnd) { server.send(to: peer, Message.welcome(shape, fingerprint: "").encode()) })
        // A request whose tokens lie outside the vocabulary must be refused, not computed.
        let columns = 2..<6
        var tokens = (0..<((cfg.bptt + 1) * columns.count)).map { _ in Int32(rng.next() % UInt64(vocabulary)) }
        let h = [Float](repeating: 0.1, count: columns.count * cfg.hidden), c = [Float](repeating: -0.2, count: columns.count * cfg.hidden)
        var request = StepRequest(stepID: 7, parameterVersion: 1, columns: columns, totalColumns: cfg.batch, steps: cfg.bptt,
                                  dropoutSeed: 0, dropoutStep: 0, training: true, parameters: params.array,
                                  tokens: tokens.map { _ in Int32(vocabulary + 5) }, h: h, c: c)
        XCTAssertTrue(deliver(until: floodEnd) { server.send(to: peer, Message.step(request).encode()) })
        request.tokens = tokens
        request.stepID = 8
        XCTAssertTrue(deliver(until: floodEnd) { server.send(to: peer, Message.step(request).encode()) })
        var reply: StepResult?
        let deadline = Date().addingTimeInterval(30)
        while reply == nil && Date() < deadline {
            guard let frames = try server.receive(timeout: 0.5)?.frames, let m = try? Message.decode(frames) else { continue }
            if case .result(let r) = m { reply = r }
        }
        guard let reply else { return XCTFail("no result from the worker: " + read(dir + "/w.log")) }
        XCTAssertEqual(reply.stepID, 8)

        // The same shard in this process.
        let runner = WindowThreads(model: model, steps: cfg.bptt, columns: 0..<columns.count, threads: 1)
        let state = model.makeState(columns: columns.count)
        state.h.copy(from: FloatBuffer(h)); state.c.copy(from: FloatBuffer(c))
        let grads = FloatBuffer(count: model.parameterCount)
        let loss = tokens.withUnsafeMutableBufferPointer { w in
            runner.run(params: params, grads: grads, window: w.baseAddress!, steps: cfg.bptt, totalColumns: columns.count,
                       state: state, dropout: nil)
        }
        // Both processes run on the same kernels (OpenBLASCore.childEnvironment), yet a tolerance states what is
        // promised: the same computation up to float rounding.
        XCTAssertEqual(reply.lossSum, loss, accuracy: Tolerance.crossProcess * abs(loss))
        XCTAssertLessThan(relativeDifference(reply.gradients, grads.array), Tolerance.crossProcess)
        XCTAssertLessThan(relativeDifference(reply.h, state.h.array), Tolerance.crossProcess)
        _ = server.send(to: peer, Message.done.encode())
        XCTAssertTrue(waitExit(worker, timeout: 10))
        XCTAssertEqual(worker.terminationStatus, 0, read(dir + "/w.log"))
        XCTAssertTrue(read(dir + "/w.log").contains("rejected"), read(dir + "/w.log"))
        tokens.removeAll()
    }

    /// Sends, waiting while the socket's queue is full (a flood outruns the peer), at most 2 s and never past `end`.
    func deliver(until end: Date, _ send: () -> Bool) -> Bool {
        let deadline = min(end, Date().addingTimeInterval(2))
        while Date() < deadline {
            if send() { return true }
            Thread.sleep(forTimeInterval: 0.001)
        }
        return false
    }

    func waitForMessage(_ server: ZMQServerTransport, timeout: Double) -> (PeerID, [[UInt8]])? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let e = try? server.receive(timeout: 0.5) { return (e.peer, e.frames) }
        }
        return nil
    }
}
