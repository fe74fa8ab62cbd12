import BardModel
import BardNumerics
import BardTraining
import Foundation

/// The lead of sharded coordinators (`bard coordinator --shards K`, issue 11): the coordinator keeps membership, the
/// data cursor, the column plan and the carried state, and its K shards own the parameters, their average and the
/// optimiser state, slice by slice. A step: the lead plans the columns and tells the shards (`plan`), the workers take
/// their parameter slices from the shards and send them gradient slices, and their loss and state to the lead; each
/// shard adds its slices in column order and returns its blocks' parts of the squared norm (`summed`); the trainer
/// checks the global norm and the lead orders the update (`apply`) on every shard. The state comes back to the
/// trainer (`gather`) only for validation, samples and checkpoints.
///
/// Faults: a shard that falls silent (dead, or cut off) or restarts mid-run has lost its slice. The lead throws
/// `RemoteStateLost`; the trainer goes back to its last checkpoint, and the next seeding plans the slices again over
/// the shards that remain, a restarted one included. A shard that joins mid-run (a replacement for a lost one) gets a
/// slice at the next checkpoint, when the whole state is here anyway. A resumed lead (`--resume`, or `--auto-resume`
/// under a supervisor) seeds the shards from the checkpoint on disk.
extension Coordinator: RemoteUpdate {
    /// Runs with `count` coordinator shards: they join, get slices once all are in, and make every update. Workers
    /// then take no shared memory: their parameters and gradients go to the shards. A shard silent for
    /// `heartbeatTimeout` seconds is lost (nil: the workers' timeout, at least 10 s, since a shard heartbeats between
    /// its passes and a pass may add or update a large slice).
    public func useShards(_ count: Int, heartbeatTimeout: Double? = nil) {
        var roster = ShardRoster(wanted: count)
        roster.heartbeatTimeout = heartbeatTimeout ?? max(10, membership.policy.heartbeatTimeout)
        shards = roster
        shared?.close()
        shared = nil
        // A shard's `gathered` is five frames (its bytes, by the slices' size, are allowed at each seeding).
        transport.limits.maxFrames = max(transport.limits.maxFrames, 5)
    }

    /// Seconds to wait for the shards' replies to an order (their acknowledgements, a gather) before calling them lost:
    /// longer than their heartbeat timeout, so a dead shard is found by its silence first.
    var shardReplyTimeout: Double { max(30, deadline.seconds, (shards?.heartbeatTimeout ?? 0) + 10) }

    /// Serves messages until every shard has joined (the slices are planned at the seeding).
    public func waitForShards(timeout: Double = .infinity) throws {
        guard let wanted = shards?.wanted else { return }
        let end = clock() + timeout
        var lastLog = clock()
        while !(shards?.isComplete ?? true) {
            if stopRequested != 0 { throw StopTraining() }
            guard clock() < end else { throw BardError.io("only \(shards?.shards.count ?? 0) of \(wanted) coordinator shards joined in time") }
            if clock() - lastLog > 10 {
                log("waiting for coordinator shards: \(shards?.shards.count ?? 0)/\(wanted) joined")
                lastLog = clock()
            }
            _ = try tick()
            if let e = try receive(until: end), let m = open(e) { handle(e, m) }
        }
    }

    /// Time passing for the shards: one that falls silent is removed; if it owned a slice of the run's state, the
    /// state is lost (`RemoteStateLost`: the trainer goes back to its last checkpoint).
    func tickShards(now: Double) throws {
        guard let roster = shards else { return }
        for s in roster.silent(now: now) {
            let why = String(format: "coordinator shard %@ was silent for %.1f s (heartbeat timeout %.1f s)", LogText.escape(s.name),
                             now - s.lastHeard, roster.heartbeatTimeout)
            _ = shards?.remove(s.peer)
            if s.slice != nil && shardVersion != 0 {
                shardFailure = shardFailure ?? why
            } else {
                log(why + "; it left before it owned a slice")
            }
        }
        if let failure = shardFailure {
            shardFailure = nil
            throw RemoteStateLost(reason: "\(failure), and its slice of the state with it")
        }
    }

