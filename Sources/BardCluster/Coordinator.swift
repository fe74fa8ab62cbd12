import BardModel
import BardNumerics
import BardTraining
import Foundation

/// The coordinator's side of a synchronous step, as a `GradientComputer` the trainer drives: it owns nothing of the
/// optimisation (the trainer keeps parameters, optimiser, cursor and state, so the math is the trainer's), and turns
/// one window into shard requests, collects the replies, and adds them in column order.
public final class Coordinator: GradientComputer {
    /// Prefix of the refusal that tells a worker to register again.
    public static let reRegister = "re-register"

    struct Peer {
        let id: PeerID
        let name: String
        var parameterVersion: UInt64 = .max
        var lastSeen = Date()
    }

    let transport: ServerTransport
    let model: Model
    let configJSON: String
    let fingerprint: String
    let log: (String) -> Void
    public var minWorkers: Int
    /// A worker that has not answered a step within this many seconds is evicted and its columns redone by others.
    public var stepTimeout: Double = 60
    /// Latest checkpoint file to serve to `bard fetch`.
    public var checkpointPath: String?
    public private(set) var finished = false
    var peers: [Peer] = []
    var stepID: UInt64 = 0
    var parameterVersion: UInt64 = 0
    public private(set) var rejected = 0
    public private(set) var evictions = 0
    public private(set) var bytesMoved = 0
    /// Seconds of the last step: slowest worker's compute, the rest of the wait (communication), the reduction,
    /// and the coordinator's time between steps (update, logging, checkpoints).
    public private(set) var timing = (compute: 0.0, communication: 0.0, send: 0.0, reduce: 0.0, update: 0.0)
    var lastStepEnd: Date?
    var cachedCheckpoint: (step: Int, mtime: Date, bytes: [UInt8], sha: String)?

    public init(transport: ServerTransport, model: Model, fingerprint: String, minWorkers: Int, log: @escaping (String) -> Void) {
        self.transport = transport; self.model = model; self.fingerprint = fingerprint; self.minWorkers = minWorkers
        self.configJSON = model.config.jsonString(); self.log = log
    }

    public var workersAlive: Int { peers.count }
    public var workerNames: [String] { peers.map(\.name) }

    /// Serves messages until `count` workers have registered.
    public func waitForWorkers(_ count: Int, timeout: Double = .infinity) throws {
        let deadline = Date().addingTimeInterval(timeout)
        var lastLog = Date.distantPast
        while peers.count < count {
            if stopRequested != 0 { throw BardError.io("stopped while waiting for workers") }
            guard Date() < deadline else { throw BardError.io("only \(peers.count) of \(count) workers registered in time") }
            if Date().timeIntervalSince(lastLog) > 10 {
                log("waiting for workers: \(peers.count)/\(count) registered"); lastLog = Date()
            }
            if let (peer, frames) = try transport.receive(timeout: 0.2) { handleIdle(peer, frames) }
        }
    }

    /// Messages outside a step's replies: registrations, fetches, heartbeats; anything else is counted and dropped.
    func handleIdle(_ peer: PeerID, _ frames: [[UInt8]]) {
        bytesMoved += frames.reduce(0) { $0 + $1.count }
        let message: Message
        do { message = try Message.decode(frames) } catch {
            reject("undecodable message from \(describe(peer)): \(error)")
            return
        }
        switch message {
        case .hello(let name, let theirs):
            if !theirs.isEmpty && theirs != fingerprint {
                _ = transport.send(to: peer, Message.refuse(reason: "corpus mismatch: this worker's --data has fingerprint \(theirs.prefix(12)), the coordinator's corpus has \(fingerprint.prefix(12)); give both the same file").encode())
                log("refused worker \(name): corpus fingerprint \(theirs.prefix(12)) differs from \(fingerprint.prefix(12))")
                return
            }
            if let i = peers.firstIndex(where: { $0.id == peer }) {
                // A restarted worker with the same identity: it has no parameters any more.
                peers[i].lastSeen = Date()
                peers[i].parameterVersion = .max
            } else {
                peers.append(Peer(id: peer, name: name))
                log("worker \(name) joined (\(peers.count) alive); it takes columns from the next step")
            }
            _ = transport.send(to: peer, Message.welcome(configJSON: configJSON, vocabularySize: model.vocabularySize,
                                                         fingerprint: fingerprint).encode())
        case .fetch(let offset, let wantFinal):
            serveFetch(peer, offset: offset, wantFinal: wantFinal)
        case .heartbeat:
            if let i = peers.firstIndex(where: { $0.id == peer }) { peers[i].lastSeen = Date() }
        case .result(let r):
            reject("stale or unexpected result for step \(r.stepID) from \(describe(peer))")
            if !peers.contains(where: { $0.id == peer }) {
                _ = transport.send(to: peer, Message.refuse(reason: Coordinator.reRegister + ": this coordinator does not know you").encode())
            }
        case .refuse(let reason):
            reject("\(describe(peer)) refused: \(reason)")
        case .welcome, .step, .done, .chunk:
            reject("unexpected \(message.type) from \(describe(peer))")
        }
    }

