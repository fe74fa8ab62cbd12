import BardMetrics
import BardModel
import BardNumerics
import BardTraining
import Foundation

/// Seconds on a clock that never goes back, for deadlines (the wall clock can jump).
public func monotonicSeconds() -> Double { ProcessInfo.processInfo.systemUptime }

/// The coordinator's side of a synchronous step, as a `GradientComputer` the trainer drives: it owns nothing of the
/// optimisation (the trainer keeps parameters, optimiser, cursor and state, so the math is the trainer's). This is the
/// thin driver around the parts that decide: `Membership` (who the workers are), `ColumnPlan` (who computes which
/// columns), `StepRound` (what is owed, stale or late), `Reducer` (the sum in column order). It alone talks to the
/// transport and reads the clock.
public final class Coordinator: GradientComputer {
    let transport: ServerTransport
    let model: Model
    let shape: ModelShape
    let resultShape: ResultShape
    let fingerprint: String
    let log: (String) -> Void
    let clock: () -> Double
    public var minWorkers: Int
    public var membership: Membership
    public var deadline = StepDeadline()
    /// Seconds between the coordinator's heartbeats to its workers (and the workers' to it).
    public var heartbeatInterval: Double = 1
    public let checkpoints = CheckpointServer()
    /// Set when the run ends for good: only then do workers hear `done`.
    public private(set) var finished = false

    var stepID: UInt64 = 0
    var parameterVersion: UInt64 = 0
    var lastListen: Double?
    var lastBeat = -Double.infinity
    /// Unknown peers answered recently (told to register), so a flood of strangers gets one reply a second each,
    /// and this table stays bounded.
    var toldToRegister: [PeerID: Double] = [:]
    static let maxStrangers = 1024
    var lastSecurityLog = -Double.infinity
    /// Threads of the reduction: every core, since the workers on this host wait for it.
    public var hostThreads = ProcessInfo.processInfo.activeProcessorCount
    /// Shared memory with the workers on this host (nil: messages for everyone, `--no-shm`).
    public var shared: SharedExchange?
    /// Recomputes a worker's columns here when it reports a divergence or leaves non-finite gradients in shared memory.
    lazy var verifier = ColumnComputer(model: model, threads: 1)
    /// The embedding's and W_ih0's gradients of the workers on shared memory, made here once from their tables'.
    lazy var tableReduction = TableReduction(model: model)

    /// Coordinator shards (`--shards K`; nil: this process makes the update). ShardLead.swift drives them.
    public internal(set) var shards: ShardRoster?
    /// The sharded step in progress, from its plan to the shards' acknowledgements of its update.
    var shardRound: ShardRound?
    /// The version of the parameters on the shards: random at every seeding, then one more per update, so a worker's
    /// slice from another seeding never passes for current.
    var shardVersion: UInt64 = 0
    /// Workers told the shard map since they registered.
    var mapSent: Set<PeerID> = []
    /// Slices coming back to the lead (a gather in progress), by shard index.
    var gathering: [Int: SliceState]?
    /// Set when a shard lost its slice mid-run (it restarted or fell silent): the run must go back to a checkpoint.
    var shardFailure: String?
    /// Shards joined since the slices were planned: the trainer seeds them all again once its state is whole here.
    public internal(set) var wantsSeed = false
    /// How long a step waits for enough workers before the run stops (for ever in a real run: workers come back;
    /// tests bound it).
    public var workerWait = Double.infinity
    /// Workers that reported a divergence within the attempts of the current sharded step.
    var divergenceReports: Set<String> = []

