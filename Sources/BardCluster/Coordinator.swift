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
        var columns: Range<Int>?
        var steps = 0
    }

    let transport: ServerTransport
    let model: Model
    let configJSON: String
    let fingerprint: String
    let log: (String) -> Void
    public var minWorkers: Int
    /// A worker that has not answered a step within this many seconds is evicted and its columns redone by others.
    public var stepTimeout: Double = 60
    /// A worker not heard from (reply, heartbeat or anything) for this many seconds is evicted.
    public var heartbeatTimeout: Double = 3
    /// Seconds between the coordinator's heartbeats to its workers (and the workers' to it).
    public var heartbeatInterval: Double = 1
    var lastListen: Date?
    /// Known workers that said hello again (a new process with the old identity) since the step loop last looked.
    var restarted: Set<PeerID> = []
    var lastBeat = Date.distantPast
    /// Latest checkpoint file to serve to `bard fetch`.
    public var checkpointPath: String?
    public private(set) var finished = false
    var peers: [Peer] = []
    var stepID: UInt64 = 0
    var parameterVersion: UInt64 = 0
    public private(set) var rejected = 0
    public private(set) var evictions = 0
    public private(set) var bytesMoved = 0
    /// Step attempts abandoned because a worker was lost, and done again over the others.
    public private(set) var redone = 0
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

    /// The workers as the dashboard shows them.
    public struct WorkerStatus: Sendable {
        public let name: String
        public let columns: Range<Int>?
        public let steps: Int
        public let secondsSinceHeard: Double
    }
    public var workerStatus: [WorkerStatus] {
        peers.map { WorkerStatus(name: $0.name, columns: $0.columns, steps: $0.steps,
                                 secondsSinceHeard: Date().timeIntervalSince($0.lastSeen)) }
    }

    /// Called on every pass of a receive loop: sends heartbeats, and does not count time the coordinator spent
    /// elsewhere (validation, checkpoints) as a worker's silence, since nobody could be heard meanwhile.
    func keepAlive() {
        let now = Date()
        if let last = lastListen, now.timeIntervalSince(last) > heartbeatInterval {
            let gap = now.timeIntervalSince(last)
            for i in peers.indices { peers[i].lastSeen = min(now, peers[i].lastSeen.addingTimeInterval(gap)) }
        }
        lastListen = now
        if now.timeIntervalSince(lastBeat) >= heartbeatInterval {
            for p in peers { _ = transport.send(to: p.id, Message.heartbeat.encode()) }
            lastBeat = now
        }
    }

    /// Seconds until the first worker would pass the heartbeat timeout: receive waits no longer, so an eviction
    /// comes on time rather than a poll interval late.
    func untilNextEviction() -> Double {
        guard let oldest = peers.map(\.lastSeen).min() else { return .infinity }
        return oldest.addingTimeInterval(heartbeatTimeout + 0.001).timeIntervalSinceNow
    }

    /// Evicts the workers silent for longer than the heartbeat timeout; returns their ids.
    @discardableResult
    func evictSilent() -> [PeerID] {
        let now = Date()
        let silent = peers.filter { now.timeIntervalSince($0.lastSeen) > heartbeatTimeout }
        for p in silent {
            evict(p.id, because: String(format: "silent for %.1f s (heartbeat timeout %.1f s)", now.timeIntervalSince(p.lastSeen), heartbeatTimeout))
        }
        return silent.map(\.id)
    }

    func evict(_ peer: PeerID, because why: String) {
        guard let p = peers.first(where: { $0.id == peer }) else { return }
        log("evicting \(p.name): \(why)" + (p.columns.map { "; its columns \($0) go to the others" } ?? ""))
        peers.removeAll { $0.id == peer }
        evictions += 1
        // Tell it, in case it is alive after all (a stopped process resumed): it registers again and rejoins.
        _ = transport.send(to: peer, Message.refuse(reason: Coordinator.reRegister + ": evicted (\(why))").encode())
    }

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
            keepAlive()
            evictSilent()
            if let envelope = try transport.receive(timeout: max(0.001, min(0.2, untilNextEviction()))) { handleIdle(envelope.peer, envelope.frames) }
        }
    }

    /// Messages outside a step's replies: registrations, fetches, heartbeats; anything else is counted and dropped.
    func handleIdle(_ peer: PeerID, _ frames: [[UInt8]]) {
        bytesMoved += frames.reduce(0) { $0 + $1.count }
        let message: Message
        do { message = try Message.decode(frames) } catch {
            undecodable(peer, frames, error)
            return
        }
        handle(peer, message)
    }

    /// Counts and drops a message that does not decode; a Bard peer of another protocol version is told why.
    func undecodable(_ peer: PeerID, _ frames: [[UInt8]], _ error: Error) {
        reject("undecodable message from \(describe(peer)): \(error)")
        if let theirs = Message.foreignVersion(frames) {
            _ = transport.send(to: peer, Message.refuse(reason: "protocol version \(theirs) is not this coordinator's (\(Wire.version)): run the same bard release on every host").encode())
        }
    }

    func handle(_ peer: PeerID, _ message: Message) {
        if let i = peers.firstIndex(where: { $0.id == peer }) { peers[i].lastSeen = Date() }
        switch message {
        case .hello(let name, let theirs):
            if !theirs.isEmpty && theirs != fingerprint {
                _ = transport.send(to: peer, Message.refuse(reason: "corpus mismatch: this worker's --data has fingerprint \(theirs.prefix(12)), the coordinator's corpus has \(fingerprint.prefix(12)); give both the same file").encode())
                log("refused worker \(name): corpus fingerprint \(theirs.prefix(12)) differs from \(fingerprint.prefix(12))")
                return
            }
            if let i = peers.firstIndex(where: { $0.id == peer }) {
                // A restarted worker with the same identity: it has no parameters any more, nor the step in flight.
                peers[i].parameterVersion = .max
                restarted.insert(peer)
                log("worker \(name) registered again (restarted)")
            } else {
                peers.append(Peer(id: peer, name: name))
                log("worker \(name) joined (\(peers.count) alive); it takes columns from the next step")
            }
            _ = transport.send(to: peer, Message.welcome(configJSON: configJSON, vocabularySize: model.vocabularySize,
                                                         fingerprint: fingerprint).encode())
        case .fetch(let offset, let wantFinal):
            serveFetch(peer, offset: offset, wantFinal: wantFinal)
        case .heartbeat:
            askToRegisterIfUnknown(peer)
        case .result(let r):
            reject("stale or unexpected result for step \(r.stepID) from \(describe(peer))")
            askToRegisterIfUnknown(peer)
        case .refuse(let reason):
            reject("\(describe(peer)) refused: \(reason)")
        case .welcome, .step, .done, .chunk:
            reject("unexpected \(message.type) from \(describe(peer))")
        }
    }

    /// A worker of an earlier coordinator (we restarted) or one we evicted must register again.
    func askToRegisterIfUnknown(_ peer: PeerID) {
        guard !peers.contains(where: { $0.id == peer }) else { return }
        _ = transport.send(to: peer, Message.refuse(reason: Coordinator.reRegister + ": this coordinator does not know you").encode())
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
            keepAlive()
            evictSilent()
            if peers.count < minWorkers { try waitForWorkers(minWorkers) }
            restarted.removeAll()
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
                peers[i].columns = shard
                pending[peer.id] = shard
                requests[peer.id] = request
            }
            /// The step request again, with the parameters, to a worker that lost its copy.
            func resend(_ peer: PeerID) {
                guard let again = requests[peer] else { return }
                _ = transport.send(to: peer, Message.encodeStep(again, parameterFrame: parameterFrame))
                peers.firstIndex { $0.id == peer }.map { peers[$0].parameterVersion = parameterVersion }
            }
            let sent = Date()
            var results: [StepResult] = []
            let deadline = Date().addingTimeInterval(stepTimeout)
            var lost = false
            while !pending.isEmpty && Date() < deadline && !lost {
                if stopRequested != 0 { throw StopTraining() }
                keepAlive()
                // A pending worker that went silent (killed, stopped, cut off) fails the attempt at once.
                lost = evictSilent().contains { pending[$0] != nil }
                if lost { break }
                let wait = min(0.5, deadline.timeIntervalSinceNow, untilNextEviction())
                guard let envelope = try transport.receive(timeout: max(0.001, wait)) else { continue }
                let (peer, frames) = (envelope.peer, envelope.frames)
                bytesMoved += frames.reduce(0) { $0 + $1.count }
                let message: Message
                do { message = try Message.decode(frames) } catch {
                    undecodable(peer, frames, error)
                    continue
                }
                guard let shard = pending[peer], case .result(let r) = message, r.stepID == stepID else {
                    if pending[peer] != nil, case .refuse(let reason) = message {
                        if reason.hasPrefix("diverged") { throw BardError.diverged("a worker reports: \(reason)") }
                        reject("\(describe(peer)) refused step \(stepID): \(reason)")
                        resend(peer)  // its parameters are stale (it restarted)
                        continue
                    }
                    handle(peer, message)
                    // A worker that restarted mid-step (killed and started again at once) lost its step with it.
                    if restarted.remove(peer) != nil, pending[peer] != nil { resend(peer) }
                    continue
                }
                guard r.columns == shard, r.gradients.count == model.parameterCount,
                      r.h.count == state.layers * shard.count * state.hidden,
                      r.c.count == (state.c.count > 0 ? r.h.count : 0) else {
                    reject("result for step \(stepID) from \(describe(peer)) has the wrong shape")
                    continue
                }
                if let i = peers.firstIndex(where: { $0.id == peer }) { peers[i].lastSeen = Date(); peers[i].steps += 1 }
                pending[peer] = nil
                results.append(r)
            }
            if !pending.isEmpty {
                // Nothing of this attempt was applied and the state is that of the last completed step, so redoing
                // the step over the surviving workers changes no math.
                if !lost {
                    for peer in pending.keys { evict(peer, because: "no reply to step \(stepID) within \(Int(stepTimeout)) s") }
                }
                redone += 1
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
         "evictions": evictions, "rejected": rejected, "redone": redone]
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
            if let envelope = try transport.receive(timeout: min(0.5, max(0.001, deadline.timeIntervalSinceNow))) {
                let (peer, frames) = (envelope.peer, envelope.frames)
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
            guard Date() < deadline else { throw BardError.io("no complete checkpoint from the coordinator within \(Int(timeout)) s (is it running and reachable, and do --keys match its own?)") }
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
