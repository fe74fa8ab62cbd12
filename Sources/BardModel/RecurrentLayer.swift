import BardNumerics

/// Buffers of one recurrent layer for a window of up to `steps` x `batch` (time-major rows: row = t * batch + b).
public final class LayerWorkspace {
    /// (T*B, G*H): the input projection plus biases, overwritten step by step with the gate activations.
    public let gates: FloatBuffer
    /// (T*B, G*H), only for a cell that does not fold b_hh (GRU): h_{t-1} W_hh^T + b_hh of every step.
    public let hiddenProjection: FloatBuffer
    /// ((T+1)*B, H): h[0] is the initial state; rows 1...T are the layer's output.
    public let h: FloatBuffer
    /// Only for a cell with a cell state (LSTM): ((T+1)*B, H) and (T*B, H).
    public let c: FloatBuffer
    public let tanhC: FloatBuffer
    /// (T*B, G*H): gradient of the gate pre-activations on the input side, and on the hidden side when it differs.
    public let dGatesInput: FloatBuffer
    public let dGatesHidden: FloatBuffer
    /// (B, H): gradient flowing into h_{t-1} and c_{t-1}; after backward, the gradient of the initial state.
    public let dhNext: FloatBuffer
    public let dcNext: FloatBuffer
    /// (T*B, input): gradient of the layer's input.
    public let dInput: FloatBuffer

    public convenience init(cell: CellKind, input: Int, hidden: Int, steps: Int, batch: Int) {
        self.init(cell: cell.cell(), input: input, hidden: hidden, steps: steps, batch: batch)
    }

    /// Sized by what the cell declares: c, tanhC and dcNext for a cell state, the hidden side kept apart for a cell
    /// that cannot fold b_hh into the input projection.
    public init(cell: some RecurrentCell, input: Int, hidden: Int, steps: Int, batch: Int) {
        let gh = cell.gates * hidden, rows = steps * batch
        let state = cell.hasCellState, apart = !cell.foldsHiddenBias
        gates = FloatBuffer(count: rows * gh)
        hiddenProjection = FloatBuffer(count: apart ? rows * gh : 0)
        h = FloatBuffer(count: (steps + 1) * batch * hidden)
        c = FloatBuffer(count: state ? (steps + 1) * batch * hidden : 0)
        tanhC = FloatBuffer(count: state ? rows * hidden : 0)
        dGatesInput = FloatBuffer(count: rows * gh)
        dGatesHidden = FloatBuffer(count: apart ? rows * gh : 0)
        dhNext = FloatBuffer(count: batch * hidden)
        dcNext = FloatBuffer(count: state ? batch * hidden : 0)
        dInput = FloatBuffer(count: rows * input)
    }
}

/// One recurrent layer with PyTorch's equations and weight layout:
/// weight_ih (G*H, input), weight_hh (G*H, H), bias_ih and bias_hh (G*H); the gate order is the cell's (Cells/).
///
/// Fused: the input projection of a whole window is one GEMM, each step's recurrent projection (all gates) is one GEMM,
/// and the weight gradients of the window are GEMMs over all T*B rows (per share of gate rows and per workspace, when
/// threads share the window: `addParameterGradients`).
public struct RecurrentLayer {
    /// The cell's equations; its concrete type is opened once per window (see `recur`), not per step or element.
    public let cell: any RecurrentCell
    public let input: Int
    public let hidden: Int
    public let weightIH: Int, weightHH: Int, biasIH: Int, biasHH: Int

    public init(cell: CellKind, activation: Activation, input: Int, hidden: Int, layer: Int, layout: ParameterLayout) {
        self.cell = cell.cell(activation: activation); self.input = input; self.hidden = hidden
        weightIH = layout.offset("rnn.weight_ih_l\(layer)")
        weightHH = layout.offset("rnn.weight_hh_l\(layer)")
        biasIH = layout.offset("rnn.bias_ih_l\(layer)")
        biasHH = layout.offset("rnn.bias_hh_l\(layer)")
    }