    public private(set) var rejected = 0
    public private(set) var evictions = 0
    /// Bytes of messages sent and received by this process, over the run.
    public private(set) var bytesSent = 0, bytesReceived = 0
    public var bytesMoved: Int { bytesSent + bytesReceived }
    /// The step's bytes as the other processes report them (workers with their results, shards with their
    /// acknowledgements), by role and name, and this process's totals at the last record.
    var peerTraffic: [String: PeerTraffic] = [:]
    var trafficMark = (sent: 0, received: 0)
    /// Step attempts abandoned because a worker was lost, and done again over the others.
    public internal(set) var redone = 0
    public private(set) var quarantines = 0
    /// Divergence reports checked here: (did not reproduce, did).
    public private(set) var verifications = (refuted: 0, confirmed: 0)
    /// Seconds of the last step: slowest worker's compute, the rest of the wait (communication), making layer 0's
    /// table for the workers on this host, sending the requests, the reduction (with the table's gradients), and the
    /// coordinator's time between steps (update, logging, checkpoints).
    public internal(set) var timing = (compute: 0.0, communication: 0.0, table: 0.0, send: 0.0, reduce: 0.0, update: 0.0)
    var lastStepEnd: Double?

    public init(transport: ServerTransport, model: Model, fingerprint: String, minWorkers: Int,
                clock: @escaping () -> Double = monotonicSeconds, log: @escaping (String) -> Void) {
        self.transport = transport; self.model = model; self.fingerprint = fingerprint; self.minWorkers = minWorkers
        self.clock = clock; self.log = log
        let cfg = model.config
        shape = ModelShape(cell: cfg.cell.rawValue, activation: cfg.activation.rawValue, layers: cfg.layers, embed: cfg.embed,
                           hidden: cfg.hidden, dropout: cfg.dropout, outputBias: cfg.outputBias,
                           vocabularySize: model.vocabularySize, steps: cfg.bptt, columns: cfg.batch)
        resultShape = ResultShape(parameterCount: model.parameterCount, stateFloatsPerColumn: cfg.layers * cfg.hidden,
                                  hasCell: model.hasCellState)
        membership = Membership()
        // Nothing a worker legitimately sends is larger than a result for the whole batch (4 frames).
        transport.limits = ReceiveLimits(
            maxFrames: 4,
            maxBytes: Wire.largestResultBytes(parameterCount: model.parameterCount, stateFloats: cfg.batch * cfg.layers * cfg.hidden))
    }

    public var workersAlive: Int { membership.members.count }
    public var workerNames: [String] { membership.members.map(\.name) }

    /// The workers as the dashboard shows them.
    public struct WorkerStatus: Sendable {
        public let name: String
        public let columns: Range<Int>?
        public let steps: Int
        public let secondsSinceHeard: Double
        public let quarantined: Bool
    }
    public var workerStatus: [WorkerStatus] {
        let now = clock()
        return membership.members.map {
            WorkerStatus(name: $0.name, columns: $0.columns, steps: $0.steps, secondsSinceHeard: now - $0.lastHeard,
                         quarantined: $0.isQuarantined(at: now))
        }
    }

    func send(_ peer: PeerID, _ message: Message) { send(peer, message.encode()) }
    func send(_ peer: PeerID, _ frames: [[UInt8]]) {
        bytesSent += frames.reduce(0) { $0 + $1.count }
        _ = transport.send(to: peer, frames)
    }

    func name(_ peer: PeerID) -> String {
        membership.member(peer).map { LogText.escape($0.name) }
            ?? shards?.index(of: peer).map { "shard " + LogText.escape(shards?.shards[$0].name ?? "") }
            ?? "unknown peer " + LogText.peer(peer)
    }

    func reject(_ why: String) {
        rejected += 1
        if rejected <= 20 || rejected % 1000 == 0 { log("rejected (\(rejected) so far): \(why)") }
    }

    // MARK: - Time passing

