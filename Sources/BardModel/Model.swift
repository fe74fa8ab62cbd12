import BardNumerics
import Foundation

/// The carried hidden state of every column: h (and c for LSTM) as (layers, columns, hidden).
public final class RecurrentState {
    public let layers: Int, columns: Int, hidden: Int
    public let h: FloatBuffer
    public let c: FloatBuffer

    public init(layers: Int, columns: Int, hidden: Int, hasCell: Bool) {
        self.layers = layers; self.columns = columns; self.hidden = hidden
        h = FloatBuffer(count: layers * columns * hidden)
        c = FloatBuffer(count: hasCell ? layers * columns * hidden : 0)
    }

    /// Zeros, or the chapter's init_hidden: unit 0 of h and c set to 1 in every column.
    public func reset(_ initial: InitialState) {
        h.zero(); c.zero()
        guard initial == .book else { return }
        for l in 0..<layers {
            for b in 0..<columns {
                h[(l * columns + b) * hidden] = 1
                if c.count > 0 { c[(l * columns + b) * hidden] = 1 }
            }
        }
    }

    /// Pointer to the state rows of `layer` starting at `column`.
    @inline(__always) func hRows(_ layer: Int, _ column: Int) -> UnsafeMutablePointer<Float> {
        h.pointer + (layer * columns + column) * hidden
    }
    @inline(__always) func cRows(_ layer: Int, _ column: Int) -> UnsafeMutablePointer<Float>? {
        c.count == 0 ? nil : c.pointer + (layer * columns + column) * hidden
    }

    public func copy(from other: RecurrentState) { h.copy(from: other.h); c.copy(from: other.c) }
}

/// Selects the dropout masks of one optimiser step. Masks depend only on (seed, step, site, column, t, unit),
/// so a column gets the same mask whichever worker or thread computes it.
public struct DropoutKey: Sendable {
    public let seed: UInt64, step: UInt64
    /// Where the columns of this run sit in the global batch, when a worker runs a shard as its own small batch.
    public let columnBase: Int
    public let globalColumns: Int?
    public init(seed: UInt64, step: Int, columnBase: Int = 0, globalColumns: Int? = nil) {
        self.seed = seed; self.step = UInt64(truncatingIfNeeded: step); self.columnBase = columnBase; self.globalColumns = globalColumns
    }
}

/// The columns `first..<first + batch` of a time-major token window of `totalColumns` columns and steps + 1 rows:
/// inputs are rows 0..<steps, targets rows 1...steps. Row r of every (T*B, n) buffer is r = t * batch + b.
struct WindowColumns {
    let tokens: UnsafePointer<Int32>
    let totalColumns: Int, first: Int, steps: Int, batch: Int
    var rows: Int { steps * batch }
    @inline(__always) func input(_ t: Int, _ b: Int) -> Int { Int(tokens[t * totalColumns + first + b]) }
    @inline(__always) func target(_ t: Int, _ b: Int) -> Int { Int(tokens[(t + 1) * totalColumns + first + b]) }
}

/// What every thread of a window reads, made once per window from the parameters (`Model.prepareWindow`): layer 0's
/// input projection of every character, (V, G*H), and, when the layout reads them, each layer's W_hh^T, (H, G*H), or
/// W_hh's strips (`HiddenWeight`).
public final class PreparedWindow {
    let table: FloatBuffer
    let layout: HiddenWeight.Layout
    let whhT: [FloatBuffer]
    let strips: [FloatBuffer]

    init(config: Config, vocabularySize v: Int, layout: HiddenWeight.Layout) {
        let gh = config.cell.gates * config.hidden
        table = FloatBuffer(count: v * gh)
        self.layout = layout
        whhT = (0..<config.layers).map { _ in FloatBuffer(count: layout.transposes ? gh * config.hidden : 0) }
        strips = (0..<config.layers).map { _ in
            FloatBuffer(count: layout == .strips ? HiddenWeight.stripsSize(hidden: config.hidden, gateRows: gh) : 0)
        }
    }