    /// Runs T steps from (h0, c0) over `x` (T*B, input). The output is ws.h rows 1...T.
    public func forward(params p: UnsafePointer<Float>, x: UnsafePointer<Float>, steps T: Int, batch B: Int,
                        h0: UnsafePointer<Float>, c0: UnsafePointer<Float>?, ws: LayerWorkspace) {
        // Forward only: the forward strips, or W_hh's pieces (no backward, so no W_hh^T).
        let layout: HiddenWeight.Layout = HiddenWeight.Layout.fastest(batch: B, gateRows: cell.gates * hidden) == .strips
            ? .strips : .direct
        let strips = FloatBuffer(count: layout == .strips ? StripProduct.size(k: hidden, n: cell.gates * hidden) : 0)
        if layout == .strips { packHidden(params: p, into: strips.pointer, part: 0, of: 1, backward: false) }
        projectInput(params: p, x: x, rows: T * B, into: ws.gates.pointer)
        recur(params: p, whh: hiddenWeight(params: p, transposed: nil, strips: UnsafePointer(strips.pointer), layout: layout),
              steps: T, batch: B, h0: h0, c0: c0, ws: ws)
    }

    /// W_hh for the steps' products, read as `layout` says; `transposed` is W_hh^T made by `transposeHidden`, and
    /// `strips` W_hh's strips made by `packHidden`, when the layout reads them.
    public func hiddenWeight(params p: UnsafePointer<Float>, transposed: UnsafePointer<Float>?,
                             strips: UnsafePointer<Float>? = nil, layout: HiddenWeight.Layout) -> HiddenWeight {
        HiddenWeight(whh: p + weightHH, whhT: layout.transposes ? transposed : nil, strips: layout == .strips ? strips : nil,
                     layout: layout, hidden: hidden, gateRows: cell.gates * hidden)
    }

    /// Share `part` of `parts` of W_hh's strips (`HiddenWeight.packStrips`): once per window, for layouts that read
    /// them.
    public func packHidden(params p: UnsafePointer<Float>, into strips: UnsafeMutablePointer<Float>, part: Int, of parts: Int,
                           backward: Bool) {
        HiddenWeight.packStrips(whh: p + weightHH, hidden: hidden, gateRows: cell.gates * hidden, into: strips,
                                part: part, of: parts, backward: backward)
    }

    /// Gate rows `gateRows` of W_hh, transposed into `whhT` (H, G*H): once per window, for backward pieces
    /// (`HiddenWeight`). The transposition costs 0.4 ms a window.
    public func transposeHidden(params p: UnsafePointer<Float>, into whhT: UnsafeMutablePointer<Float>, gateRows g: Range<Int>) {
        BLAS.transpose(rows: g.count, cols: hidden, a: p + weightHH + g.lowerBound * hidden, lda: hidden,
                       b: whhT + g.lowerBound, ldb: cell.gates * hidden)
    }

    /// gates (rows, G*H) = x W_ih^T + b_ih (+ b_hh when the cell folds it): the input side of every step in one GEMM.
    public func projectInput(params p: UnsafePointer<Float>, x: UnsafePointer<Float>, rows: Int,
                             into gates: UnsafeMutablePointer<Float>) {
        let GH = cell.gates * hidden
        BLAS.gemm(transB: true, m: rows, n: GH, k: input, a: x, lda: input, b: p + weightIH, ldb: input,
                  beta: 0, c: gates, ldc: GH)
        Kernels.addRowVector(gates, rows: rows, n: GH, p + biasIH)
        if cell.foldsHiddenBias { Kernels.addRowVector(gates, rows: rows, n: GH, p + biasHH) }
    }

    /// The time loop, with ws.gates already holding the input projection of every step and `whh` this window's
    /// W_hh as the steps read it (`hiddenWeight`). Threads may share it: every one of `parts` calls it with its `part` and the same
    /// arguments, and each step's product is split by gate columns and the rest by batch columns, the threads meeting
    /// at `barrier` in between (so that each reads only its share of W_hh for the product: docs/scaling.md).
    public func recur(params p: UnsafePointer<Float>, whh: HiddenWeight, steps T: Int, batch B: Int,
                      h0: UnsafePointer<Float>, c0: UnsafePointer<Float>?, ws: LayerWorkspace,
                      part: Int = 0, of parts: Int = 1, barrier: () -> Void = {}) {
        recur(cell, params: p, whh: whh, steps: T, batch: B, h0: h0, c0: c0, ws: ws, part: part, of: parts,
              barrier: barrier)
    }