    /// On every pass of a receive loop: heartbeats out, the coordinator's own absences excused, the silent evicted,
    /// authentication watched. Returns the evicted members.
    func tick() throws -> [Member] {
        let now = clock()
        guard transport.authenticationHealthy else {
            throw BardError.io("the CURVE authentication handler stopped, so the socket could admit anyone; stopping (restart the coordinator with --resume)")
        }
        if let last = lastListen, now - last > heartbeatInterval {
            membership.excuse(gap: now - last, now: now)
            shards?.excuse(gap: now - last, now: now)
        }
        lastListen = now
        if now - lastBeat >= heartbeatInterval {
            for m in membership.members { send(m.peer, .heartbeat) }
            for s in shards?.shards ?? [] { send(s.peer, .heartbeat) }
            lastBeat = now
        }
        try tickShards(now: now)
        let silent = membership.silent(now: now)
        for m in silent {
            evict(m.peer, because: String(format: "silent for %.1f s (heartbeat timeout %.1f s)", now - m.lastHeard,
                                          membership.policy.heartbeatTimeout))
        }
        return silent
    }

    func evict(_ peer: PeerID, because why: String) {
        guard let m = membership.remove(peer) else { return }
        shared?.drop(peer)
        log("evicting \(LogText.escape(m.name)): \(why)" + (m.columns.map { "; its columns \($0) go to the others" } ?? ""))
        evictions += 1
        // Tell it, in case it is alive after all (a stopped process resumed): it registers again and rejoins.
        send(peer, .refuse(.reRegister, reason: "evicted (\(why))"))
    }

    func quarantine(_ peer: PeerID, because why: String) {
        let seconds = membership.quarantine(peer, now: clock())
        quarantines += 1
        log(String(format: "quarantining %@ for %.0f s: %@", name(peer), seconds, why))
    }

    /// How long a receive may wait: until the next heartbeat, eviction, quarantine release or `until`.
    func wait(until: Double = .infinity) -> Double {
        let now = clock()
        let next = [until, lastBeat + heartbeatInterval, (membership.nextSilence ?? .infinity) + 0.001,
                    membership.nextRelease(now: now) ?? .infinity].min() ?? now
        return max(0.001, min(0.5, next - now))
    }

    func receive(until: Double = .infinity) throws -> Envelope? {
        let envelope = try transport.receive(timeout: wait(until: until))
        if let e = envelope { bytesReceived += e.frames.reduce(0) { $0 + $1.count } }
        return envelope
    }

    /// Decodes an envelope, or counts and drops it (a Bard peer of another protocol version is told why, and a
    /// message on a member's connection with another key than the member's is refused).
    func open(_ e: Envelope) -> Message? {
        guard membership.isAuthentic(e.peer, credential: e.credential), shards?.isAuthentic(e.peer, credential: e.credential) ?? true else {
            reject("a message on \(name(e.peer))'s connection signed by another key")
            return nil
        }
        do {
            let message = try Message.decode(e.frames)
            // A worker's or shard's report of its bytes, wherever the message goes from here (a stale result too).
            switch message {
            case .result(let r): count(r.traffic, of: e.peer, role: .worker)
            case .applied(_, _, _, _, let traffic): count(traffic, of: e.peer, role: .shard)
            default: break
            }
            return message
        } catch {
            reject("undecodable message from \(name(e.peer)): \(error)")
            if let theirs = Message.foreignVersion(e.frames) {
                send(e.peer, .refuse(.protocolVersion, reason: "protocol version \(theirs) is not this coordinator's (\(Wire.version)): run the same bard release on every host"))
            }
            return nil
        }
    }

    // MARK: - Messages outside a step's replies

    /// Serves messages until `count` workers can take columns.
    public func waitForWorkers(_ count: Int, timeout: Double = .infinity) throws {
        let deadline = clock() + timeout
        var lastLog = clock()
        while membership.active(now: clock()).count < count {
            if stopRequested != 0 { throw StopTraining() }
            guard clock() < deadline else { throw BardError.io("only \(membership.members.count) of \(count) workers registered in time") }
            if clock() - lastLog > 10 {
                let q = membership.quarantined(now: clock()).count
                log("waiting for workers: \(membership.active(now: clock()).count)/\(count) ready" + (q > 0 ? ", \(q) in quarantine" : ""))
                lastLog = clock()
            }
            _ = try tick()
            if let e = try receive(until: deadline), let m = open(e) { handle(e, m) }
        }
    }

