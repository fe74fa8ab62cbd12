import BardModel
import BardNumerics

/// Adds the workers' replies of one step into the full-batch gradient, always in column order, so the sum does not
/// depend on which worker answered first or how the columns were split among them.
public enum Reducer {
    /// Adds each result's gradient sum into `grads` (in column order) and writes its final state rows into `state`.
    /// Returns the loss sum.
    public static func reduce(_ results: [StepResult], into grads: FloatBuffer, state: RecurrentState) -> Double {
        var loss = 0.0
        for r in results.sorted(by: { $0.columns.lowerBound < $1.columns.lowerBound }) {
            loss += r.lossSum
            r.gradients.withUnsafeBufferPointer { g in
                guard let gb = g.baseAddress else { return }
                let out = grads.pointer
                for i in 0..<g.count { out[i] += gb[i] }
            }
            ShardPlan.write(r.h, into: state.h, state: state, shard: r.columns)
            ShardPlan.write(r.c, into: state.c, state: state, shard: r.columns)
        }
        return loss
    }
}
