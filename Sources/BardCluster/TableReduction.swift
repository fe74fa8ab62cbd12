import BardModel
import BardNumerics

/// The embedding's and W_ih0's gradients of the workers that left their window's gradient of layer 0's table in shared
/// memory instead (`SharedTable`): the tables' gradients added in column order, checked finite as they are added, and
/// the two gradients made once from the sum (`Model.addTableGradients`), as one process makes them from its one table.
public final class TableReduction {
    let model: Model
    let layout: SharedLayout
    /// The parameters whose gradients this makes, in order (`Model.tableParameterRanges`).
    public let ranges: [Range<Int>]
    let sum: FloatBuffer
    /// Each region's table gradient as it was read and checked: a worker may write its region again after answering,
    /// so what is blamed on it must be what was added (`overflowing`).
    var copies: [FloatBuffer] = []
    /// Where `overflowing` makes one table's products (only `ranges` of it are ever written).
    lazy var scratch = FloatBuffer(count: layout.parameterCount)

    public init(model: Model) {
        self.model = model; layout = SharedLayout(model); ranges = model.tableParameterRanges
        sum = FloatBuffer(count: layout.tableCount)
    }

    /// Adds the tables' gradients in `regions` (in column order) and writes the embedding's and W_ih0's gradients of
    /// their sum into `ranges` of `grads`, on up to `threads` threads. Returns the indexes of the regions whose table
    /// gradient holds a NaN or an infinity; when there are any, `grads` is not written. Finite values can still make
    /// the products overflow: `Reducer` checks what they wrote as it adds the rest, and then asks `overflowing`.
    func write(from regions: [SharedRegion], params: FloatBuffer, into grads: FloatBuffer, threads: Int) -> [Int] {
        precondition(grads.count == layout.parameterCount && regions.allSatisfy { $0.count == layout.count },
                     "TableReduction: sizes differ")
        while copies.count < regions.count { copies.append(FloatBuffer(count: layout.tableCount)) }
        var bad: [Int] = []
        for (i, region) in regions.enumerated() {
            if !Kernels.copyCheckingFinite(layout.table(in: region), into: copies[i].pointer, count: sum.count) { bad.append(i) }
            if i == 0 { sum.copy(from: copies[0]) } else { Kernels.add(copies[i].pointer, into: sum.pointer, count: sum.count) }
        }
        guard bad.isEmpty, !regions.isEmpty else { return bad }
        products(of: sum.pointer, params: params, into: grads, threads: threads)
        return []
    }

    /// The indexes of the first `count` regions of the last `write` whose table gradient, as it was read then, alone
    /// makes the products overflow: their writers' fault, since an honest worker's would have overflowed in its own
    /// hands (a divergence, which the coordinator's own computation of its columns then confirms). None when only
    /// their sum overflows: then the step's norm says it diverged, as adding the products would have.
    public func overflowing(count: Int, params: FloatBuffer, threads: Int) -> [Int] {
        (0..<count).filter { i in
            products(of: copies[i].pointer, params: params, into: scratch, threads: threads)
            return !ranges.allSatisfy { Kernels.allFinite(scratch.pointer + $0.lowerBound, count: $0.count) }
        }
    }

    /// The two products of `dTable` in `SharedLayout.productParts` parts whatever the thread count, so that their
    /// bits do not depend on it.
    private func products(of dTable: UnsafeMutablePointer<Float>, params: FloatBuffer, into grads: FloatBuffer, threads: Int) {
        let (model, d, p, g, parts) = (model, UnsafePointer(dTable), UnsafePointer(params.pointer), grads.pointer,
                                       SharedLayout.productParts)
        ThreadTeam.parallel(parts: parts, threads: threads) { part in
            model.addTableGradients(d, params: p, into: g, part: part, of: parts, accumulate: false)
        }
    }
}