    /// What to do with a message that is not a reply to the step in flight. Returns the registration a hello made.
    @discardableResult
    func handle(_ e: Envelope, _ message: Message) -> Registration? {
        let peer = e.peer
        membership.heard(peer, now: clock())
        shards?.heard(peer, now: clock())
        switch message {
        case .hello(let name, let theirs, let host):
            if !theirs.isEmpty && theirs != fingerprint {
                send(peer, .refuse(.corpusMismatch, reason: "corpus mismatch: this worker's --data has fingerprint \(theirs.prefix(12)), the coordinator's corpus has \(fingerprint.prefix(12)); give both the same file"))
                log("refused worker \(LogText.escape(name)): corpus fingerprint \(LogText.escape(String(theirs.prefix(12)))) differs from \(fingerprint.prefix(12))")
                return nil
            }
            let registration = membership.register(peer: peer, name: name, credential: e.credential, now: clock())
            switch registration {
            case .refused(let code, let why):
                send(peer, .refuse(code, reason: why))
                if code == .nameTaken || code == .wrongRole, clock() - lastSecurityLog >= 1 {
                    // What an operator must see, however many other rejections flood the log: at most once a second.
                    lastSecurityLog = clock()
                    log("refused a hello from \(LogText.escape(name))\(e.credential.map { " (key \(LogText.escape(String($0.key.prefix(8))))...)" } ?? ""): \(why)")
                }
                reject("refused a hello from \(LogText.escape(name))\(e.credential.map { " (key \(LogText.escape(String($0.key.prefix(8))))...)" } ?? ""): \(why)")
                return registration
            case .joined where !finished:
                log("worker \(LogText.escape(name)) joined (\(membership.members.count) registered); it takes columns from the next step")
            case .joined: break
            case .restarted(let previous):
                log("worker \(LogText.escape(name)) registered again (restarted)" + (previous != peer ? " on a new connection" : ""))
            }
            toldToRegister[peer] = nil
            mapSent.remove(peer)
            // A registration replaced or voided another connection's: that one's shared region goes.
            shared?.keep(only: Set(membership.members.map(\.peer)))
            // After the run, the same checks of name, key and role, and then the news that it is over.
            if finished {
                send(peer, .done)
            } else {
                let offer = shared?.offer(to: peer, host: host)
                if offer != nil, case .joined = registration { log("worker \(LogText.escape(name)) is on this host: parameters and gradients go through shared memory") }
                send(peer, .welcome(shape, fingerprint: fingerprint, shared: offer))
            }
            return registration
        case .fetch(let offset, let wantFinal):
            if let c = e.credential, c.role != .fetch && c.role != .worker {
                send(peer, .refuse(.wrongRole, reason: "this key's role (\(c.role.rawValue)) may not fetch checkpoints"))
                return nil
            }
            send(peer, .chunk(checkpoints.chunk(offset: offset, wantFinal: wantFinal)))
        case .heartbeat:
            if shards?.index(of: peer) == nil { askToRegisterIfUnknown(peer) }
        case .result(let r):
            reject("stale or unexpected result for step \(r.stepID) from \(name(peer))")
            askToRegisterIfUnknown(peer)
        case .refuse(let code, let reason):
            reject("\(name(peer)) refused (\(code)): \(LogText.escape(reason))")
        case .join, .summed, .applied, .gathered:
            handleShard(e, message)
        case .welcome, .step, .done, .chunk, .assign, .gather, .plan, .apply, .shardMap, .want, .parameters, .gradient:
            reject("unexpected \(message.type) from \(name(peer))")
        }
        return nil
    }

    /// A worker of an earlier coordinator (we restarted) or one we evicted must register again; a stranger is told
    /// so at most once a second, and only so many strangers are remembered.
    func askToRegisterIfUnknown(_ peer: PeerID) {
        guard membership.member(peer) == nil else { return }
        let now = clock()
        if let last = toldToRegister[peer], now - last < 1 { return }
        if toldToRegister.count >= Coordinator.maxStrangers {
            toldToRegister = toldToRegister.filter { now - $0.value < 1 }
            guard toldToRegister.count < Coordinator.maxStrangers else { return }
        }
        toldToRegister[peer] = now
        send(peer, .refuse(.reRegister, reason: "this coordinator does not know you"))
    }

