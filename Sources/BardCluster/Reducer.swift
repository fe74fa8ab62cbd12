import BardModel
import BardNumerics

/// Sums the workers' replies of one step into the full-batch gradient, always in column order, so the sum does not
/// depend on which worker answered first or how the columns were split among them.
public enum Reducer {
    /// Writes the sum of the results' gradients into `grads` (in column order: whatever it held before does not
    /// count) and their final state rows into `state`; with `meanOver`, the sum is then divided by that many targets
    /// in the same pass (`Kernels.scaleSumOfSquares`, as `Optimizer.mean`), and `squares` holds each block's sum of
    /// squares of the mean (`Blocks`, in block order), so the trainer can go straight to the update. Returns the loss
    /// sum, and the first columns of the results whose gradients came through shared memory and hold a NaN or an
    /// infinity there (checked in the same pass as the addition: a message's were checked when it was decoded); when
    /// there are any, `grads` is not the sum. The work is spread over `threads` threads by blocks of parameters, each
    /// element adding the results in column order, so the sum is the same bits for any thread count. A result whose
    /// gradient came through shared memory has it in `shared`, under its first column.
    public static func reduce(_ results: [StepResult], into grads: FloatBuffer, state: RecurrentState, threads: Int = 1,
                              shared: [Int: SharedRegion] = [:], meanOver n: Int? = nil)
        -> (loss: Double, nonFinite: [Int], squares: [Double]) {
        let ordered = results.sorted(by: { $0.columns.lowerBound < $1.columns.lowerBound })
        precondition(ordered.allSatisfy { r in
            r.sharedGradients ? shared[r.columns.lowerBound]?.count == grads.count : r.gradients.count == grads.count
        }, "reduce: a result's gradient has the wrong size")
        let out = grads.pointer, scale = n.map(Optimizer.meanScale(over:))
        // Per block and result: 1 when that result's shared block is not finite.
        var bad = [UInt8](repeating: 0, count: Blocks.count(grads.count) * ordered.count)
        var squares = [Double](repeating: 0, count: Blocks.count(grads.count))
        bad.withUnsafeMutableBufferPointer { flags in
            squares.withUnsafeMutableBufferPointer { sq in
                guard let f = flags.baseAddress, let s = sq.baseAddress else { return }
                Blocks.forEach(grads.count, threads: threads) { b, r in
                    let y = out + r.lowerBound
                    if ordered.isEmpty { y.update(repeating: 0, count: r.count) }
                    for (k, result) in ordered.enumerated() {
                        if result.sharedGradients, let region = shared[result.columns.lowerBound] {
                            let x = region.floats + r.lowerBound
                            let finite = k == 0 ? Kernels.copyCheckingFinite(x, into: y, count: r.count)
                                                : Kernels.addCheckingFinite(x, into: y, count: r.count)
                            f[b * ordered.count + k] = finite ? 0 : 1
                            continue
                        }
                        result.gradients.withUnsafeBufferPointer { g in
                            guard let gb = g.baseAddress else { return }
                            if k == 0 { y.update(from: gb + r.lowerBound, count: r.count) }
                            else { Kernels.add(gb + r.lowerBound, into: y, count: r.count) }
                        }
                    }
                    if let scale { s[b] = Kernels.scaleSumOfSquares(y, count: r.count, scale: scale) }
                }
            }
        }
        let nonFinite = ordered.indices.filter { k in stride(from: k, to: bad.count, by: ordered.count).contains { bad[$0] != 0 } }
            .map { ordered[$0].columns.lowerBound }
        return (collect(ordered, state: state), nonFinite, scale == nil ? [] : squares)
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
