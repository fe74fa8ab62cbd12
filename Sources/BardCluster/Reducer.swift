import BardModel
import BardNumerics

/// Adds the workers' replies of one step into the full-batch gradient, always in column order, so the sum does not
/// depend on which worker answered first or how the columns were split among them.
public enum Reducer {
    /// Adds each result's gradient sum into `grads` (in column order) and writes its final state rows into `state`.
    /// Returns the loss sum, and the first columns of the results whose gradients came through shared memory and
    /// hold a NaN or an infinity there (checked in the same pass as the addition: a message's were checked when it
    /// was decoded); when there are any, `grads` is not the sum. The addition is spread over `threads` threads by
    /// blocks of parameters, each element adding the results in column order, so the sum is the same bits for any
    /// thread count. A result whose gradient came through shared memory has it in `shared`, under its first column.
    public static func reduce(_ results: [StepResult], into grads: FloatBuffer, state: RecurrentState, threads: Int = 1,
                              shared: [Int: SharedRegion] = [:]) -> (loss: Double, nonFinite: [Int]) {
        let ordered = results.sorted(by: { $0.columns.lowerBound < $1.columns.lowerBound })
        precondition(ordered.allSatisfy { r in
            r.sharedGradients ? shared[r.columns.lowerBound]?.count == grads.count : r.gradients.count == grads.count
        }, "reduce: a result's gradient has the wrong size")
        let out = grads.pointer
        // Per block and result: 1 when that result's shared block is not finite.
        var bad = [UInt8](repeating: 0, count: Blocks.count(grads.count) * ordered.count)
        bad.withUnsafeMutableBufferPointer { flags in
            guard let f = flags.baseAddress else { return }
            Blocks.forEach(grads.count, threads: threads) { b, r in
                for (k, result) in ordered.enumerated() {
                    if result.sharedGradients, let region = shared[result.columns.lowerBound] {
                        let finite = Kernels.addCheckingFinite(region.floats + r.lowerBound, into: out + r.lowerBound, count: r.count)
                        f[b * ordered.count + k] = finite ? 0 : 1
                        continue
                    }
                    result.gradients.withUnsafeBufferPointer { g in
                        guard let gb = g.baseAddress else { return }
                        Kernels.add(gb + r.lowerBound, into: out + r.lowerBound, count: r.count)
                    }
                }
            }
        }
        let nonFinite = ordered.indices.filter { k in stride(from: k, to: bad.count, by: ordered.count).contains { bad[$0] != 0 } }
            .map { ordered[$0].columns.lowerBound }
        return (collect(ordered, state: state), nonFinite)
    }

    /// The results' loss sum (added in column order) and their final state rows written into `state`: all a
    /// coordinator takes from a step whose gradients went to its shards.
    public static func collect(_ results: [StepResult], state: RecurrentState) -> Double {
        var loss = 0.0
        for r in results.sorted(by: { $0.columns.lowerBound < $1.columns.lowerBound }) {
            loss += r.lossSum
            ColumnPlan.write(r.h, into: state.h, state: state, shard: r.columns)
            ColumnPlan.write(r.c, into: state.c, state: state, shard: r.columns)
        }
        return loss
    }
}