    /// Layer l's W_hh as its steps read it.
    func hiddenWeight(_ l: Int, of layer: RecurrentLayer, params p: UnsafePointer<Float>) -> HiddenWeight {
        layer.hiddenWeight(params: p, transposed: UnsafePointer(whhT[l].pointer), strips: UnsafePointer(strips[l].pointer),
                           layout: layout)
    }
}

/// Layer 0's input table (V, G*H) of the parameters a window runs with, made by another process (the coordinator,
/// once for all the workers of its host), and where the window's gradient of the table goes instead of the
/// embedding's and W_ih0's, which that process makes from the sum (`Model.addTableGradients`).
public struct SharedTable {
    public let table: UnsafePointer<Float>
    public let gradient: UnsafeMutablePointer<Float>
    public init(table: UnsafePointer<Float>, gradient: UnsafeMutablePointer<Float>) {
        self.table = table; self.gradient = gradient
    }
}

/// Buffers for one window of up to `steps` x `batch` columns, reused across windows.
public final class Workspace {
    let steps: Int, batch: Int
    /// (V, G*H): the gradient of layer 0's input projection of every character (the table's).
    let dTable: FloatBuffer
    let layers: [LayerWorkspace]
    /// Per dropout site (between layers, before the decoder): the mask multipliers and the output.
    let masks: [FloatBuffer]
    let dropped: [FloatBuffer]
    let logits: FloatBuffer
    let dDecoderInput: FloatBuffer
    /// The shape of the window last run here, which `Model.addParameterGradients` reads back.
    var ran = (steps: 0, batch: 0, dropout: false, backward: false)
    /// The prepared window of `Model.run`, made on its first use (threads that share a window share one instead).
    private(set) lazy var prepared = PreparedWindow(
        config: config, vocabularySize: vocabularySize,
        layout: .fastest(batch: batch, gateRows: config.cell.gates * config.hidden))
    private let config: Config, vocabularySize: Int

    init(config: Config, vocabularySize v: Int, steps: Int, batch: Int) {
        self.steps = steps; self.batch = batch; self.config = config; vocabularySize = v
        let rows = steps * batch
        let gh = config.cell.gates * config.hidden
        dTable = FloatBuffer(count: v * gh)
        layers = (0..<config.layers).map { l in
            LayerWorkspace(cell: config.cell, input: l == 0 ? config.embed : config.hidden, hidden: config.hidden,
                           steps: steps, batch: batch)
        }
        // Site 0 (the embedding) has no dropout; site l + 1 follows layer l.
        let siteWidths = [0] + Array(repeating: config.hidden, count: config.layers)
        let drop = config.dropout > 0
        masks = siteWidths.map { FloatBuffer(count: drop ? rows * $0 : 0) }
        dropped = siteWidths.map { FloatBuffer(count: drop ? rows * $0 : 0) }
        logits = FloatBuffer(count: rows * v)
        dDecoderInput = FloatBuffer(count: rows * config.hidden)
    }
}

/// Embedding -> recurrent layers -> linear decoder -> softmax cross-entropy, with forward and backward by hand.
public final class Model {
    public let config: Config
    public let vocabularySize: Int
    public let layout: ParameterLayout
    public let layers: [RecurrentLayer]
    let embeddingOffset: Int, decoderWeight: Int, decoderBias: Int?

    public init(config: Config, vocabularySize: Int) {
        self.config = config
        self.vocabularySize = vocabularySize
        layout = ParameterLayout(config: config, vocabularySize: vocabularySize)
        let layout = self.layout
        layers = (0..<config.layers).map { l in
            RecurrentLayer(cell: config.cell, activation: config.activation, input: l == 0 ? config.embed : config.hidden,
                           hidden: config.hidden, layer: l, layout: layout)
        }
        embeddingOffset = layout.offset("embedding.weight")
        decoderWeight = layout.offset("decoder.weight")
        decoderBias = layout["decoder.bias"]?.offset
    }

    public var parameterCount: Int { layout.total }
    /// Whether the state carries a cell state beside h (the cell says).
    public var hasCellState: Bool { layers[0].cell.hasCellState }

    public func makeWorkspace(steps: Int, batch: Int) -> Workspace {
        Workspace(config: config, vocabularySize: vocabularySize, steps: steps, batch: batch)
    }