    /// Generic over the cell so that the loop calls the concrete cell (the existential is opened by the caller).
    private func recur<Cell: RecurrentCell>(_ cell: Cell, params p: UnsafePointer<Float>, whh: HiddenWeight,
                                            steps T: Int, batch B: Int, h0: UnsafePointer<Float>, c0: UnsafePointer<Float>?,
                                            ws: LayerWorkspace, part: Int, of parts: Int, barrier: () -> Void) {
        let columns = Range(part: part, of: parts, in: B)
        let gates = Range(part: part, of: parts, in: cell.gates * hidden, multipleOf: whh.layout == .strips ? StripProduct.width : 1)
        let first = columns.lowerBound * hidden
        (ws.h.pointer + first).update(from: h0 + first, count: columns.count * hidden)
        if cell.hasCellState, let c0 { (ws.c.pointer + first).update(from: c0 + first, count: columns.count * hidden) }
        barrier()
        for t in 0..<T {
            cell.project(ws: ws, step: t, whh: whh, bhh: p + biasHH, batch: B, hidden: hidden, gates: gates)
            barrier()
            cell.activate(ws: ws, step: t, batch: B, hidden: hidden, columns: columns)
            barrier()
        }
    }

    /// Backward over the window, accumulating into `grads`. `dOut` (T*B, H) is the gradient of the loss with respect
    /// to the layer's outputs; the state gradient starts at zero (truncated BPTT). Afterwards ws.dInput holds the
    /// input gradient (when `inputGradient`) and ws.dhNext / ws.dcNext the gradient of the initial state.
    /// `hiddenGradNorms`, if given, receives |dL/dh_t| for t = 0..<T (the chapter's vanishing-gradient lesson).
    /// With `x` nil the input-side weight gradient and input gradient are left to the caller (ws.dGatesInput).
    public func backward(params p: UnsafePointer<Float>, grads gp: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>?,
                  dOut: UnsafePointer<Float>, steps T: Int, batch B: Int, ws: LayerWorkspace, inputGradient: Bool,
                  hiddenGradNorms: UnsafeMutablePointer<Double>? = nil) {
        let whh = hiddenWeight(params: p, transposed: nil, layout: .direct)
        backwardThroughTime(params: p, whh: whh, x: x, dOut: dOut, steps: T, batch: B, ws: ws,
                            inputGradient: inputGradient, hiddenGradNorms: hiddenGradNorms)
        addParameterGradients(grads: gp, from: [(ws, T * B, x)], gateRows: 0..<(cell.gates * hidden))
    }

    /// Backward without the parameter gradients: the gate gradients of every step stay in ws.dGatesInput (and
    /// ws.dGatesHidden) for `addParameterGradients`. Threads may share it as they share `recur`: each step's
    /// elementwise part by batch columns, its product by hidden units or by batch columns (`HiddenWeight.Layout`),
    /// and the input gradient by rows. The vanishing-gradient lesson's `hiddenGradNorms` wants one thread. `whh` is
    /// W_hh as the steps read it (`hiddenWeight`).
    public func backwardThroughTime(params p: UnsafePointer<Float>, whh: HiddenWeight, x: UnsafePointer<Float>?,
                                    dOut: UnsafePointer<Float>,
                                    steps T: Int, batch B: Int, ws: LayerWorkspace, inputGradient: Bool,
                                    hiddenGradNorms: UnsafeMutablePointer<Double>? = nil,
                                    part: Int = 0, of parts: Int = 1, barrier: () -> Void = {}) {
        precondition(hiddenGradNorms == nil || parts == 1, "the hidden-gradient norms are one thread's")
        backwardThroughTime(cell, params: p, whh: whh, x: x, dOut: dOut, steps: T, batch: B, ws: ws,
                            inputGradient: inputGradient, hiddenGradNorms: hiddenGradNorms, part: part, of: parts,
                            barrier: barrier)
    }