    // MARK: - A step

    public func computeGradients(params: FloatBuffer, grads: FloatBuffer, window: UnsafePointer<Int32>, steps: Int,
                                 totalColumns: Int, state: RecurrentState, dropout: DropoutKey?) throws -> Double {
        try step(params: params, grads: grads, window: window, steps: steps, totalColumns: totalColumns, state: state,
                 dropout: dropout, meanOver: nil, threads: hostThreads).lossSum
    }

    /// The step with the mean taken in the pass that adds the workers' gradients (`Reducer`).
    public func meanGradients(params: FloatBuffer, grads: FloatBuffer, window: UnsafePointer<Int32>, steps: Int,
                              totalColumns: Int, state: RecurrentState, dropout: DropoutKey?, meanOver n: Int,
                              threads: Int) throws -> (lossSum: Double, squares: [Double]) {
        precondition(shards == nil, "meanGradients: with shards the gradient and its norm are theirs")
        return try step(params: params, grads: grads, window: window, steps: steps, totalColumns: totalColumns, state: state,
                        dropout: dropout, meanOver: n, threads: threads)
    }

    /// One step: the gradient sum in `grads` (whatever it held), or with `meanOver` its mean and the sums of squares of
    /// its blocks, reduced on `threads` threads. With shards the gradient goes to them, and `grads` is left as it was.
    func step(params: FloatBuffer, grads: FloatBuffer, window: UnsafePointer<Int32>, steps: Int, totalColumns: Int,
              state: RecurrentState, dropout: DropoutKey?, meanOver: Int?, threads: Int) throws -> (lossSum: Double, squares: [Double]) {
        if let end = lastStepEnd { timing.update = clock() - end }
        if shards != nil {
            return (try shardedStep(window: window, steps: steps, totalColumns: totalColumns, state: state, dropout: dropout), [])
        }
        parameterVersion += 1
        // Encoded once per step, and only if a worker needs the parameters by message (none does on shared memory).
        lazy var parameterFrame = floatFrame(params.pointer, count: params.count)
        while true {
            let (t0, plan, firstRound) = try beginAttempt(totalColumns: totalColumns)
            var round = firstRound
            var requests: [PeerID: StepRequest] = [:]
            /// The gradient region each shared request went out under: a shared answer is read from that region only.
            /// A registration that comes again mid-step replaces the region (and its request is sent again by
            /// message), and an answer the worker wrote into the old one must not be read from the new, empty one.
            var requestRegions: [PeerID: SharedRegion] = [:]
            var table = 0.0  // making layer 0's table for the local workers, the first time one is sent a step
            for (peer, shard) in plan {
                // A worker on this host reads the parameters from the shared region, where the trainer keeps them,
                // stamped with this step's version before the first request that needs it.
                let region = shared?.region(for: peer), viaShared = region != nil
                if viaShared {
                    let made = clock()
                    shared?.publish(params, version: parameterVersion, threads: hostThreads)
                    table += clock() - made
                }
                requestRegions[peer] = region
                let request = StepRequest(
                    stepID: stepID, parameterVersion: parameterVersion, columns: shard, totalColumns: totalColumns,
                    steps: steps, dropoutSeed: dropout?.seed ?? 0, dropoutStep: dropout?.step ?? 0,
                    training: true, parameters: [],
                    tokens: ColumnPlan.tokens(window, steps: steps, totalColumns: totalColumns, shard: shard),
                    h: ColumnPlan.rows(state.h, state: state, shard: shard), c: ColumnPlan.rows(state.c, state: state, shard: shard),
                    sharedParameters: viaShared)
                let current = viaShared || membership.member(peer)?.parameterVersion == parameterVersion
                send(peer, Message.encodeStep(request, parameterFrame: current ? [] : parameterFrame))
                membership.assigned(peer, columns: shard, parameterVersion: viaShared ? .max : parameterVersion)
                requests[peer] = request
            }
            let sent = clock()
            /// The request again, with the parameters, to a worker that lost them; once per worker and round.
            func resend(_ peer: PeerID, request: StepRequest) -> Bool {
                guard round.mayResend(to: peer) else { return false }
                var request = request
                request.sharedParameters = false
                requestRegions[peer] = nil
                send(peer, Message.encodeStep(request, parameterFrame: parameterFrame))
                membership.assigned(peer, columns: request.columns, parameterVersion: parameterVersion)
                return true
            }
            var failed: String?
            /// Gradients that came through shared memory, by first column, with who wrote them (the regions stay
            /// mapped while held here).
            var sharedResults: [Int: (region: SharedRegion, peer: PeerID)] = [:]
            while !round.isComplete && failed == nil {
                if let why = try attemptFailed(round) {
                    failed = why
                    break
                }
                guard let e = try receive(until: round.deadline), let message = open(e) else { continue }
                let peer = e.peer
                switch message {
                case .result(let r) where r.stepID == stepID && round.owes(peer):
                    membership.heard(peer, now: clock())
                    let region = shared?.region(for: peer)
                    let sameRegion = region != nil && region === requestRegions[peer]
                    switch round.accept(r, from: peer, shape: resultShape, sharedAllowed: sameRegion) {
                    case .accepted:
                        membership.completedStep(peer)
                        // Whether what it wrote there is finite is checked as it is added (`Reducer`).
                        if r.sharedGradients, let region { sharedResults[r.columns.lowerBound] = (region, peer) }
                    case .rejected(let why): reject("\(name(peer)): \(why)")
                    }
                case .refuse(.diverged, let reason) where round.owes(peer):
                    membership.heard(peer, now: clock())
                    guard let request = requests[peer] else { continue }
                    round.substitute(try verified(request, from: peer, what: "reports a divergence (\(LogText.escape(reason)))",
                                                  params: params), for: peer)
                case .refuse(let code, let reason) where (code == .staleParameters || code == .noSharedMemory) && round.owes(peer):
                    membership.heard(peer, now: clock())
                    membership.forgetParameters(peer)
                    if code == .noSharedMemory, shared?.region(for: peer) != nil {
                        // It was offered shared memory and cannot open it (another mount namespace, another user).
                        shared?.drop(peer)
                        log("\(name(peer)) cannot use the shared memory it was offered (\(LogText.escape(reason))); it gets messages")
                    }
                    if let request = requests[peer], !resend(peer, request: request) {
                        quarantine(peer, because: "asked for the parameters again within step \(stepID)")
                        failed = "\(name(peer)) lost its parameters twice"
                    }
                default:
                    let registration = handle(e, message)
                    if case .restarted(let previous) = registration, round.owes(previous) || round.owes(peer) {
                        // A worker restarted mid-step lost its step with it: it gets it again at once.
                        round.move(from: previous, to: peer)
                        if let request = requests.removeValue(forKey: previous) ?? requests[peer] {
                            requests[peer] = request
                            if !resend(peer, request: request) {
                                quarantine(peer, because: "said hello twice within step \(stepID)")
                                failed = "\(name(peer)) restarted twice within step \(stepID)"
                            }
                        }
                    }
                }
            }
            if let failed {
                // Nothing of this attempt was applied and the state is that of the last completed step, so redoing
                // the step over the remaining workers changes no math.
                redone += 1
                log("redoing step \(stepID) over the remaining workers: \(failed)")
                continue
            }
            let waited = clock() - t0
            let r0 = clock()
            let tables = shared == nil ? nil : tableReduction
            func reduce() -> (loss: Double, nonFinite: [Int], squares: [Double]) {
                Reducer.reduce(round.results, into: grads, state: state, threads: threads,
                               shared: sharedResults.mapValues(\.region), table: tables, params: params, meanOver: meanOver)
            }
            var (loss, nonFinite, squares) = reduce()
            var unchecked = false
            while !nonFinite.isEmpty && !unchecked {
                // A worker answered "done, in shared memory" over a NaN or an infinity there (or a table's gradient
                // whose products overflow). As when a worker reports a divergence: its columns are computed here;
                // finite, they stand in for its answer and it is quarantined.
                // Each pass replaces at least one region, so a worker that spoils its region between passes only
                // adds passes.
                for first in nonFinite {
                    guard let peer = sharedResults[first]?.peer, let request = requests[peer] else { unchecked = true; break }
                    let result = try verified(request, from: peer, what: "left non-finite (or overflowing) gradients in shared memory for step \(stepID)",
                                              params: params)
                    guard round.replace(result) else { unchecked = true; break }
                    sharedResults[first] = nil
                }
                if !unchecked {
                    (loss, nonFinite, squares) = reduce()
                }
            }
            if unchecked {
                // Not expected (every accepted result has its request and its columns); but then the attempt is done
                // again from the state it started from, which the reduction overwrote.
                for request in requests.values {
                    ColumnPlan.write(request.h, into: state.h, state: state, shard: request.columns)
                    ColumnPlan.write(request.c, into: state.c, state: state, shard: request.columns)
                }
                redone += 1
                log("redoing step \(stepID): a result in shared memory could not be checked")
                continue
            }
            deadline.record(waited)
            let compute = round.results.map(\.computeSeconds).max() ?? 0
            timing.compute = compute
            timing.table = table
            timing.send = sent - t0 - table
            timing.communication = max(0, waited - compute - timing.send - table)
            timing.reduce = clock() - r0
            lastStepEnd = clock()
            return (loss, squares)
        }
    }