    /// For windows of `batch` columns on `threads` threads, whose steps read W_hh as `layout` says (`HiddenWeight`;
    /// by default the fastest on this machine's kernels).
    public func makePreparedWindow(batch: Int, threads: Int = 1, layout: HiddenWeight.Layout? = nil) -> PreparedWindow {
        PreparedWindow(config: config, vocabularySize: vocabularySize,
                       layout: layout ?? .fastest(batch: batch, threads: threads,
                                                  gateRows: layers[0].cell.gates * config.hidden))
    }

    public func makeState(columns: Int) -> RecurrentState {
        let s = RecurrentState(layers: config.layers, columns: columns, hidden: config.hidden, hasCell: hasCellState)
        s.reset(config.initialState)
        return s
    }

    public func makeParameters(seed: UInt64) -> FloatBuffer {
        let p = FloatBuffer(count: layout.total)
        Initializer.initialize(p, layout: layout, config: config, seed: seed)
        return p
    }

    /// Forward, and backward when `grads` is given, over one window for the columns `columns` of a batch of
    /// `totalColumns`. `window` holds steps + 1 rows of totalColumns tokens, time-major: inputs are rows 0..<steps,
    /// targets rows 1...steps. The state rows of those columns are read as the initial state and overwritten with
    /// the final one (carried, detached). Gradients of the loss *sum* are accumulated into `grads`, so shards add up
    /// to the full batch (with `table`, the embedding's and W_ih0's excepted: `SharedTable`). Returns the summed
    /// cross-entropy in nats.
    ///
    /// `dropout` nil means evaluation (no dropout). `lastStepOnly` keeps only the last step's loss, and
    /// `hiddenGradNorms` (steps entries) receives |dL/dh_t| of the top layer, for the vanishing-gradient lesson.
    @discardableResult
    public func run(params: FloatBuffer, grads: FloatBuffer?, window: UnsafePointer<Int32>, steps T: Int,
                    totalColumns: Int, columns: Range<Int>, state: RecurrentState, dropout: DropoutKey?,
                    workspace ws: Workspace, lastStepOnly: Bool = false,
                    hiddenGradNorms: UnsafeMutablePointer<Double>? = nil, table: SharedTable? = nil) -> Double {
        prepareWindow(params: params, into: ws.prepared, part: 0, of: 1, backward: grads != nil, table: table)
        let loss = runColumns(params: params, prepared: ws.prepared, backward: grads != nil, window: window, steps: T,
                              totalColumns: totalColumns, columns: columns, state: state, dropout: dropout, workspace: ws,
                              lastStepOnly: lastStepOnly, hiddenGradNorms: hiddenGradNorms, table: table)
        if let grads {
            addParameterGradients(into: grads, params: params, workspace: ws, part: 0, of: 1, table: table)
        }
        return loss
    }

    // MARK: One window on several threads
    //
    // `run` is three phases, so that threads can share a window (WindowThreads) while what depends only on the
    // parameters is made once and each parameter's gradient is computed once:
    // 1. `prepareWindow`, each thread a share of the embedding table's gate columns and of each layer's W_hh as the
    //    steps read it (W_hh^T for backward pieces, or W_hh's strips: `HiddenWeight`);
    // 2. `runColumns`, the threads together on one workspace: forward, loss and backward through time, leaving the
    //    gate and table gradients in the workspace. Each step's product is split by gate columns (backward by hidden
    //    units, or by batch columns as `HiddenWeight.Layout` says) and the rest of a step by batch columns, with
    //    barriers in between; what is done once per window (the decoder, the loss, the input projections) by rows;
    // 3. `addParameterGradients`, every weight and bias gradient, each thread its share of every tensor's rows.

