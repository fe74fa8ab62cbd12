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
    /// Bytes sent and received on both sockets since the last `applied`.
    let traffic = TrafficCounter()
    /// Workers waiting for the next version (the lead's `apply` is on its way); every version goes out from one frame
    /// encoded once.
    var waiting: Set<PeerID> = []
    /// Times each peer was served the current version: twice at most (a reply lost on the way), then refused.
    var served: [PeerID: Int] = [:]
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
    /// The last step the lead announced, and gradient slices for later steps that came before their announcement (a
    /// worker's path to this shard can be faster than the lead's): kept, up to a bound, until it comes.
    var lastPlanned: UInt64 = 0
    var early: [(stepID: UInt64, columns: Range<Int>, values: [Float], peer: PeerID)] = []
    static let maxEarly = 16

    /// Waits up to the given seconds until the lead or a worker has a message, without reading it (one poll over both
    /// sockets, `bard shard` sets it). Without it, an idle pass polls the workers' socket for 2 ms, and a message of
    /// the lead waits for that.
    public var waitForInput: ((Double) throws -> Void)?
    /// The longest an idle pass waits: the stop flag is looked at between passes.
    static let idleWait = 0.1

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

    /// One pass: heartbeats and joins, then every waiting message of the lead and of the workers, then a wait for
    /// the next message of either (`waitForInput`), at most until the next heartbeat is due. Returns false once the
    /// lead has said `done`.
    public func pass() throws -> Bool {
        let now = clock()
        if joined && now - lastHeardLead > leadTimeout {
            log(String(format: "no word from the lead for %.0f s; joining again", now - lastHeardLead))
            joined = false
        }
        if !joined && now - lastJoin >= heartbeatInterval {
            toLead(Message.join(name: name, endpoint: endpoint, serverKey: serverKey).encode())
            lastJoin = now; lastBeat = now
        } else if joined && now - lastBeat >= heartbeatInterval {
            toLead(Message.heartbeat.encode())
            lastBeat = now
        }
        var busy = false
        for _ in 0..<64 {
            guard let frames = try lead.receive(timeout: 0) else { break }
            traffic.received(frames)
            busy = true
            if try !handleLead(frames) { return false }
        }
        for _ in 0..<256 {
            guard let e = try workers.receive(timeout: 0) else { break }
            traffic.received(e.frames)
            busy = true
            handleWorker(e)
        }
        if !busy {
            let wait = max(0, min(ShardServer.idleWait, heartbeatInterval - (clock() - (joined ? lastBeat : lastJoin))))
            if let waitForInput {
                try waitForInput(wait)
            } else if let e = try workers.receive(timeout: min(wait, 0.002)) {
                traffic.received(e.frames); handleWorker(e)
            }
        }
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
        // A shard that said `join` again while the lead was busy (validating, writing a checkpoint) still holds its
        // slice: the lead's next word means it is still the lead's shard.
        if core != nil { joined = true }
        switch message {
        case .assign(let s):
            do { try take(s) } catch {
                reject("an assignment that does not fit: \(error)")
                toLead(Message.refuse(.badRequest, reason: "\(error)").encode())
            }
        case .plan(let stepID, let meanOver, let columns, let owners):
            guard let core else { reject("a plan before any assignment"); break }
            guard owners.count == columns.count else { reject("a plan whose column ranges and workers do not pair up"); break }
            core.begin(stepID: stepID, columns: columns, owners: owners, meanOver: meanOver)
            lastPlanned = max(lastPlanned, stepID)
            let ready = early.filter { $0.stepID == stepID }
            early.removeAll { $0.stepID <= stepID }
            for g in ready { accept(core, stepID: g.stepID, columns: g.columns, values: g.values, from: g.peer) }
        case .apply(let order):
            guard let core else { reject("an update before any assignment"); break }
            guard let report = core.apply(stepID: order.stepID, lr: order.lr, norm: order.norm, clip: order.clip,
                                          decay: order.decay, version: order.version) else {
                toLead(Message.refuse(.badRequest, reason: "step \(order.stepID) is not summed on shard \(LogText.escape(name))").encode())
                break
            }
            stepsApplied += 1
            toLead(Message.applied(stepID: order.stepID, version: core.version, paramsFinite: report.paramsFinite,
                                          momentsFinite: report.momentsFinite).encode())
            served = [:]
            for peer in waiting { serveParameters(to: peer, core) }
            waiting = []
        case .gather(let version):
            guard let core, let a = assignment, core.version == version else {
                toLead(Message.refuse(.badRequest, reason: "shard \(LogText.escape(name)) is not at version \(version)").encode())
                break
            }
            toLead(Message.gathered(SliceState(
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
        waiting = []; served = [:]; parametersFrames = nil; early = []; lastPlanned = 0
        joined = true
        // The acknowledgement of a seeding: an update of step 0 to the seeded version.
        toLead(Message.applied(stepID: 0, version: s.version, paramsFinite: true, momentsFinite: true).encode())
        // A worker's largest legitimate message is a gradient slice.
        workers.limits = ReceiveLimits(maxFrames: 2, maxBytes: Header.size + 64 + 4 * s.slice.count)
        log("shard \(s.index + 1) of \(s.shards): parameters \(s.slice) of \(s.parameterCount), at version \(s.version)")
    }

    // MARK: - Workers

    func accept(_ core: ShardCore, stepID: UInt64, columns: Range<Int>, values: [Float], from peer: PeerID) {
        switch core.accept(stepID: stepID, columns: columns, gradients: values, from: peer) {
        case .accepted: break
        case .complete(let parts): toLead(Message.summed(stepID: stepID, parts: parts).encode())
        case .rejected(let why): reject(why)
        }
    }

    func send(_ peer: PeerID, _ m: Message) { toWorker(peer, m.encode()) }

    func toWorker(_ peer: PeerID, _ frames: [[UInt8]]) {
        traffic.sent(frames)
        _ = workers.send(to: peer, frames)
    }

    /// Sends to the lead, counted; an `applied` carries what this shard sent and received since its last one.
    func toLead(_ frames: [[UInt8]]) {
        var frames = frames
        traffic.report(in: &frames)
        _ = lead.send(frames)
    }

    /// The slice's parameters at the current version, encoded once per version.
    func serveParameters(to peer: PeerID, _ core: ShardCore) {
        guard served[peer] != nil || served.count < ShardServer.maxPeers else {
            send(peer, .refuse(.full, reason: "shard \(LogText.escape(name)) serves \(ShardServer.maxPeers) workers at most"))
            return
        }
        if parametersFrames?.version != core.version {
            parametersFrames = (core.version, Message.parameters(version: core.version, core.params.array).encode())
        }
        served[peer, default: 0] += 1
        if let frames = parametersFrames?.frames { toWorker(peer, frames) }
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
                if served[e.peer, default: 0] >= 2 {
                    reject("a third want of version \(version)")
                    send(e.peer, .refuse(.badRequest, reason: "version \(version) was sent to you twice already"))
                } else {
                    serveParameters(to: e.peer, core)
                }
            } else if version == core.version &+ 1, waiting.count < ShardServer.maxPeers {
                waiting.insert(e.peer)
            } else {
                send(e.peer, .refuse(.staleParameters, reason: "shard \(LogText.escape(name)) is at version \(core.version), not \(version)"))
            }
        case .gradient(let stepID, let columns, let values):
            if stepID > lastPlanned {
                // Only for the next steps, of the slice's size, a bounded number, one per worker and step.
                guard stepID <= lastPlanned &+ 2, values.count == core.slice.count, early.count < ShardServer.maxEarly,
                      !early.contains(where: { $0.peer == e.peer && $0.stepID == stepID }) else {
                    reject("a gradient slice for step \(stepID), not announced (the last announced is \(lastPlanned))")
                    return
                }
                early.append((stepID, columns, values, e.peer))
                return
            }
            accept(core, stepID: stepID, columns: columns, values: values, from: e.peer)
        case .heartbeat:
            break
        default:
            reject("an unexpected \(message.type) from a worker")
        }
    }
}