    /// Why the attempt in `round` cannot complete, if it cannot: a signal (thrown), a worker that owes columns was
    /// evicted, or the deadline passed (the workers that still owe are quarantined).
    func attemptFailed(_ round: StepRound) throws -> String? {
        if stopRequested != 0 { throw StopTraining() }
        if let lost = try tick().first(where: { round.owes($0.peer) }) { return "\(LogText.escape(lost.name)) was evicted" }
        let overdue = round.overdue(now: clock())
        for peer in overdue {
            quarantine(peer, because: String(format: "no reply to step %llu within %.1f s%@", stepID, deadline.seconds,
                                             deadline.override == nil ? " (the deadline follows the measured step time; --step-timeout sets it)" : ""))
        }
        return overdue.isEmpty ? nil : "\(overdue.count) worker(s) missed the deadline"
    }

    /// A new attempt at a step: enough workers, a new step id, the columns planned over the active workers, and the
    /// round that collects their replies.
    func beginAttempt(totalColumns: Int) throws -> (start: Double, plan: [(peer: PeerID, columns: Range<Int>)], round: StepRound) {
        _ = try tick()
        if membership.active(now: clock()).count < minWorkers { try waitForWorkers(minWorkers, timeout: workerWait) }
        stepID += 1
        let t0 = clock()
        let plan = ColumnPlan.assign(columns: totalColumns, to: membership.active(now: t0).map(\.peer))
        return (t0, plan, StepRound(stepID: stepID, assignments: plan, now: t0, timeout: deadline.seconds))
    }