    /// Phase 2: forward, and backward when `backward` is set, over one window for the columns `columns` of a batch of
    /// `totalColumns`, reading the table and W_hh's strips or W_hh^T that phase 1 left in `prepared` (or `table`'s table).
    /// The gate and table gradients are left in the workspace for phase 3 (the table's in `table`'s gradient, when
    /// given); the state rows of the columns are read and overwritten as in
    /// `run`. Every one of `parts` threads calls it at once with its `part`, the same arguments and a `barrier` that
    /// waits for all of them (one thread: part 0 of 1, no barrier); each returns its share of the loss.
    public func runColumns(params: FloatBuffer, prepared: PreparedWindow, backward: Bool, window: UnsafePointer<Int32>,
                           steps T: Int, totalColumns: Int, columns: Range<Int>, state: RecurrentState,
                           dropout: DropoutKey?, workspace ws: Workspace, lastStepOnly: Bool = false,
                           hiddenGradNorms: UnsafeMutablePointer<Double>? = nil, table: SharedTable? = nil,
                           part: Int = 0, of parts: Int = 1, barrier: @escaping () -> Void = {}) -> Double {
        let B = columns.count
        precondition(T <= ws.steps && B <= ws.batch, "window \(T)x\(B) exceeds workspace \(ws.steps)x\(ws.batch)")
        precondition(columns.upperBound <= totalColumns && state.columns == totalColumns,
                     "columns \(columns) of \(totalColumns), state has \(state.columns)")
        let w = WindowColumns(tokens: window, totalColumns: totalColumns, first: columns.lowerBound, steps: T, batch: B)
        let p = params.pointer, lw0 = ws.layers[0]
        let dropout = config.dropout > 0 ? dropout : nil
        let s = Share(part: part, of: parts, window: w, barrier: barrier)
        if part == 0 { ws.ran = (T, B, dropout != nil, backward) }
        barrier()

        // Forward: embedding (as layer 0's input projection) -> recurrent stack (dropout after each layer) -> decoder
        // -> softmax cross-entropy, which leaves the probabilities in ws.logits.
        embeddingForward(gates: lw0.gates.pointer, table: table?.table ?? UnsafePointer(prepared.table.pointer), window: w,
                         rows: s.rows)
        barrier()
        let decoderInput = stackForward(ws: ws, prepared: prepared, state: state, params: p, window: w, dropout: dropout,
                                        share: s)
        decoderForward(logits: ws.logits.pointer, x: decoderInput, params: p, rows: s.rows)
        let loss = crossEntropyForward(probabilities: ws.logits.pointer, window: w, rows: s.rows, lastStepOnly: lastStepOnly)
        guard backward else { return loss }

        // Backward through the same pieces in reverse, down to the gate gradients and the table's.
        crossEntropyBackward(dLogits: ws.logits.pointer, window: w, rows: s.rows, lastStepOnly: lastStepOnly)
        decoderBackward(dx: ws.dDecoderInput.pointer, dLogits: ws.logits.pointer, params: p, rows: s.rows)
        barrier()
        stackBackward(ws: ws, prepared: prepared, dOut: ws.dDecoderInput.pointer, params: p, window: w, dropout: dropout,
                      hiddenGradNorms: hiddenGradNorms, share: s)
        embeddingBackward(dTable: table?.gradient ?? ws.dTable.pointer, dGates: lw0.dGatesInput.pointer, window: w,
                          gates: Range(part: part, of: parts, in: layers[0].cell.gates * config.hidden))
        return loss
    }

    /// One thread's share of a window in `runColumns`: its rows of T*B for what is done once per window, and the
    /// barrier of all shares.
    struct Share {
        let part: Int, parts: Int
        let rows: Range<Int>
        let barrier: () -> Void
        init(part: Int, of parts: Int, window w: WindowColumns, barrier: @escaping () -> Void) {
            self.part = part; self.parts = parts; self.barrier = barrier
            rows = Range(part: part, of: parts, in: w.rows)
        }
    }

