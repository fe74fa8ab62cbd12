import BardModel
import BardNumerics
import Dispatch

/// Splits a window's columns into contiguous chunks, one per thread, each with its own workspace, and computes each
/// parameter's gradient once over all chunks, the threads sharing its rows (Model's four phases). Columns are
/// independent in a recurrent model, so this is exactly the full-batch computation (up to the order of float
/// additions), the same decomposition the cluster uses across processes.
public final class ColumnParallel {
    public let model: Model
    public let chunks: [Range<Int>]
    let workspaces: [Workspace]
    /// The table and transposed weights every thread reads (Model's phase 1).
    let prepared: PreparedWindow

    public init(model: Model, steps: Int, columns: Range<Int>, threads: Int) {
        self.model = model
        let n = max(1, min(threads, columns.count))
        chunks = (0..<n).map { i in
            let part = Range(part: i, of: n, in: columns.count)
            return (columns.lowerBound + part.lowerBound) ..< (columns.lowerBound + part.upperBound)
        }
        workspaces = chunks.map { model.makeWorkspace(steps: steps, batch: $0.count) }
        prepared = model.makePreparedWindow()
        BLAS.setThreads(1)
    }

    /// Forward (and backward into `grads` when given) over the chunks; returns the loss sum.
    public func run(params: FloatBuffer, grads: FloatBuffer?, window: UnsafePointer<Int32>, steps: Int, totalColumns: Int,
                    state: RecurrentState, dropout: DropoutKey?) -> Double {
        let n = chunks.count
        if n == 1 {
            return model.run(params: params, grads: grads, window: window, steps: steps, totalColumns: totalColumns,
                             columns: chunks[0], state: state, dropout: dropout, workspace: workspaces[0])
        }
        DispatchQueue.concurrentPerform(iterations: n) { i in model.prepareWindow(params: params, into: prepared, part: i, of: n) }
        var losses = [Double](repeating: 0, count: n)
        losses.withUnsafeMutableBufferPointer { lossPtr in
            DispatchQueue.concurrentPerform(iterations: n) { i in
                lossPtr[i] = model.runColumns(params: params, prepared: prepared, backward: grads != nil, window: window,
                                              steps: steps, totalColumns: totalColumns, columns: chunks[i], state: state,
                                              dropout: dropout, workspace: workspaces[i])
            }
        }
        if let grads {
            DispatchQueue.concurrentPerform(iterations: n) { i in model.sumTableGradients(workspaces: workspaces, part: i, of: n) }
            DispatchQueue.concurrentPerform(iterations: n) { i in
                model.addParameterGradients(into: grads, params: params, workspaces: workspaces, part: i, of: n)
            }
        }
        return losses.reduce(0, +)
    }
}

/// Loss over a token stream read in `columns` columns with carried state from the model's initial state, every
/// target counted once (full windows of `bptt` rows, then the partial last one). No dropout.
public func evaluate(model: Model, params: FloatBuffer, tokens: ArraySlice<Int32>, columns: Int, bptt: Int,
                     threads: Int) -> (loss: Double, chars: Int) {
    let streams = ColumnStreams(tokens, columns: columns)
    guard streams.rows >= 2 else { return (.nan, 0) }
    let steps = min(bptt, streams.rows - 1)
    let runner = ColumnParallel(model: model, steps: steps, columns: 0..<columns, threads: threads)
    let state = model.makeState(columns: columns)
    var window = [Int32](repeating: 0, count: (steps + 1) * columns)
    var total = 0.0, start = 0
    while start < streams.rows - 1 {
        let t = min(steps, streams.rows - 1 - start)
        total += window.withUnsafeMutableBufferPointer { w -> Double in
            guard let base = w.baseAddress else { return 0 }
            streams.window(startRow: start, steps: t, into: base)
            return runner.run(params: params, grads: nil, window: base, steps: t, totalColumns: columns, state: state, dropout: nil)
        }
        start += t
    }
    return (total / Double(streams.targetCount), streams.targetCount)
}