    /// A worker reports a non-finite loss or gradient, or left one in shared memory (`what` it did, for the log). One
    /// worker's word cannot end a run: the coordinator computes the same columns itself. If they are finite here, the
    /// worker is quarantined and the coordinator's own result (returned) stands in for its reply; if the divergence
    /// reproduces, the run has diverged.
    func verified(_ request: StepRequest, from peer: PeerID, what: String, params: FloatBuffer) throws -> StepResult {
        log("\(name(peer)) \(what); computing its columns \(request.columns) here to check")
        let (result, finite) = verifier.compute(request, params: params)
        guard finite else {
            verifications.confirmed += 1
            throw BardError.diverged("training diverged at step \(request.dropoutStep + 1): the loss or gradient of columns \(request.columns) is non-finite (reported by \(name(peer)) and reproduced by the coordinator)")
        }
        verifications.refuted += 1
        var r = result
        r.gradients = verifier.grads.array
        quarantine(peer, because: "it \(what), which did not reproduce")
        return r
    }

    public var statusSuffix: String {
        let table = shared == nil ? "" : String(format: "table %.0f ms ", timing.table * 1000)
        return String(format: "workers %d | compute %.0f ms comm %.0f ms ", membership.members.count, timing.compute * 1000,
                      timing.communication * 1000)
            + table + String(format: "send %.0f ms reduce %.0f ms update %.0f ms", timing.send * 1000, timing.reduce * 1000,
                             timing.update * 1000)
    }