    /// Phase 3: every parameter's gradient of the window `runColumns` left in `workspace` added into `grads`: share
    /// `part` of `parts` of each tensor's rows. With `table` (a `SharedTable`, the one `runColumns` wrote the table's
    /// gradient to), the embedding's and W_ih0's gradients are left as they were (`addTableGradients` makes them
    /// where the tables of several workers are summed).
    public func addParameterGradients(into grads: FloatBuffer, params: FloatBuffer, workspace ws: Workspace,
                                      part: Int, of parts: Int, table: SharedTable? = nil) {
        precondition(ws.ran.batch == 0 || ws.ran.backward, "addParameterGradients: the last window ran forward only")
        guard ws.ran.batch > 0 else { return }
        let p = params.pointer, gp = grads.pointer, H = config.hidden, V = vocabularySize
        let GH = layers[0].cell.gates * H, rows = ws.ran.steps * ws.ran.batch
        // The decoder: dW_dec += dLogits^T x, db_dec += column sums of dLogits, by rows of V.
        let v = Range(part: part, of: parts, in: V)
        if !v.isEmpty {
            let x = stackInput(layers.count, ws: ws)
            BLAS.gemm(transA: true, m: v.count, n: H, k: rows, a: ws.logits.pointer + v.lowerBound, lda: V, b: x, ldb: H,
                      beta: 1, c: gp + decoderWeight + v.lowerBound * H, ldc: H)
            if let db = decoderBias {
                Kernels.addColumnSums(ws.logits.pointer + v.lowerBound, rows: rows, n: v.count, stride: V,
                                      into: gp + db + v.lowerBound)
            }
        }
        // The recurrent layers, by gate rows; layer 0's input side through the table.
        for (l, layer) in layers.enumerated() {
            let x = l == 0 ? nil : UnsafePointer(stackInput(l, ws: ws))
            layer.addParameterGradients(grads: gp, from: [(ws: ws.layers[l], rows: rows, x: x)],
                                        gateRows: Range(part: part, of: parts, in: layer.cell.gates * H))
        }
        // The embedding, through the table (with a shared one, its gradient is already where it goes: `runColumns`).
        if table == nil {
            addTableGradients(UnsafePointer(ws.dTable.pointer), params: p, into: gp, part: part, of: parts)
        }
    }

    /// The embedding's and W_ih0's gradients from the table's, `dTable` (V, G*H): dW_ih0 += dTable^T E by gate rows,
    /// dE += dTable W_ih0 by columns of E (each part reads its columns of W_ih0, not all of it), share `part` of
    /// `parts` of each (with `accumulate` false, written instead of added). The biases' gradients are layer 0's own.
    public func addTableGradients(_ dTable: UnsafePointer<Float>, params p: UnsafePointer<Float>,
                                  into gp: UnsafeMutablePointer<Float>, part: Int, of parts: Int, accumulate: Bool = true) {
        let E = config.embed, V = vocabularySize, GH = layers[0].cell.gates * config.hidden, beta: Float = accumulate ? 1 : 0
        let g = Range(part: part, of: parts, in: GH), e = Range(part: part, of: parts, in: E)
        if !g.isEmpty {
            BLAS.gemm(transA: true, m: g.count, n: E, k: V, a: dTable + g.lowerBound, lda: GH, b: p + embeddingOffset, ldb: E,
                      beta: beta, c: gp + layers[0].weightIH + g.lowerBound * E, ldc: E)
        }
        if !e.isEmpty {
            BLAS.gemm(m: V, n: e.count, k: GH, a: dTable, lda: GH, b: p + layers[0].weightIH + e.lowerBound, ldb: E,
                      beta: beta, c: gp + embeddingOffset + e.lowerBound, ldc: E)
        }
    }

    /// The parameters whose gradients come through the table's (`addTableGradients`): the embedding and W_ih0.
    public var tableParameterRanges: [Range<Int>] {
        let E = config.embed, GH = layers[0].cell.gates * config.hidden
        return [embeddingOffset ..< embeddingOffset + vocabularySize * E,
                layers[0].weightIH ..< layers[0].weightIH + GH * E].sorted { $0.lowerBound < $1.lowerBound }
    }

    // MARK: Embedding table