    /// The messages only shards send: `join`, and replies to the lead's orders.
    func handleShard(_ e: Envelope, _ message: Message) {
        let peer = e.peer
        switch message {
        case .join(let name, let endpoint, let key):
            guard shards != nil else {
                send(peer, .refuse(.badRequest, reason: "this coordinator runs without shards (bard coordinator --shards K)"))
                reject("a join from \(LogText.escape(name)), but this run has no shards")
                return
            }
            let outcome = shards!.join(peer: peer, name: name, endpoint: endpoint, serverKey: key, credential: e.credential, now: clock())
            switch outcome {
            case .joined:
                log("coordinator shard \(LogText.escape(name)) joined from \(LogText.escape(endpoint)) (\(shards!.shards.count)/\(shards!.wanted))"
                    + (shardVersion != 0 ? "; it gets a slice at the next checkpoint" : ""))
            case .rejoined(_, let lostState):
                guard lostState else { return }  // it says join until its seeding arrives
                if shardVersion != 0 && shards?.shards.first(where: { $0.peer == peer })?.slice != nil {
                    // It stays in the roster and is seeded again with the rest.
                    shardFailure = shardFailure ?? "coordinator shard \(LogText.escape(name)) joined again (it restarted or lost the lead)"
                } else {
                    log("coordinator shard \(LogText.escape(name)) joined again from \(LogText.escape(endpoint))")
                }
            case .refused(let code, let why):
                send(peer, .refuse(code, reason: why))
                reject("refused a shard's join as \(LogText.escape(name)): \(why)")
            }
        case .summed(let id, let parts):
            guard shards?.index(of: peer) != nil, shardRound != nil else { reject("norm parts from \(name(peer)) outside a step"); return }
            if case .rejected(let why) = shardRound!.summed(stepID: id, parts: parts, from: peer) { reject("\(name(peer)): \(why)") }
        case .applied(let id, let version, let pf, let mf, _):
            guard shards?.index(of: peer) != nil else { reject("an acknowledgement from \(name(peer)), not a shard"); return }
            if id == 0 {
                // The acknowledgement of a seeding.
                if version == shardVersion { shards?.seeded(peer) } else { reject("\(name(peer)) acknowledged seeding \(version), not \(shardVersion)") }
                return
            }
            guard shardRound != nil else { reject("an acknowledgement from \(name(peer)) outside an update"); return }
            if case .rejected(let why) = shardRound!.applied(stepID: id, version: version, paramsFinite: pf, momentsFinite: mf, from: peer) {
                reject("\(name(peer)): \(why)")
            }
        case .gathered(let state):
            guard let i = shards?.index(of: peer), gathering != nil, state.index == i, state.slice == shards?.shards[i].slice,
                  state.version == shardVersion else {
                reject("a slice from \(name(peer)) that was not asked for")
                return
            }
            gathering?[i] = state
        default:
            reject("unexpected \(message.type) from \(name(peer))")
        }
    }

    /// Serves messages until `done`. After `timeout` seconds the shards that still owe an answer (`owing`) are dropped
    /// and their state is lost (`RemoteStateLost`: the run goes back to its last checkpoint without them).
    func serve(until done: () -> Bool, timeout: Double, what: @autoclosure () -> String, owing: () -> [PeerID]) throws {
        let end = clock() + timeout
        while !done() {
            guard clock() < end else {
                let late = owing()
                let names = late.map(name).joined(separator: ", ")
                for peer in late { _ = shards?.remove(peer) }
                throw RemoteStateLost(reason: "no \(what()) within \(Int(timeout)) s from \(names.isEmpty ? "the shards" : names), which are dropped")
            }
            _ = try tick()
            if let e = try receive(until: end), let m = open(e) { handle(e, m) }
        }
    }

