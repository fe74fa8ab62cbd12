import BardModel
import BardNumerics

/// Computes a window's columns on `threads` threads that share every step (Model's three phases), one workspace for
/// all of them: a forward step's recurrent product split by gate columns and a backward one by hidden units, so that
/// each thread reads only its share of W_hh (its strips, or with AVX-512 kernels its pieces) where threads that each
/// took their own columns would read all of it every step; or, where OpenBLAS computes a thread's columns' backward
/// products unpacked, backward by batch columns (`HiddenWeight.Layout`). The rest of a step is split by batch columns, what runs once per window by rows, and each
/// parameter's gradient is computed once, the threads sharing its rows (docs/scaling.md). This is exactly the
/// full-batch computation up to the order of float additions.
public final class WindowThreads {
    public let model: Model
    public let columns: Range<Int>
    let workspace: Workspace
    let team: ThreadTeam
    /// The table and W_hh's strips or W_hh^T every thread reads (Model's phase 1); one thread uses the workspace's own.
    private lazy var prepared = model.makePreparedWindow(batch: columns.count, threads: team.count)

    public init(model: Model, steps: Int, columns: Range<Int>, threads: Int) {
        self.model = model
        self.columns = columns
        workspace = model.makeWorkspace(steps: steps, batch: columns.count)
        team = ThreadTeam(count: max(1, min(threads, columns.count)))
        BLAS.setThreads(1)
    }

    public var threads: Int { team.count }

    /// Forward (and backward into `grads` when given) over the columns; returns the loss sum. With `table`, the
    /// window reads layer 0's table from it and writes the table's gradient there (`SharedTable`).
    public func run(params: FloatBuffer, grads: FloatBuffer?, window: UnsafePointer<Int32>, steps: Int, totalColumns: Int,
                    state: RecurrentState, dropout: DropoutKey?, table: SharedTable? = nil) -> Double {
        let n = team.count
        if n == 1 {
            return model.run(params: params, grads: grads, window: window, steps: steps, totalColumns: totalColumns,
                             columns: columns, state: state, dropout: dropout, workspace: workspace, table: table)
        }
        let losses = UnsafeMutableBufferPointer<Double>.allocate(capacity: n)
        defer { losses.deallocate() }
        let (model, prepared, workspace, columns, team) = (model, prepared, workspace, columns, team)
        team.run { i in
            model.prepareWindow(params: params, into: prepared, part: i, of: n, backward: grads != nil, table: table)
            team.barrier()
            losses[i] = model.runColumns(params: params, prepared: prepared, backward: grads != nil, window: window,
                                         steps: steps, totalColumns: totalColumns, columns: columns, state: state,
                                         dropout: dropout, workspace: workspace, table: table, part: i, of: n,
                                         barrier: team.barrier)
            guard let grads else { return }
            team.barrier()
            model.addParameterGradients(into: grads, params: params, workspace: workspace, part: i, of: n, table: table)
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
    let runner = WindowThreads(model: model, steps: steps, columns: 0..<columns, threads: threads)
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