    /// Layer 0 reads an embedding row and projects it: the product of the two is a per-character table
    /// (V, G*H) = E W_ih0^T + biases, so the window's input projection (T*B, G*H) is a gather, not a GEMM. Phase 1
    /// computes share `part` of `parts` of the table's gate columns (`makeTable`), and the same share of each layer's W_hh
    /// as the steps read it: gate rows of W_hh^T (`RecurrentLayer.transposeHidden`, for backward pieces), or strips
    /// (`RecurrentLayer.packHidden`; the backward ones only when there is a `backward`).
    /// With a table made elsewhere (`table`), it makes none.
    public func prepareWindow(params: FloatBuffer, into prepared: PreparedWindow, part: Int, of parts: Int,
                              backward: Bool = true, table: SharedTable? = nil) {
        let p = params.pointer, GH = layers[0].cell.gates * config.hidden
        if table == nil {
            makeTable(params: p, into: prepared.table.pointer, part: part, of: parts)
        }
        let layout = prepared.layout
        for (l, layer) in layers.enumerated() where layout == .strips {
            layer.packHidden(params: p, into: prepared.strips[l].pointer, part: part, of: parts, backward: backward)
        }
        for (l, layer) in layers.enumerated() where backward && layout.transposes {
            layer.transposeHidden(params: p, into: prepared.whhT[l].pointer, gateRows: Range(part: part, of: parts, in: GH))
        }
    }

    /// Share `part` of `parts` of the table (V, G*H) of `params`, into `table`: its gate columns, so that each part
    /// reads only its gate rows of W_ih0 (a share of its rows would pack all of W_ih0 for each part). Each value is
    /// the product, then b_ih, then b_hh when the cell folds it in, added as `RecurrentLayer.projectInput` does.
    public func makeTable(params p: UnsafePointer<Float>, into table: UnsafeMutablePointer<Float>, part: Int, of parts: Int) {
        let l0 = layers[0], E = config.embed, GH = l0.cell.gates * config.hidden
        let g = Range(part: part, of: parts, in: GH)
        guard !g.isEmpty else { return }
        BLAS.gemm(transB: true, m: vocabularySize, n: g.count, k: E, a: p + embeddingOffset, lda: E,
                  b: p + l0.weightIH + g.lowerBound * E, ldb: E, beta: 0, c: table + g.lowerBound, ldc: GH)
        for v in 0..<vocabularySize {
            let row = table + v * GH + g.lowerBound
            Kernels.add(p + l0.biasIH + g.lowerBound, into: row, count: g.count)
            if l0.cell.foldsHiddenBias { Kernels.add(p + l0.biasHH + g.lowerBound, into: row, count: g.count) }
        }
    }

    /// Floats in the table (V, G*H).
    public var tableCount: Int { vocabularySize * layers[0].cell.gates * config.hidden }

    /// gates (T*B, G*H) = the table's row of each input character.
    /// Rows `rows` of T*B.
    func embeddingForward(gates: UnsafeMutablePointer<Float>, table: UnsafePointer<Float>, window w: WindowColumns,
                          rows: Range<Int>) {
        let GH = layers[0].cell.gates * config.hidden
        for r in rows {
            (gates + r * GH).update(from: table + w.input(r / w.batch, r % w.batch) * GH, count: GH)
        }
    }

    /// dTable[v] = sum of the gate gradients `dGates` of rows reading v; phase 3 turns it into dW_ih0 += dTable^T E
    /// and dE += dTable W_ih0 (V rows instead of T*B). The biases' gradients are layer 0's own. Only the gate
    /// columns `gates` of G*H, so that threads sharing a window never add into the same element.
    func embeddingBackward(dTable dT: UnsafeMutablePointer<Float>, dGates: UnsafePointer<Float>, window w: WindowColumns,
                           gates g: Range<Int>) {
        let GH = layers[0].cell.gates * config.hidden
        guard !g.isEmpty else { return }
        for v in 0..<vocabularySize { (dT + v * GH + g.lowerBound).update(repeating: 0, count: g.count) }
        for t in 0..<w.steps {
            for b in 0..<w.batch {
                let dst = dT + w.input(t, b) * GH, src = dGates + (t * w.batch + b) * GH
                for j in g { dst[j] += src[j] }
            }
        }
    }

    // MARK: Dropout