    // MARK: - RemoteUpdate

    /// The slices are planned over the shards there are (all `--shards` of them at the start; after a loss, those
    /// that remain and any replacement), and every shard gets its slice of the trainer's state under a new version,
    /// and acknowledges it.
    public func seed(params: FloatBuffer, average: FloatBuffer?, optimizer: Optimizer) throws {
        guard shards != nil else { return }
        if shardVersion == 0 { try waitForShards() }
        guard !(shards?.shards.isEmpty ?? true) else {
            throw BardError.io("every coordinator shard is lost; the last checkpoint stands: start shards and restart the coordinator with --resume")
        }
        let before = shards!.map
        try shards!.assignSlices(parameterCount: model.parameterCount)
        guard let roster = shards else { return }
        if roster.map != before {
            for s in roster.shards {
                log("coordinator shard \(LogText.escape(s.name)) at \(LogText.escape(s.endpoint)) owns parameters \(s.slice.map { "\($0)" } ?? "-")")
            }
        }
        // A shard's `gathered` (parameters, average, two moments of its slice) is larger than any worker's message.
        let largestSlice = roster.shards.compactMap(\.slice?.count).max() ?? 0
        transport.limits.maxBytes = max(transport.limits.maxBytes, Header.size + 4096 + 4 * 4 * largestSlice)
        shardVersion = UInt64.random(in: (1 << 32)...(1 << 62))
        shardRound = nil
        mapSent = []
        func part(_ b: FloatBuffer, _ r: Range<Int>) -> [Float] { Array(UnsafeBufferPointer(start: b.pointer + r.lowerBound, count: r.count)) }
        for (i, s) in roster.shards.enumerated() {
            guard let slice = s.slice else { continue }
            let adam = optimizer.kind == .adam
            send(s.peer, .assign(SliceState(
                index: i, shards: roster.owners, slice: slice, parameterCount: params.count, optimizer: optimizer.kind.rawValue,
                optimizerStep: optimizer.step, version: shardVersion, params: part(params, slice),
                average: average.map { part($0, slice) } ?? [], m: adam ? part(optimizer.m, slice) : [],
                v: adam ? part(optimizer.v, slice) : [])))
        }
        try serve(until: { shards?.isSeeded ?? true }, timeout: shardReplyTimeout,
                  what: "acknowledgement of its slice", owing: { shards?.shards.filter { $0.slice != nil && !$0.seeded }.map(\.peer) ?? [] })
        wantsSeed = false
        log("seeded \(roster.owners) coordinator shard\(roster.owners == 1 ? "" : "s") at optimiser step \(optimizer.step)")
    }

    public func update(lr: Double, clip: Double, decay: Double, checkNorm: (Double) throws -> Void) throws -> Optimizer.StepReport {
        guard let round = shardRound, let norm = round.norm, let roster = shards else {
            throw BardError.io("an update ordered before the shards summed a step")
        }
        try checkNorm(norm)
        shardVersion &+= 1
        shardRound?.ordered(version: shardVersion)
        let order = UpdateOrder(stepID: round.stepID, lr: lr, norm: norm, clip: clip, decay: decay, version: shardVersion)
        for s in roster.round { send(s.peer, .apply(order)) }
        try serve(until: { shardRound?.isApplied ?? true }, timeout: shardReplyTimeout,
                  what: "acknowledgement of the update of step \(round.stepID)", owing: { shardRound?.owing ?? [] })
        let report = Optimizer.StepReport(norm: norm, paramsFinite: shardRound?.paramsFinite ?? false,
                                          momentsFinite: shardRound?.momentsFinite ?? false)
        shardRound = nil
        return report
    }

