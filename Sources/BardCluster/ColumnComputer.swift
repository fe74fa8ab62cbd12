import BardModel
import BardNumerics
import BardTraining
import Foundation

/// One worker's columns of a window (its shard) on this process's cores: what a worker does for each step request, and what the coordinator
/// does again when a worker reports a divergence, to tell a real one from a broken or lying worker.
public final class ColumnComputer {
    public let model: Model
    let threads: Int
    var runner: WindowThreads?
    var runnerShape = (steps: 0, columns: 0)
    /// The last computation's gradient sums.
    public let grads: FloatBuffer

    public init(model: Model, threads: Int) {
        self.model = model; self.threads = threads
        grads = FloatBuffer(count: model.parameterCount)
    }

    /// Whether a request fits this model: its window, columns, state sizes and tokens. A request for anything else
    /// (a hostile or confused peer) must not size our buffers.
    public func fits(_ r: StepRequest) -> Bool {
        let cfg = model.config, n = r.columns.count, stateCount = cfg.layers * n * cfg.hidden
        return r.columns.upperBound <= r.totalColumns && r.h.count == stateCount && r.c.count == (model.hasCellState ? stateCount : 0)
            && r.tokens.count == (r.steps + 1) * n && r.tokens.allSatisfy { $0 >= 0 && Int($0) < model.vocabularySize }
    }

    /// Forward and backward (when `r.training`) of the request's window with `params`; gradient sums in `target`
    /// (default `grads`). Returns the result (gradients left empty: they are in the target) and whether loss, state
    /// and (unless `checkGradients` is false: the coordinator checks shared memory as it adds it) gradients are finite.
    /// With `table`, layer 0's table is read from there and its gradient written there (`SharedTable`).
    public func compute(_ r: StepRequest, params: FloatBuffer, into target: FloatBuffer? = nil,
                        checkGradients: Bool = true, table: SharedTable? = nil) -> (result: StepResult, finite: Bool) {
        let grads = target ?? self.grads
        precondition(grads.count == model.parameterCount, "compute: the gradient target has the wrong size")
        let n = r.columns.count, t0 = Date()
        if runner == nil || runnerShape != (r.steps, n) {
            runner = WindowThreads(model: model, steps: r.steps, columns: 0..<n, threads: threads)
            runnerShape = (r.steps, n)
        }
        let state = model.makeState(columns: n)
        state.h.copy(from: FloatBuffer(r.h))
        if state.c.count > 0 { state.c.copy(from: FloatBuffer(r.c)) }
        if table == nil {
            grads.zero(threads: threads)
        } else {
            // The embedding's and W_ih0's places are not written (nor read) with a shared table.
            var at = 0
            for skipped in model.tableParameterRanges + [grads.count ..< grads.count] {
                FloatBuffer(viewing: grads.pointer + at, count: skipped.lowerBound - at).zero(threads: threads)
                at = skipped.upperBound
            }
        }
        // Dropout masks are keyed by global column: the shard's offset in the batch.
        let dropout = r.training ? DropoutKey(seed: r.dropoutSeed, step: Int(truncatingIfNeeded: r.dropoutStep),
                                              columnBase: r.columns.lowerBound, globalColumns: r.totalColumns) : nil
        let loss = r.tokens.withUnsafeBufferPointer { w -> Double in
            guard let base = w.baseAddress, let runner else { return .nan }
            return runner.run(params: params, grads: r.training ? grads : nil, window: base, steps: r.steps,
                              totalColumns: n, state: state, dropout: dropout, table: table)
        }
        let result = StepResult(stepID: r.stepID, columns: r.columns, lossSum: loss,
                                computeSeconds: Date().timeIntervalSince(t0), gradients: [], h: state.h.array, c: state.c.array)
        return (result, loss.isFinite && (!checkGradients || grads.allFinite) && state.h.allFinite && state.c.allFinite)
    }
}