    /// Counts above this (1 TiB since a process's last report) are not believed: a hostile peer's, not traffic.
    static let maxReportedBytes: UInt64 = 1 << 40

    /// A worker's or shard's report of the bytes it moved since its last one, added to the step's.
    func count(_ t: Traffic, of peer: PeerID, role: PeerTraffic.Role) {
        let who = role == .shard ? shards?.index(of: peer).map { shards?.shards[$0].name } ?? nil : membership.member(peer)?.name
        guard let who else { return }
        guard t.sent <= Coordinator.maxReportedBytes, t.received <= Coordinator.maxReportedBytes else {
            reject("\(name(peer)) reports \(t.sent) bytes sent and \(t.received) received since its last report: not counted")
            return
        }
        let key = role.rawValue + "/" + who
        var entry = peerTraffic[key] ?? PeerTraffic(name: who, role: role, sent: 0, received: 0)
        func add(_ a: Int, _ b: UInt64) -> Int { let (s, over) = a.addingReportingOverflow(Int(b)); return over ? .max : s }
        entry.sent = add(entry.sent, t.sent); entry.received = add(entry.received, t.received)
        peerTraffic[key] = entry
    }

    public func annotate(_ r: inout MetricsRecord) {
        r.workers = membership.members.count
        r.computeS = timing.compute; r.communicationS = timing.communication; r.sendS = timing.send
        if shared != nil { r.tableS = timing.table }
        r.reduceS = timing.reduce; r.updateS = timing.update
        r.bytesMoved = bytesMoved
        r.traffic = [PeerTraffic(name: "lead", role: .lead, sent: bytesSent - trafficMark.sent, received: bytesReceived - trafficMark.received)]
            + peerTraffic.values.sorted { ($0.role.rawValue, $0.name) < ($1.role.rawValue, $1.name) }
        trafficMark = (bytesSent, bytesReceived)
        peerTraffic = [:]
        r.evictions = evictions; r.rejected = rejected; r.redone = redone
        r.quarantines = quarantines; r.quarantined = membership.quarantined(now: clock()).count
        r.droppedMessages = transport.droppedMessages; r.deniedHandshakes = transport.deniedHandshakes
        r.stepDeadlineS = deadline.seconds
    }

    // MARK: - The end

    /// Training is over for good: tell the workers, then keep serving the final checkpoint for `linger` seconds or
    /// until a signal. Only the end of the run says `done`: a stopped or failed coordinator says nothing, and its
    /// workers wait for the next one.
    public func finish(linger: Double) throws {
        finished = true
        checkpoints.finished = true
        for m in membership.members { send(m.peer, .done) }
        for s in shards?.shards ?? [] { send(s.peer, .done) }
        let deadline = clock() + linger
        if linger > 0 { log("serving the final checkpoint for \(Int(linger)) s (bard fetch --wait); Ctrl-C ends it") }
        while clock() < deadline && stopRequested == 0 {
            if let e = try transport.receive(timeout: min(0.5, max(0.001, deadline - clock()))), let m = open(e) {
                handle(e, m)
            }
        }
    }
}