    /// Every shard's slice at the current version, written into the trainer's buffers. Shards waiting for a slice
    /// (replacements) are then given theirs: the state is whole here, so the plan changes without going back.
    public func gather(params: FloatBuffer, average: FloatBuffer?, optimizer: Optimizer) throws {
        guard let roster = shards else { return }
        let owners = roster.owners
        gathering = [:]
        defer { gathering = nil }
        for s in roster.round { send(s.peer, .gather(version: shardVersion)) }
        try serve(until: { (gathering?.count ?? 0) == owners }, timeout: shardReplyTimeout, what: "slice for a checkpoint",
                  owing: { roster.round.enumerated().filter { gathering?[$0.offset] == nil }.map(\.element.peer) })
        let states = (0..<owners).compactMap { gathering?[$0] }
        guard states.count == owners, Set(states.map(\.optimizerStep)).count == 1,
              states.allSatisfy({ $0.optimizer == optimizer.kind.rawValue && $0.parameterCount == params.count && $0.shards == owners }) else {
            throw BardError.io("the coordinator shards returned slices of different optimiser steps, optimisers or models")
        }
        for st in states {
            guard st.params.count == st.slice.count, st.average.count == (average == nil ? 0 : st.slice.count),
                  st.m.count == optimizer.m.count / max(1, params.count) * st.slice.count else {
                throw BardError.io("coordinator shard \(st.index) returned a slice state of the wrong size")
            }
            func write(_ values: [Float], _ b: FloatBuffer) {
                values.withUnsafeBufferPointer { v in if let base = v.baseAddress { (b.pointer + st.slice.lowerBound).update(from: base, count: v.count) } }
            }
            write(st.params, params)
            if let average { write(st.average, average) }
            if !st.m.isEmpty { write(st.m, optimizer.m); write(st.v, optimizer.v) }
        }
        optimizer.setStep(states[0].optimizerStep)
        if let joining = shards?.waiting, !joining.isEmpty {
            // Seeded by the trainer once this state is a checkpoint: a joiner that fails then costs nothing.
            log("coordinator shard\(joining.count == 1 ? "" : "s") \(joining.map { LogText.escape($0.name) }.joined(separator: ", ")) join\(joining.count == 1 ? "s" : "") the run at optimiser step \(optimizer.step)")
            wantsSeed = true
        }
    }

    // MARK: - A step

