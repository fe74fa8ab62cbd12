import BardModel
import BardNumerics

/// Adds the workers' replies of one step into the full-batch gradient, always in column order, so the sum does not
/// depend on which worker answered first or how the columns were split among them.
public enum Reducer {
    /// Adds each result's gradient sum into `grads` (in column order) and writes its final state rows into `state`.
    /// Returns the loss sum. The addition is spread over `threads` threads by blocks of parameters, each element
    /// adding the results in column order, so the sum is the same bits for any thread count. A result whose gradient
    /// came through shared memory has it in `shared`, under its first column.
    public static func reduce(_ results: [StepResult], into grads: FloatBuffer, state: RecurrentState, threads: Int = 1,
                              shared: [Int: SharedRegion] = [:]) -> Double {
        let ordered = results.sorted(by: { $0.columns.lowerBound < $1.columns.lowerBound })
        precondition(ordered.allSatisfy { r in
            r.sharedGradients ? shared[r.columns.lowerBound]?.count == grads.count : r.gradients.count == grads.count
        }, "reduce: a result's gradient has the wrong size")
        let out = grads.pointer
        Blocks.forEach(grads.count, threads: threads) { _, r in
            for result in ordered {
                if result.sharedGradients, let region = shared[result.columns.lowerBound] {
                    Kernels.add(region.floats + r.lowerBound, into: out + r.lowerBound, count: r.count)
                    continue
                }
                result.gradients.withUnsafeBufferPointer { g in
                    guard let gb = g.baseAddress else { return }
                    Kernels.add(gb + r.lowerBound, into: out + r.lowerBound, count: r.count)
                }
            }
        }
        var loss = 0.0
        for r in ordered {
            loss += r.lossSum
            ColumnPlan.write(r.h, into: state.h, state: state, shard: r.columns)
            ColumnPlan.write(r.c, into: state.c, state: state, shard: r.columns)
        }
        return loss
    }
}
