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
    /// infinity there (checked as they are read, once: a message's were checked when it was decoded), or a table's
    /// gradient whose products alone overflow (`TableReduction.overflowing`); when there are any, `grads` is not the
    /// sum. Finite values whose sum overflows blame nobody: the norm then says the step diverged. The work is spread over `threads` threads by blocks of parameters, each
    /// element adding its terms in a fixed order, so the sum is the same bits for any thread count.
    ///
    /// A result whose gradient came through shared memory has it in `shared`, under its first column, with its
    /// window's gradient of layer 0's table after it instead of the embedding's and W_ih0's (`SharedTable`): those
    /// two are made once from the tables' sum (`table`, with `params`), and the results by message are added to them.
    public static func reduce(_ results: [StepResult], into grads: FloatBuffer, state: RecurrentState, threads: Int = 1,
                              shared: [Int: SharedRegion] = [:], table: TableReduction? = nil, params: FloatBuffer? = nil,
                              meanOver n: Int? = nil) -> (loss: Double, nonFinite: [Int], squares: [Double]) {
        let ordered = results.sorted(by: { $0.columns.lowerBound < $1.columns.lowerBound })
        precondition(ordered.allSatisfy { r in
            r.sharedGradients ? (shared[r.columns.lowerBound]?.count ?? 0) >= grads.count : r.gradients.count == grads.count
        }, "reduce: a result's gradient has the wrong size")
        let viaShared = ordered.indices.filter { ordered[$0].sharedGradients }
        // The embedding's and W_ih0's gradients of the shared results, written first where the messages' are added.
        var tableRanges: [Range<Int>] = []
        var badTables: [Int] = []
        let regions = viaShared.map { shared[ordered[$0].columns.lowerBound]! }  // each has one: the precondition
        if !viaShared.isEmpty {
            guard let table, let params else { preconditionFailure("reduce: results in shared memory need their table's reduction") }
            badTables = table.write(from: regions, params: params, into: grads, threads: threads).map { viaShared[$0] }
            tableRanges = table.ranges
        }
        // Per block: 1 when the products of the tables' gradients wrote a NaN or an infinity there.
        var overflow = [UInt8](repeating: 0, count: Blocks.count(grads.count))
        let out = grads.pointer, scale = n.map(Optimizer.meanScale(over:))
        // Per block and result: 1 when that result's shared block is not finite.
        var bad = [UInt8](repeating: 0, count: Blocks.count(grads.count) * ordered.count)
        var squares = [Double](repeating: 0, count: Blocks.count(grads.count))
        bad.withUnsafeMutableBufferPointer { flags in
            overflow.withUnsafeMutableBufferPointer { over in
                squares.withUnsafeMutableBufferPointer { sq in
                    guard let f = flags.baseAddress, let o = over.baseAddress, let s = sq.baseAddress else { return }
                    Blocks.forEach(grads.count, threads: threads) { b, block in
                        for (r, fromTable) in segments(of: block, around: tableRanges) {
                            let y = out + r.lowerBound
                            // A table segment already holds its first term, the products: checked before the rest is added.
                            if fromTable && !Kernels.allFinite(y, count: r.count) { o[b] = 1 }
                            var first = !fromTable
                            for (k, result) in ordered.enumerated() {
                                if result.sharedGradients {
                                    guard !fromTable, let region = shared[result.columns.lowerBound] else { continue }
                                    let x = region.floats + r.lowerBound
                                    let finite = first ? Kernels.copyCheckingFinite(x, into: y, count: r.count)
                                                       : Kernels.addCheckingFinite(x, into: y, count: r.count)
                                    if !finite { f[b * ordered.count + k] = 1 }
                                } else {
                                    result.gradients.withUnsafeBufferPointer { g in
                                        guard let gb = g.baseAddress else { return }
                                        if first { y.update(from: gb + r.lowerBound, count: r.count) }
                                        else { Kernels.add(gb + r.lowerBound, into: y, count: r.count) }
                                    }
                                }
                                first = false
                            }
                            if first { y.update(repeating: 0, count: r.count) }  // no results
                        }
                        if let scale { s[b] = Kernels.scaleSumOfSquares(out + block.lowerBound, count: block.count, scale: scale) }
                    }
                }
            }
        }
        if badTables.isEmpty, overflow.contains(1), let table, let params {
            badTables = table.overflowing(count: regions.count, params: params, threads: threads).map { viaShared[$0] }
        }
        let nonFinite = ordered.indices.filter { k in
            badTables.contains(k) || stride(from: k, to: bad.count, by: ordered.count).contains { bad[$0] != 0 }
        }.map { ordered[$0].columns.lowerBound }
        return (collect(ordered, state: state), nonFinite, scale == nil ? [] : squares)
    }

    /// `block` cut at the edges of `ranges` (sorted, disjoint), each piece with whether it lies in one of them.
    static func segments(of block: Range<Int>, around ranges: [Range<Int>]) -> [(Range<Int>, Bool)] {
        var pieces: [(Range<Int>, Bool)] = []
        var at = block.lowerBound
        for t in ranges where t.upperBound > at && t.lowerBound < block.upperBound {
            if t.lowerBound > at { pieces.append((at ..< t.lowerBound, false)) }
            let end = min(t.upperBound, block.upperBound)
            pieces.append((max(at, t.lowerBound) ..< end, true))
            at = end
        }
        if at < block.upperBound { pieces.append((at ..< block.upperBound, false)) }
        return pieces
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