    /// One step's gradient with coordinator shards: the shards sum it (the trainer's `grads` are not used), the
    /// workers' loss and state come here. An attempt that loses a worker is done again, as without shards.
    func shardedStep(window: UnsafePointer<Int32>, steps: Int, totalColumns: Int, state: RecurrentState,
                     dropout: DropoutKey?) throws -> Double {
        guard let roster = shards, roster.isSeeded else { throw BardError.io("a step before the coordinator shards were seeded") }
        divergenceReports = []
        var shardMisses = 0, firstMiss: Double?
        while true {
            let (t0, plan, firstRound) = try beginAttempt(totalColumns: totalColumns)
            var round = firstRound
            shardRound = ShardRound(stepID: stepID, shards: roster.round)
            // The plan reaches each shard before any worker's gradient can: the workers hear of the step after it.
            let owed = plan.sorted { $0.columns.lowerBound < $1.columns.lowerBound }
            for s in roster.round {
                send(s.peer, .plan(stepID: stepID, meanOver: steps * totalColumns, columns: owed.map(\.columns), owners: owed.map(\.peer)))
            }
            for (peer, shard) in plan {
                if !mapSent.contains(peer) { send(peer, .shardMap(roster.map)); mapSent.insert(peer) }
                let request = StepRequest(
                    stepID: stepID, parameterVersion: shardVersion, columns: shard, totalColumns: totalColumns, steps: steps,
                    dropoutSeed: dropout?.seed ?? 0, dropoutStep: dropout?.step ?? 0, training: true, parameters: [],
                    tokens: ColumnPlan.tokens(window, steps: steps, totalColumns: totalColumns, shard: shard),
                    h: ColumnPlan.rows(state.h, state: state, shard: shard), c: ColumnPlan.rows(state.c, state: state, shard: shard),
                    fromShards: true)
                send(peer, Message.encodeStep(request, parameterFrame: []))
                membership.assigned(peer, columns: shard, parameterVersion: shardVersion)
            }
            let sent = clock()
            var failed: String?
            while (!round.isComplete || !(shardRound?.isSummed ?? false)) && failed == nil {
                if let why = try attemptFailed(round) {
                    failed = why
                    break
                }
                if clock() >= round.deadline {
                    // Every worker answered but a shard has not summed: a gradient slice it was owed never came.
                    failed = "coordinator shard(s) \((shardRound?.owing ?? []).map(name).joined(separator: ", ")) did not get every gradient slice"
                    break
                }
                guard let e = try receive(until: round.deadline), let message = open(e) else { continue }
                let peer = e.peer
                switch message {
                case .result(let r) where r.stepID == stepID && round.owes(peer):
                    membership.heard(peer, now: clock())
                    switch round.accept(r, from: peer, shape: resultShape, sharded: true) {
                    case .accepted: membership.completedStep(peer)
                    case .rejected(let why): reject("\(name(peer)): \(why)")
                    }
                case .refuse(.diverged, let reason) where round.owes(peer):
                    // The lead holds no current parameters to check a worker's word with, so the step is done again
                    // without it; two workers' reports of the same step make it a divergence.
                    membership.heard(peer, now: clock())
                    let who = membership.member(peer)?.name ?? LogText.peer(peer)
                    divergenceReports.insert(who)
                    if divergenceReports.count >= 2 || membership.active(now: clock()).count < 2 {
                        throw BardError.diverged("training diverged at step \((dropout?.step ?? 0) + 1): \(divergenceReports.count) worker(s) report a non-finite loss or gradient (\(LogText.escape(reason)))")
                    }
                    quarantine(peer, because: "it reports a divergence (\(LogText.escape(reason))) that the other workers will check")
                    failed = "\(name(peer)) reports a divergence"
                case .refuse(.staleParameters, let reason) where round.owes(peer) && round.results.isEmpty:
                    // Its parameter slices did not come, and no other worker's result has yet: a shard is slow, lost
                    // or cut off. The shards' heartbeats tell which; the worker is not at fault.
                    membership.heard(peer, now: clock())
                    failed = "coordinator shard(s) did not serve \(name(peer)) its parameters (\(LogText.escape(reason)))"
                case .refuse(let code, let reason) where round.owes(peer):
                    membership.heard(peer, now: clock())
                    mapSent.remove(peer)
                    quarantine(peer, because: "it could not compute step \(stepID) (\(code)): \(LogText.escape(reason))")
                    failed = "\(name(peer)) could not compute its columns"
                default:
                    let registration = handle(e, message)
                    if case .restarted(let previous) = registration, round.owes(previous) || round.owes(peer) {
                        failed = "\(name(peer)) restarted within step \(stepID)"
                    }
                }
            }
            if let failed, failed.hasPrefix("coordinator shard(s)") {
                shardMisses += 1
                firstMiss = firstMiss ?? clock()
                // A dead shard is found by its silence (RemoteStateLost) before this gives up.
                if shardMisses >= 5, clock() - (firstMiss ?? 0) > roster.heartbeatTimeout + 10 {
                    throw BardError.io("\(failed), in \(shardMisses) attempts of one step: workers and shards do not reach each other (see the shards' logs); the last checkpoint stands")
                }
            }
            if let failed {
                // The shards have summed nothing that will be applied, and the state is the last completed step's.
                redone += 1
                log("redoing step \(stepID) over the remaining workers: \(failed)")
                continue
            }
            let waited = clock() - t0
            deadline.record(waited)
            let compute = round.results.map(\.computeSeconds).max() ?? 0
            timing.compute = compute
            timing.send = sent - t0
            timing.communication = max(0, waited - compute - timing.send)
            let r0 = clock()
            let loss = Reducer.collect(round.results, state: state)
            timing.reduce = clock() - r0
            lastStepEnd = clock()
            return loss
        }
    }
}