    /// out = x * mask (T*B, n), mask = 1/keep with probability keep. The mask depends only on (seed, step, site,
    /// global column, t, unit), so a column gets the same mask whichever worker or thread computes it.
    /// Rows `rows` of T*B.
    func dropoutForward(out: UnsafeMutablePointer<Float>, mask: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                        width n: Int, site: Int, key: DropoutKey, window w: WindowColumns, rows: Range<Int>) {
        let keep = 1 - config.dropout, scale = 1 / keep
        let rnd = CounterRandom(key: CounterRandom.key(key.seed, key.step, UInt64(site)))
        for r in rows {
            let t = r / w.batch, b = r % w.batch, row = r * n
            let position = UInt64((t * (key.globalColumns ?? w.totalColumns) + key.columnBase + w.first + b) * n)
            for j in 0..<n {
                let m: Float = rnd.uniform(at: position + UInt64(j)) < keep ? scale : 0
                mask[row + j] = m
                out[row + j] = x[row + j] * m
            }
        }
    }

    /// dx = dOut * mask, in place (`dx` holds dOut on entry).
    func dropoutBackward(dx: UnsafeMutablePointer<Float>, mask: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { dx[i] *= mask[i] }
    }

    // MARK: Recurrent stack

    /// The layers bottom-up from the carried state, dropout after each (site l + 1: between layers and before the
    /// decoder). Layer 0's input projection is already in its gates (embeddingForward). The state rows of the window's
    /// columns receive the final state (its value, not its gradient). Returns the decoder's input (T*B, H).
    /// Each layer's W_hh is read as `prepared` says (phase 1).
    func stackForward(ws: Workspace, prepared: PreparedWindow, state: RecurrentState, params p: UnsafePointer<Float>,
                      window w: WindowColumns, dropout: DropoutKey?, share s: Share) -> UnsafeMutablePointer<Float> {
        let T = w.steps, B = w.batch, H = config.hidden, c0 = w.first
        let columns = Range(part: s.part, of: s.parts, in: B)
        for (l, layer) in layers.enumerated() {
            let lw = ws.layers[l], GH = layer.cell.gates * H
            let h0 = UnsafePointer(state.hRows(l, c0)), c0p = state.cRows(l, c0).map { UnsafePointer($0) }
            // Layer 0's input projection is already in its gates (embeddingForward).
            if l > 0 {
                layer.projectInput(params: p, x: stackInput(l, ws: ws) + s.rows.lowerBound * layer.input,
                                   rows: s.rows.count, into: lw.gates.pointer + s.rows.lowerBound * GH)
                s.barrier()
            }
            layer.recur(params: p, whh: prepared.hiddenWeight(l, of: layer, params: p), steps: T, batch: B, h0: h0, c0: c0p, ws: lw,
                        part: s.part, of: s.parts, barrier: s.barrier)
            let last = (T * B + columns.lowerBound) * H, mine = columns.count * H
            (state.hRows(l, c0) + columns.lowerBound * H).update(from: lw.h.pointer + last, count: mine)
            if let cr = state.cRows(l, c0) { (cr + columns.lowerBound * H).update(from: lw.c.pointer + last, count: mine) }
            if let dropout {
                dropoutForward(out: ws.dropped[l + 1].pointer, mask: ws.masks[l + 1].pointer, x: lw.h.pointer + B * H,
                               width: H, site: l + 1, key: dropout, window: w, rows: s.rows)
            }
            s.barrier()
        }
        return stackInput(layers.count, ws: ws)
    }

    /// The layers top-down from `dOut` (T*B, H), the gradient of the decoder's input, which is overwritten, down to
    /// each layer's gate gradients (the parameter gradients are phase 3's). Leaves layer 0's input side (its
    /// ws.dGatesInput) to embeddingBackward. `hiddenGradNorms` is the top layer's.
    func stackBackward(ws: Workspace, prepared: PreparedWindow, dOut: UnsafeMutablePointer<Float>,
                       params p: UnsafePointer<Float>, window w: WindowColumns, dropout: DropoutKey?, hiddenGradNorms: UnsafeMutablePointer<Double>?,
                       share s: Share) {
        var dOut = dOut
        let H = config.hidden
        for l in stride(from: layers.count - 1, through: 0, by: -1) {
            if dropout != nil {
                dropoutBackward(dx: dOut + s.rows.lowerBound * H, mask: ws.masks[l + 1].pointer + s.rows.lowerBound * H,
                                count: s.rows.count * H)
                s.barrier()
            }
            let x = l == 0 ? nil : UnsafePointer(stackInput(l, ws: ws))
            layers[l].backwardThroughTime(params: p, whh: prepared.hiddenWeight(l, of: layers[l], params: p), x: x,
                                          dOut: dOut, steps: w.steps, batch: w.batch, ws: ws.layers[l],
                                          inputGradient: l > 0,
                                          hiddenGradNorms: l == layers.count - 1 ? hiddenGradNorms : nil,
                                          part: s.part, of: s.parts, barrier: s.barrier)
            s.barrier()
            dOut = ws.layers[l].dInput.pointer
        }
    }

