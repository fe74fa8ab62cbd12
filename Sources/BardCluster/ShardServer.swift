import BardModel
import BardNumerics
import BardTraining
import Foundation

/// A coordinator shard's driver around `ShardCore` (sharded coordinators, issue 11): its connection to the lead, the
/// socket its workers connect to, and the clock. The lead seeds it (`assign`), announces each step (`plan`), and orders
/// the update (`apply`) once every shard's norm parts are in; workers take parameter slices (`want`) and send gradient
/// slices (`gradient`). It holds no training state beyond its slice: a restarted lead seeds it again.
public final class ShardServer {
    let lead: ClientTransport
    let workers: ServerTransport
    let name: String
    let endpoint: String
    let serverKey: String
    let threads: Int
    let clock: () -> Double
    let log: (String) -> Void
    public private(set) var core: ShardCore?
    var assignment: SliceState?
    /// Workers waiting for the next version (the lead's `apply` is on its way), and those served the current one: each
    /// peer gets each version once, from one frame encoded once.
    var waiting: Set<PeerID> = []
    var served: Set<PeerID> = []
    var parametersFrames: (version: UInt64, frames: [[UInt8]])?
    static let maxPeers = 4096
    var joined = false
    var lastBeat = -Double.infinity
    var lastJoin = -Double.infinity
    var lastHeardLead: Double
    public var heartbeatInterval: Double = 1
    /// Without a word from the lead for this long, the shard says `join` again (the lead restarted or lost it).
    public var leadTimeout: Double = 10
    public private(set) var rejected = 0
    public private(set) var stepsApplied = 0

    public init(lead: ClientTransport, workers: ServerTransport, name: String, endpoint: String, serverKey: String,
                threads: Int, clock: @escaping () -> Double = monotonicSeconds, log: @escaping (String) -> Void) {
        self.lead = lead; self.workers = workers; self.name = name; self.endpoint = endpoint; self.serverKey = serverKey
        self.threads = threads; self.clock = clock; self.log = log
        lastHeardLead = clock()
        // The lead's `assign` carries four slice-sized frames (parameters, average, two moments), each up to a frame's limit.
        lead.limits = ReceiveLimits(maxFrames: 5, maxBytes: 4 * Wire.maxFrameBytes + 4096)
        workers.limits = .control
    }

    func reject(_ why: String) {
        rejected += 1
        if rejected <= 20 || rejected % 1000 == 0 { log("rejected (\(rejected) so far): \(why)") }
    }

    /// Serves until the lead says `done` (returns) or a signal comes (throws `StopTraining`).
    public func run() throws {
        while true {
            if stopRequested != 0 { throw StopTraining() }
            if try !pass() { return }
        }
    }

    /// One pass: heartbeats and joins, then every waiting message of the lead and of the workers, then a short wait.
    /// Returns false once the lead has said `done`.
    public func pass() throws -> Bool {
        let now = clock()
        if joined && now - lastHeardLead > leadTimeout {
            log(String(format: "no word from the lead for %.0f s; joining again", now - lastHeardLead))
            joined = false
        }
        if !joined && now - lastJoin >= heartbeatInterval {
            _ = lead.send(Message.join(name: name, endpoint: endpoint, serverKey: serverKey).encode())
            lastJoin = now; lastBeat = now
        } else if joined && now - lastBeat >= heartbeatInterval {
            _ = lead.send(Message.heartbeat.encode())
            lastBeat = now
        }
        var busy = false
        for _ in 0..<64 {
            guard let frames = try lead.receive(timeout: 0) else { break }
            busy = true
            if try !handleLead(frames) { return false }
        }
        for _ in 0..<256 {
            guard let e = try workers.receive(timeout: 0) else { break }
            busy = true
            handleWorker(e)
        }
        if !busy, let e = try workers.receive(timeout: 0.002) { handleWorker(e) }
        return true
    }

    // MARK: - The lead

