/// The sizes a result of this run must have.
public struct ResultShape: Sendable {
    public let parameterCount: Int
    /// layers x hidden: the state floats per column.
    public let stateFloatsPerColumn: Int
    public let hasCell: Bool
    public init(parameterCount: Int, stateFloatsPerColumn: Int, hasCell: Bool) {
        self.parameterCount = parameterCount; self.stateFloatsPerColumn = stateFloatsPerColumn; self.hasCell = hasCell
    }
}

/// One attempt at one step: which worker owes which columns, the replies so far, and the deadline. Takes replies and
/// the current time; does no I/O and reads no clock. An attempt that loses a worker is abandoned whole (nothing of
/// it has been applied), and the step is tried again as a new round with a new step id.
public struct StepRound: Sendable {
    public let stepID: UInt64
    public let startedAt: Double
    public let deadline: Double
    /// Columns still owed, by worker.
    public private(set) var pending: [PeerID: Range<Int>]
    public private(set) var results: [StepResult] = []
    /// Workers whose request went out again with the parameters in this round: at most once each.
    var resent: Set<PeerID> = []

    public enum Reply: Equatable, Sendable {
        case accepted
        case rejected(String)
    }

    public init(stepID: UInt64, assignments: [(peer: PeerID, columns: Range<Int>)], now: Double, timeout: Double) {
        self.stepID = stepID
        startedAt = now
        deadline = now + timeout
        pending = Dictionary(assignments.map { ($0.peer, $0.columns) }, uniquingKeysWith: { a, _ in a })
    }

    public var isComplete: Bool { pending.isEmpty }
    public func owes(_ peer: PeerID) -> Bool { pending[peer] != nil }

    /// A result: accepted only for this step, from a worker that still owes exactly these columns, in this run's shapes.
    /// Its gradient may be in shared memory only if its request went out through the worker's shared region, and that
    /// region is still the worker's (`sharedAllowed`); in a run with
    /// coordinator shards (`sharded`) it must have gone to them.
    public mutating func accept(_ r: StepResult, from peer: PeerID, shape: ResultShape, sharedAllowed: Bool = false,
                                sharded: Bool = false) -> Reply {
        guard r.stepID == stepID else { return .rejected("a result for step \(r.stepID), the current one is \(stepID)") }
        guard let columns = pending[peer] else { return .rejected("a duplicate or unasked-for result for step \(stepID)") }
        guard r.columns == columns else { return .rejected("a result for columns \(r.columns), it was asked for \(columns)") }
        guard !r.sharedGradients || sharedAllowed else { return .rejected("a result in shared memory, where its request did not go") }
        guard r.toShards == sharded else {
            return .rejected(sharded ? "a result whose gradients did not go to the shards" : "a result whose gradients went to shards this run does not have")
        }
        let states = columns.count * shape.stateFloatsPerColumn
        guard r.gradients.count == (r.sharedGradients || r.toShards ? 0 : shape.parameterCount), r.h.count == states,
              r.c.count == (shape.hasCell ? states : 0) else {
            return .rejected("a result for step \(stepID) of the wrong shape")
        }
        pending[peer] = nil
        results.append(r)
        return .accepted
    }

    /// The coordinator computed `peer`'s columns itself (the worker reported a divergence that did not reproduce).
    public mutating func substitute(_ r: StepResult, for peer: PeerID) {
        guard pending[peer] == r.columns else { return }
        pending[peer] = nil
        results.append(r)
    }

    /// The coordinator computed accepted columns again itself (what the worker left in shared memory was not finite).
    @discardableResult
    public mutating func replace(_ r: StepResult) -> Bool {
        guard let i = results.firstIndex(where: { $0.columns == r.columns }) else { return false }
        results[i] = r
        return true
    }

    /// A restarted worker on a new connection owes what its old connection owed.
    public mutating func move(from old: PeerID, to new: PeerID) {
        guard old != new, let columns = pending.removeValue(forKey: old) else { return }
        pending[new] = columns
        if resent.remove(old) != nil { resent.insert(new) }
    }

    /// Whether the request may go to `peer` again with the parameters; true once per worker and round.
    public mutating func mayResend(to peer: PeerID) -> Bool {
        guard pending[peer] != nil else { return false }
        return resent.insert(peer).inserted
    }

    /// Workers that still owe columns after the deadline.
    public func overdue(now: Double) -> [PeerID] { now >= deadline ? Array(pending.keys) : [] }
}

/// How long a round may take before its stragglers are quarantined: `--step-timeout` when given, else a multiple of
/// the recent rounds' median, within bounds, so a silent peer costs about one step's time rather than a minute.
public struct StepDeadline: Sendable {
    public var override: Double?
    public private(set) var recent: [Double] = []
    /// Before enough rounds are measured (the first ones also carry the parameters to every worker).
    public static let initial = 60.0
    /// Above the heartbeat timeout (3 s), so that a stopped or killed worker is evicted before it is called slow.
    public static let floor = 10.0
    public static let ceiling = 60.0
    public static let factor = 5.0
    static let window = 20

    public init(override: Double? = nil) { self.override = override }

    public var seconds: Double {
        if let override { return override }
        guard recent.count >= 3 else { return StepDeadline.initial }
        let sorted = recent.sorted()
        return min(StepDeadline.ceiling, max(StepDeadline.floor, StepDeadline.factor * sorted[sorted.count / 2]))
    }

    /// A completed round's duration.
    public mutating func record(_ seconds: Double) {
        recent.append(seconds)
        if recent.count > StepDeadline.window { recent.removeFirst() }
    }
}