    func describe(_ peer: PeerID) -> String {
        peers.first { $0.id == peer }?.name ?? "unknown peer " + peer.prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    func reject(_ why: String) {
        rejected += 1
        if rejected <= 20 || rejected % 1000 == 0 { log("rejected (\(rejected) so far): \(why)") }
    }

    /// Contiguous shards, as equal as possible, in peer order.
    public static func shards(columns: Int, workers: Int) -> [Range<Int>] {
        let n = min(workers, columns)
        return (0..<n).map { i in (columns * i / n)..<(columns * (i + 1) / n) }
    }

    public func computeGradients(params: FloatBuffer, grads: FloatBuffer, window: UnsafePointer<Int32>, steps: Int,
                                 totalColumns: Int, state: RecurrentState, dropout: DropoutKey?) throws -> Double {
        if let end = lastStepEnd { timing.update = Date().timeIntervalSince(end) }
        parameterVersion += 1
        let parameterFrame = floatFrame(params.pointer, count: params.count)
        while true {
            if peers.count < minWorkers { try waitForWorkers(minWorkers) }
            stepID += 1
            let assignment = Coordinator.shards(columns: totalColumns, workers: peers.count)
            let t0 = Date()
            var pending: [PeerID: Range<Int>] = [:]
            var requests: [PeerID: StepRequest] = [:]
            for (i, shard) in assignment.enumerated() {
                let peer = peers[i]
                let request = StepRequest(
                    stepID: stepID, parameterVersion: parameterVersion, columns: shard, totalColumns: totalColumns,
                    steps: steps, dropoutSeed: dropout?.seed ?? 0, dropoutStep: dropout?.step ?? 0, training: true,
                    parameters: [],
                    tokens: shardTokens(window, steps: steps, totalColumns: totalColumns, shard: shard),
                    h: shardRows(state.h, state: state, shard: shard), c: shardRows(state.c, state: state, shard: shard))
                let frames = Message.encodeStep(request, parameterFrame: peer.parameterVersion == parameterVersion ? [] : parameterFrame)
                bytesMoved += frames.reduce(0) { $0 + $1.count }
                _ = transport.send(to: peer.id, frames)
                peers[i].parameterVersion = parameterVersion
                pending[peer.id] = shard
                requests[peer.id] = request
            }
            let sent = Date()
            var results: [StepResult] = []
            let deadline = Date().addingTimeInterval(stepTimeout)
            while !pending.isEmpty && Date() < deadline {
                if stopRequested != 0 { throw StopTraining() }
                guard let (peer, frames) = try transport.receive(timeout: min(0.5, max(0.001, deadline.timeIntervalSinceNow))) else { continue }
                guard let shard = pending[peer], let message = try? Message.decode(frames), case .result(let r) = message,
                      r.stepID == stepID else {
                    if pending[peer] != nil, let m = try? Message.decode(frames), case .refuse(let reason) = m {
                        if reason.hasPrefix("diverged") { throw BardError.diverged("a worker reports: \(reason)") }
                        reject("\(describe(peer)) refused step \(stepID): \(reason)")
                        // Its parameters are stale (it restarted): send the request again, with the parameters.
                        if let again = requests[peer] {
                            _ = transport.send(to: peer, Message.encodeStep(again, parameterFrame: parameterFrame))
                        }
                        continue
                    }
                    handleIdle(peer, frames)
                    continue
                }
                bytesMoved += frames.reduce(0) { $0 + $1.count }
                guard r.columns == shard, r.gradients.count == model.parameterCount,
                      r.h.count == state.layers * shard.count * state.hidden,
                      r.c.count == (state.c.count > 0 ? r.h.count : 0) else {
                    reject("result for step \(stepID) from \(describe(peer)) has the wrong shape")
                    continue
                }
                if let i = peers.firstIndex(where: { $0.id == peer }) { peers[i].lastSeen = Date() }
                pending[peer] = nil
                results.append(r)
            }
            if !pending.isEmpty {
                // Evict the silent workers; nothing of this attempt was applied, so redoing it changes no math.
                for (peer, shard) in pending {
                    log("evicting \(describe(peer)): no reply to step \(stepID) within \(Int(stepTimeout)) s; columns \(shard) go to the others")
                    peers.removeAll { $0.id == peer }
                    evictions += 1
                }
                continue
            }
            let waited = Date().timeIntervalSince(t0)
            let r0 = Date()
            results.sort { $0.columns.lowerBound < $1.columns.lowerBound }
            var loss = 0.0
            for r in results {
                loss += r.lossSum
                r.gradients.withUnsafeBufferPointer { g in
                    guard let gb = g.baseAddress else { return }
                    for i in 0..<g.count { grads.pointer[i] += gb[i] }
                }
                writeShardRows(r.h, into: state.h, state: state, shard: r.columns)
                writeShardRows(r.c, into: state.c, state: state, shard: r.columns)
            }
            let compute = results.map(\.computeSeconds).max() ?? 0
            timing.compute = compute
            timing.send = sent.timeIntervalSince(t0)
            timing.communication = max(0, waited - compute - timing.send)
            timing.reduce = Date().timeIntervalSince(r0)
            lastStepEnd = Date()
            return loss
        }
    }

    public var statusSuffix: String {
        String(format: "workers %d | compute %.0f ms comm %.0f ms send %.0f ms reduce %.0f ms update %.0f ms",
               peers.count, timing.compute * 1000, timing.communication * 1000, timing.send * 1000,
               timing.reduce * 1000, timing.update * 1000)
    }

    public var metricsFields: [String: Any] {
        ["workers": peers.count, "compute_s": timing.compute, "communication_s": timing.communication,
         "send_s": timing.send, "reduce_s": timing.reduce, "update_s": timing.update, "bytes_moved": bytesMoved,
         "evictions": evictions, "rejected": rejected]
    }

    func shardTokens(_ window: UnsafePointer<Int32>, steps: Int, totalColumns: Int, shard: Range<Int>) -> [Int32] {
        var out: [Int32] = []
        out.reserveCapacity((steps + 1) * shard.count)
        for t in 0...steps { for c in shard { out.append(window[t * totalColumns + c]) } }
        return out
    }

    func shardRows(_ buffer: FloatBuffer, state: RecurrentState, shard: Range<Int>) -> [Float] {
        guard buffer.count > 0 else { return [] }
        var out: [Float] = []
        out.reserveCapacity(state.layers * shard.count * state.hidden)
        for l in 0..<state.layers {
            let start = buffer.pointer + (l * state.columns + shard.lowerBound) * state.hidden
            out.append(contentsOf: UnsafeBufferPointer(start: start, count: shard.count * state.hidden))
        }
        return out
    }

    func writeShardRows(_ rows: [Float], into buffer: FloatBuffer, state: RecurrentState, shard: Range<Int>) {
        guard buffer.count > 0 else { return }
        let n = shard.count * state.hidden
        rows.withUnsafeBufferPointer { src in
            guard let s = src.baseAddress else { return }
            for l in 0..<state.layers {
                (buffer.pointer + (l * state.columns + shard.lowerBound) * state.hidden).update(from: s + l * n, count: n)
            }
        }
    }

    // MARK: - Checkpoint serving

    static let chunkBytes = 1 << 20

    func serveFetch(_ peer: PeerID, offset: Int, wantFinal: Bool) {
        guard let path = checkpointPath, let file = loadCheckpoint(path) else {
            _ = transport.send(to: peer, Message.chunk(Chunk(step: 0, final: false, totalBytes: 0, offset: 0, sha256: "", bytes: [])).encode())
            return
        }
        let ready = !wantFinal || finished
        let start = ready ? min(offset, file.bytes.count) : 0
        let end = ready ? min(start + Coordinator.chunkBytes, file.bytes.count) : 0
        let chunk = Chunk(step: file.step, final: finished, totalBytes: file.bytes.count, offset: start, sha256: file.sha,
                          bytes: Array(file.bytes[start..<end]))
        let frames = Message.chunk(chunk).encode()
        bytesMoved += frames.reduce(0) { $0 + $1.count }
        _ = transport.send(to: peer, frames)
    }

    func loadCheckpoint(_ path: String) -> (step: Int, bytes: [UInt8], sha: String)? {
        guard let attrs = try? FileManager.default.attributesOfItem(atPath: path),
              let mtime = attrs[.modificationDate] as? Date else { return nil }
        if let c = cachedCheckpoint, c.mtime == mtime { return (c.step, c.bytes, c.sha) }
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let bytes = [UInt8](data)
        guard let (_, meta) = try? Safetensors.decode(bytes, name: path) else { return nil }
        let step = Int(meta["step"] ?? "") ?? 0
        let sha = Digest.sha256Hex(bytes)
        cachedCheckpoint = (step, mtime, bytes, sha)
        return (step, bytes, sha)
    }

    /// Training is over: tell the workers, then keep serving the final checkpoint for `linger` seconds or until
    /// a signal.
    public func finish(linger: Double) throws {
        finished = true
        for p in peers { _ = transport.send(to: p.id, Message.done.encode()) }
        let deadline = Date().addingTimeInterval(linger)
        if linger > 0 { log("serving the final checkpoint for \(Int(linger)) s (bard fetch --wait); Ctrl-C ends it") }
        while Date() < deadline && stopRequested == 0 {
            if let (peer, frames) = try transport.receive(timeout: min(0.5, max(0.001, deadline.timeIntervalSinceNow))) {
                if case .some(.hello) = try? Message.decode(frames) {
                    _ = transport.send(to: peer, Message.done.encode())
                    continue
                }
                handleIdle(peer, frames)
            }
        }
    }
}

/// `bard fetch`: downloads the coordinator's latest (or, with `wait`, final) checkpoint in chunks, checks the
/// announced sha256 and writes it atomically.
public func fetchCheckpoint(transport: ClientTransport, to path: String, wait: Bool, timeout: Double,
                            log: (String) -> Void) throws -> (step: Int, bytes: Int) {
    let deadline = Date().addingTimeInterval(timeout)
    var lastNote = Date.distantPast
    while true {
        var bytes: [UInt8] = []
        var expected: Chunk?
        while true {
            guard Date() < deadline else { throw BardError.io("no complete checkpoint from the coordinator within \(Int(timeout)) s") }
            _ = transport.send(Message.fetch(offset: bytes.count, final: wait).encode())
            guard let frames = try transport.receive(timeout: 2) else { continue }
            guard case .chunk(let c) = try Message.decode(frames) else { continue }
            if c.totalBytes == 0 || (wait && !c.final) {
                if Date().timeIntervalSince(lastNote) > 30 {
                    log(c.totalBytes == 0 ? "no checkpoint yet; waiting" : "training still running (checkpoint at step \(c.step)); waiting for the final one")
                    lastNote = Date()
                }
                Thread.sleep(forTimeInterval: 1)
                bytes = []; expected = nil
                continue
            }
            if let e = expected, e.sha256 != c.sha256 { bytes = []; expected = nil; continue }  // a newer checkpoint: restart
            guard c.offset == bytes.count else { continue }
            expected = c
            bytes += c.bytes
            if bytes.count == c.totalBytes { break }
        }
        guard let e = expected else { continue }
        guard Digest.sha256Hex(bytes) == e.sha256 else {
            log("checksum mismatch; downloading again")
            continue
        }
        _ = try Safetensors.decode(bytes, name: "fetched checkpoint")
        try AtomicFile.write(bytes, to: path)
        return (e.step, bytes.count)
    }
}