    private func backwardThroughTime<Cell: RecurrentCell>(_ cell: Cell, params p: UnsafePointer<Float>,
                                                          whh: HiddenWeight, x: UnsafePointer<Float>?, dOut: UnsafePointer<Float>,
                                                          steps T: Int, batch B: Int, ws: LayerWorkspace,
                                                          inputGradient: Bool,
                                                          hiddenGradNorms: UnsafeMutablePointer<Double>?,
                                                          part: Int, of parts: Int, barrier: () -> Void) {
        let columns = Range(part: part, of: parts, in: B)
        let units = Range(part: part, of: parts, in: hidden, multipleOf: whh.layout == .strips ? StripProduct.width : 1)
        let first = columns.lowerBound * hidden
        (ws.dhNext.pointer + first).update(repeating: 0, count: columns.count * hidden)
        if cell.hasCellState { (ws.dcNext.pointer + first).update(repeating: 0, count: columns.count * hidden) }
        // With backward pieces (few columns a thread: `HiddenWeight.Layout`) each thread's product is its own
        // columns' and needs no other thread's gate gradients; otherwise each thread takes hidden units of all
        // columns, between two barriers.
        let byColumns = whh.layout == .backwardPieces
        for t in stride(from: T - 1, through: 0, by: -1) {
            let norm2 = cell.backwardColumns(ws: ws, step: t, dOut: dOut, batch: B, hidden: hidden, columns: columns)
            hiddenGradNorms?[t] = Double(norm2).squareRoot()
            if byColumns {
                cell.backwardProject(ws: ws, step: t, whh: whh, batch: B, hidden: hidden, columns: columns,
                                     units: 0..<hidden)
            } else {
                barrier()
                cell.backwardProject(ws: ws, step: t, whh: whh, batch: B, hidden: hidden, columns: 0..<B, units: units)
                barrier()
            }
        }
        if byColumns { barrier() }
        guard x != nil, inputGradient else { return }
        let GH = cell.gates * hidden, rows = Range(part: part, of: parts, in: T * B)
        BLAS.gemm(m: rows.count, n: input, k: GH, a: ws.dGatesInput.pointer + rows.lowerBound * GH, lda: GH,
                  b: p + weightIH, ldb: input, beta: 0, c: ws.dInput.pointer + rows.lowerBound * input, ldc: input)
    }

    /// The weight and bias gradients of gate rows `gateRows` (of G*H), summed over windows that
    /// `backwardThroughTime` left in workspaces, each with its row count (T*B) and input x (nil: the caller handles
    /// the input side, as Model does for layer 0 through its embedding table): dW_hh += dG_h^T h_{t-1},
    /// dW_ih += dG_x^T x, b_ih and b_hh += column sums of dG_x and dG_h. Disjoint gate rows may run on different
    /// threads at once.
    public func addParameterGradients(grads gp: UnsafeMutablePointer<Float>,
                                      from windows: [(ws: LayerWorkspace, rows: Int, x: UnsafePointer<Float>?)],
                                      gateRows g: Range<Int>) {
        let H = hidden, GH = cell.gates * hidden, n = g.count
        guard n > 0 else { return }
        for (ws, rows, x) in windows where rows > 0 {
            let dGx = ws.dGatesInput.pointer + g.lowerBound
            // With b_hh folded, the hidden side's pre-activation gradient is the input side's.
            let dGh = (cell.foldsHiddenBias ? ws.dGatesInput.pointer : ws.dGatesHidden.pointer) + g.lowerBound
            BLAS.gemm(transA: true, m: n, n: H, k: rows, a: dGh, lda: GH, b: ws.h.pointer, ldb: H, beta: 1,
                      c: gp + weightHH + g.lowerBound * H, ldc: H)
            Kernels.addColumnSums(dGx, rows: rows, n: n, stride: GH, into: gp + biasIH + g.lowerBound)
            Kernels.addColumnSums(dGh, rows: rows, n: n, stride: GH, into: gp + biasHH + g.lowerBound)
            if let x {
                BLAS.gemm(transA: true, m: n, n: input, k: rows, a: dGx, lda: GH, b: x, ldb: input, beta: 1,
                          c: gp + weightIH + g.lowerBound * input, ldc: input)
            }
        }
    }
}