    /// The input of layer l >= 1 (l == layers: the decoder's) in the window last run in `ws`: layer l - 1's output,
    /// after dropout site l.
    private func stackInput(_ l: Int, ws: Workspace) -> UnsafeMutablePointer<Float> {
        ws.ran.dropout ? ws.dropped[l].pointer : ws.layers[l - 1].h.pointer + ws.ran.batch * config.hidden
    }

    // MARK: Decoder

    /// logits (rows, V) = x W_dec^T + b_dec, x (rows, H), for the rows `rows` of T*B.
    func decoderForward(logits: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, params p: UnsafePointer<Float>,
                        rows r: Range<Int>) {
        let H = config.hidden, V = vocabularySize, logits = logits + r.lowerBound * V
        BLAS.gemm(transB: true, m: r.count, n: V, k: H, a: x + r.lowerBound * H, lda: H, b: p + decoderWeight, ldb: H,
                  beta: 0, c: logits, ldc: V)
        if let db = decoderBias { Kernels.addRowVector(logits, rows: r.count, n: V, p + db) }
    }

    /// dx = dLogits W_dec (overwritten) for the rows `rows`; dW_dec and db_dec are phase 3's.
    func decoderBackward(dx: UnsafeMutablePointer<Float>, dLogits: UnsafePointer<Float>, params p: UnsafePointer<Float>,
                         rows r: Range<Int>) {
        let H = config.hidden, V = vocabularySize
        BLAS.gemm(m: r.count, n: H, k: V, a: dLogits + r.lowerBound * V, lda: V, b: p + decoderWeight, ldb: H, beta: 0,
                  c: dx + r.lowerBound * H, ldc: H)
    }

    // MARK: Softmax cross-entropy

    /// Softmax of each of the rows `rows` of `probabilities` (the logits on entry, (T*B, V)) in place; returns their
    /// summed cross-entropy against the targets, in nats (only the last step's with `lastStepOnly`).
    func crossEntropyForward(probabilities: UnsafeMutablePointer<Float>, window w: WindowColumns, rows: Range<Int>,
                             lastStepOnly: Bool) -> Double {
        let V = vocabularySize
        var loss = 0.0
        for r in rows {
            let t = r / w.batch, b = r % w.batch
            guard !lastStepOnly || t == w.steps - 1 else { continue }
            let row = probabilities + r * V
            let targetLogit = row[w.target(t, b)]
            var m = row[0]
            for j in 1..<V where row[j] > m { m = row[j] }
            var sum: Float = 0
            for j in 0..<V { let e = expf(row[j] - m); row[j] = e; sum += e }
            // Max-subtracted log-sum-exp (the chapter's softmax overflows once logits are scaled).
            loss += Double(m) + log(Double(sum)) - Double(targetLogit)
            let inv = 1 / sum
            for j in 0..<V { row[j] *= inv }
        }
        return loss
    }

    /// dLogits = softmax - onehot(target), in place over the probabilities of the rows `rows`; rows whose loss is not
    /// counted get zero.
    func crossEntropyBackward(dLogits: UnsafeMutablePointer<Float>, window w: WindowColumns, rows: Range<Int>,
                              lastStepOnly: Bool) {
        let V = vocabularySize
        for r in rows {
            let t = r / w.batch, b = r % w.batch, row = dLogits + r * V
            if !lastStepOnly || t == w.steps - 1 {
                row[w.target(t, b)] -= 1
            } else {
                for j in 0..<V { row[j] = 0 }
            }
        }
    }
}
