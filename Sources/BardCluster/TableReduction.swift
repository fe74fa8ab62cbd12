import BardModel
import BardNumerics
import Dispatch

/// The embedding's and W_ih0's gradients of the workers that left their window's gradient of layer 0's table in shared
/// memory instead (`SharedTable`): the tables' gradients added in column order, checked finite as they are added, and
/// the two gradients made once from the sum (`Model.addTableGradients`), as one process makes them from its one table.
public final class TableReduction {
    let model: Model
    let layout: SharedLayout
    /// The parameters whose gradients this makes, in order (`Model.tableParameterRanges`).
    public let ranges: [Range<Int>]
    let sum: FloatBuffer
    /// The products are split into this many parts whatever the thread count, so their bits do not depend on it.
    static let parts = 4

    public init(model: Model) {
        self.model = model; layout = SharedLayout(model); ranges = model.tableParameterRanges
        sum = FloatBuffer(count: layout.tableCount)
        BLAS.setThreads(1)  // the products are spread over threads here; OpenBLAS's own would spin beside them
    }

    /// Adds the tables' gradients in `regions` (in column order) and writes the embedding's and W_ih0's gradients of
    /// their sum into `ranges` of `grads`, on up to `threads` threads. Returns the indexes of the regions whose table
    /// gradient holds a NaN or an infinity (then `grads` is not written).
    func write(from regions: [SharedRegion], params: FloatBuffer, into grads: FloatBuffer, threads: Int) -> [Int] {
        precondition(grads.count == layout.parameterCount && regions.allSatisfy { $0.count == layout.count },
                     "TableReduction: sizes differ")
        var bad: [Int] = []
        for (i, region) in regions.enumerated() {
            let x = UnsafePointer(layout.table(in: region))
            let finite = i == 0 ? Kernels.copyCheckingFinite(x, into: sum.pointer, count: sum.count)
                                : Kernels.addCheckingFinite(x, into: sum.pointer, count: sum.count)
            if !finite { bad.append(i) }
        }
        guard bad.isEmpty, !regions.isEmpty else { return bad }
        let (model, dTable, p, g) = (model, UnsafePointer(sum.pointer), UnsafePointer(params.pointer), grads.pointer)
        let parts = TableReduction.parts
        ThreadTeam.parallel(max(1, min(threads, parts))) { t in
            for part in stride(from: t, to: parts, by: max(1, min(threads, parts))) {
                model.addTableGradients(dTable, params: p, into: g, part: part, of: parts, accumulate: false)
            }
        }
        return []
    }
}
