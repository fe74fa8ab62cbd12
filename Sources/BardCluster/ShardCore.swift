import BardModel
import BardNumerics

/// One coordinator shard's part of a step (sharded coordinators, issue 11): it owns a slice of the flat parameters,
/// of their average and of the optimiser's moments, takes the workers' gradient slices of one step, adds them in column
/// order, reports its blocks' parts of the squared norm, and applies the optimiser to its slice once the lead has the
/// global norm. The math is `Optimizer.step`'s, split at its two passes. No I/O and no clock: the shard process
/// drives it.
public final class ShardCore {
    /// The range of the flat parameter vector this shard owns.
    public let slice: Range<Int>
    public let params: FloatBuffer
    public let average: FloatBuffer?
    public let optimizer: Optimizer
    /// The parameters' version: the step that made them (0: as seeded). Workers ask for the slice when theirs is older.
    public private(set) var version: UInt64 = 0
    let grads: FloatBuffer
    let threads: Int
    var round: Round?

    /// The gradient slices owed for one step attempt, by first column (with the worker that owes each), and those
    /// received.
    struct Round {
        let stepID: UInt64
        let owed: [Int: (columns: Range<Int>, owner: PeerID)]
        /// The targets the step's loss is summed over (batch x bptt): the gradient's mean divides by it.
        let meanOver: Int
        var received: [Int: [Float]] = [:]
        /// The blocks' parts of the squared norm, once all slices are in and averaged.
        var parts: [Double]?
    }

    public enum Reply: Equatable, Sendable {
        case accepted
        /// The last slice of the step: the sum is made, and these are its blocks' parts of the squared norm.
        case complete(parts: [Double])
        case rejected(String)
    }

    public init(slice: Range<Int>, optimizer kind: OptimizerKind, averaging: Bool, threads: Int) {
        self.slice = slice; self.threads = threads
        params = FloatBuffer(count: slice.count)
        grads = FloatBuffer(count: slice.count)
        average = averaging ? FloatBuffer(count: slice.count) : nil
        optimizer = Optimizer(kind: kind, lr: 0, parameterCount: slice.count)
    }

    /// Sets the slice's parameters, average and optimiser state (from the lead's initial parameters or a checkpoint),
    /// with the version workers will see. Any step in progress is dropped.
    public func seed(params p: [Float], average a: [Float]?, step: Int, m: [Float], v: [Float], version: UInt64) throws {
        guard p.count == slice.count, (a?.count ?? slice.count) == slice.count, (a == nil) == (average == nil) else {
            throw BardError.badInput("a seed of \(p.count) parameters for a slice of \(slice.count)")
        }
        params.copy(from: FloatBuffer(p))
        if let a, let average { average.copy(from: FloatBuffer(a)) }
        try optimizer.restore(step: step, lr: 0, m: m, v: v)
        self.version = version
        round = nil
    }

    /// A new step attempt: the workers' column ranges whose gradient slices it waits for, each with the worker that
    /// owes it, and the targets the loss is summed over. Replaces any earlier attempt (the lead abandoned it: a worker
    /// was lost).
    public func begin(stepID: UInt64, columns: [Range<Int>], owners: [PeerID], meanOver: Int) {
        round = Round(stepID: stepID, owed: Dictionary(zip(columns, owners).map { ($0.0.lowerBound, (columns: $0.0, owner: $0.1)) },
                                                       uniquingKeysWith: { a, _ in a }),
                      meanOver: meanOver)
    }

    /// A worker's gradient sums over this slice for its columns of step `stepID`: accepted once, only for the step
    /// in progress, only for columns owed and from the worker that owes them, only of the slice's size and finite.
    public func accept(stepID: UInt64, columns: Range<Int>, gradients: [Float], from peer: PeerID) -> Reply {
        guard var r = round, r.stepID == stepID else {
            return .rejected("a gradient slice for step \(stepID), which is not the step in progress")
        }
        guard r.parts == nil else { return .rejected("a gradient slice for step \(stepID), which is already summed") }
        guard let owed = r.owed[columns.lowerBound], owed.columns == columns else {
            return .rejected("a gradient slice for columns \(columns), not owed")
        }
        guard owed.owner == peer else { return .rejected("a gradient slice for columns \(columns) from a worker that does not owe them") }
        guard r.received[columns.lowerBound] == nil else { return .rejected("a second gradient slice for columns \(columns)") }
        guard gradients.count == slice.count else {
            return .rejected("a gradient slice of \(gradients.count) floats, the slice has \(slice.count)")
        }
        guard gradients.withUnsafeBufferPointer({ $0.baseAddress.map { Kernels.allFinite($0, count: gradients.count) } ?? true }) else {
            return .rejected("non-finite gradients for columns \(columns)")
        }
        r.received[columns.lowerBound] = gradients
        round = r
        return r.received.count == r.owed.count ? .complete(parts: finishSum()) : .accepted
    }

    /// The step's sum in column order (as `Reducer`), then its mean and the blocks' parts of its squared norm.
    func finishSum() -> [Double] {
        guard var r = round else { return [] }
        let ordered = r.received.keys.sorted().compactMap { r.received[$0] }
        grads.zero(threads: threads)
        let out = grads.pointer
        Blocks.forEach(grads.count, threads: threads) { _, range in
            for g in ordered {
                g.withUnsafeBufferPointer { gb in
                    guard let base = gb.baseAddress else { return }
                    Kernels.add(base + range.lowerBound, into: out + range.lowerBound, count: range.count)
                }
            }
        }
        let parts = Optimizer.mean(grads, over: r.meanOver, threads: threads)
        r.parts = parts
        r.received = [:]
        round = r
        return parts
    }

    /// Whether the step `stepID` has all its slices summed and waits for the global norm.
    public func isSummed(_ stepID: UInt64) -> Bool { round?.stepID == stepID && round?.parts != nil }

    /// The update of step `stepID` with the global norm and the step's learning rate; the new version is `version`.
    /// Returns nil when that step is not summed here (a lead confused about the state, or a late message).
    public func apply(stepID: UInt64, lr: Double, norm: Double, clip: Double, decay: Double,
                      version newVersion: UInt64) -> Optimizer.StepReport? {
        guard isSummed(stepID) else { return nil }
        optimizer.lr = lr
        let report = optimizer.update(params: params, grads: grads, norm: norm, clip: clip, average: average, decay: decay,
                                      threads: threads)
        version = newVersion
        round = nil
        return report
    }
}