    func handleLead(_ frames: [[UInt8]]) throws -> Bool {
        let message: Message
        do { message = try Message.decode(frames) } catch {
            if let foreign = Message.foreignRefusal(frames) {
                throw BardError.io("the lead speaks protocol version \(foreign.version), this shard \(Wire.version): \(LogText.escape(foreign.reason))")
            }
            reject("an undecodable message from the lead: \(error)")
            return true
        }
        lastHeardLead = clock()
        switch message {
        case .assign(let s):
            do { try take(s) } catch {
                reject("an assignment that does not fit: \(error)")
                _ = lead.send(Message.refuse(.badRequest, reason: "\(error)").encode())
            }
        case .plan(let stepID, let meanOver, let columns):
            guard let core else { reject("a plan before any assignment"); break }
            core.begin(stepID: stepID, columns: columns, meanOver: meanOver)
        case .apply(let order):
            guard let core else { reject("an update before any assignment"); break }
            guard let report = core.apply(stepID: order.stepID, lr: order.lr, norm: order.norm, clip: order.clip,
                                          decay: order.decay, version: order.version) else {
                _ = lead.send(Message.refuse(.badRequest, reason: "step \(order.stepID) is not summed on shard \(LogText.escape(name))").encode())
                break
            }
            stepsApplied += 1
            _ = lead.send(Message.applied(stepID: order.stepID, version: core.version, paramsFinite: report.paramsFinite,
                                          momentsFinite: report.momentsFinite).encode())
            served = []
            for peer in waiting { serveParameters(to: peer, core) }
            waiting = []
        case .gather(let version):
            guard let core, let a = assignment, core.version == version else {
                _ = lead.send(Message.refuse(.badRequest, reason: "shard \(LogText.escape(name)) is not at version \(version)").encode())
                break
            }
            _ = lead.send(Message.gathered(SliceState(
                index: a.index, shards: a.shards, slice: core.slice, parameterCount: a.parameterCount, optimizer: a.optimizer,
                optimizerStep: core.optimizer.step, version: core.version, params: core.params.array,
                average: core.average?.array ?? [], m: core.optimizer.m.array, v: core.optimizer.v.array)).encode())
        case .refuse(let code, let reason):
            if code == .reRegister { joined = false; lastJoin = -.infinity; break }
            if code.isFinal { throw BardError.io("the lead refused this shard: \(LogText.escape(reason))") }
            log("the lead refused this shard for now (\(code)): \(LogText.escape(reason))")
        case .done:
            log("the lead says training is over")
            return false
        case .heartbeat:
            break
        default:
            reject("an unexpected \(message.type) from the lead")
        }
        return true
    }

    /// A slice to own: a new core seeded with the lead's state (a restarted or re-planned run replaces the old one).
    func take(_ s: SliceState) throws {
        guard let kind = OptimizerKind(rawValue: s.optimizer) else { throw BardError.badInput("unknown optimiser '\(s.optimizer)'") }
        guard s.m.count == (kind == .adam ? s.slice.count : 0) else { throw BardError.badInput("moments that do not fit the optimiser") }
        let core = self.core.flatMap { $0.slice == s.slice && $0.optimizer.kind == kind && ($0.average != nil) == !s.average.isEmpty ? $0 : nil }
            ?? ShardCore(slice: s.slice, optimizer: kind, averaging: !s.average.isEmpty, threads: threads)
        try core.seed(params: s.params, average: s.average.isEmpty ? nil : s.average, step: s.optimizerStep, m: s.m, v: s.v,
                      version: s.version)
        self.core = core
        assignment = s
        waiting = []; served = []; parametersFrames = nil
        joined = true
        // A worker's largest legitimate message is a gradient slice.
        workers.limits = ReceiveLimits(maxFrames: 2, maxBytes: Header.size + 64 + 4 * s.slice.count)
        log("shard \(s.index + 1) of \(s.shards): parameters \(s.slice) of \(s.parameterCount), at version \(s.version)")
    }

    // MARK: - Workers

    func send(_ peer: PeerID, _ m: Message) { _ = workers.send(to: peer, m.encode()) }

    /// The slice's parameters at the current version, encoded once per version, to a peer not yet served it.
    func serveParameters(to peer: PeerID, _ core: ShardCore) {
        guard served.count < ShardServer.maxPeers else { return }
        if parametersFrames?.version != core.version {
            parametersFrames = (core.version, Message.parameters(version: core.version, core.params.array).encode())
        }
        served.insert(peer)
        if let frames = parametersFrames?.frames { _ = workers.send(to: peer, frames) }
    }

    func handleWorker(_ e: Envelope) {
        if let c = e.credential, c.role != .worker {
            send(e.peer, .refuse(.wrongRole, reason: "this key's role (\(c.role.rawValue)) may not talk to a shard"))
            return
        }
        let message: Message
        do { message = try Message.decode(e.frames) } catch {
            reject("an undecodable message from a worker: \(error)")
            if let theirs = Message.foreignVersion(e.frames) {
                send(e.peer, .refuse(.protocolVersion, reason: "protocol version \(theirs) is not this shard's (\(Wire.version))"))
            }
            return
        }
        guard let core else {
            if case .heartbeat = message { return }
            send(e.peer, .refuse(.staleParameters, reason: "shard \(LogText.escape(name)) has no slice yet"))
            return
        }
        switch message {
        case .want(let version):
            if version == core.version {
                if served.contains(e.peer) { reject("a second want of version \(version)") } else { serveParameters(to: e.peer, core) }
            } else if version == core.version &+ 1, waiting.count < ShardServer.maxPeers {
                waiting.insert(e.peer)
            } else {
                send(e.peer, .refuse(.staleParameters, reason: "shard \(LogText.escape(name)) is at version \(core.version), not \(version)"))
            }
        case .gradient(let stepID, let columns, let values):
            switch core.accept(stepID: stepID, columns: columns, gradients: values) {
            case .accepted: break
            case .complete(let parts): _ = lead.send(Message.summed(stepID: stepID, parts: parts).encode())
            case .rejected(let why): reject(why)
            }
        case .heartbeat:
            break
        default:
            reject("an unexpected \(message.type) from a worker")
        }
    }
}
