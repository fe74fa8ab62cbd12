import BardNumerics

/// Buffers of one recurrent layer for a window of up to `steps` x `batch` (time-major rows: row = t * batch + b).
public final class LayerWorkspace {
    /// (T*B, G*H): the input projection plus biases, overwritten step by step with the gate activations.
    public let gates: FloatBuffer
    /// GRU only, (T*B, 3H): h_{t-1} W_hh^T + b_hh, kept because n needs r * (its n block).
    public let hiddenProjection: FloatBuffer
    /// ((T+1)*B, H): h[0] is the initial state; rows 1...T are the layer's output.
    public let h: FloatBuffer
    /// LSTM only, ((T+1)*B, H) and (T*B, H).
    public let c: FloatBuffer
    public let tanhC: FloatBuffer
    /// (T*B, G*H): gradient of the gate pre-activations on the input side; GRU also keeps the hidden side apart.
    public let dGatesInput: FloatBuffer
    public let dGatesHidden: FloatBuffer
    /// (B, H): gradient flowing into h_{t-1} and c_{t-1}; after backward, the gradient of the initial state.
    public let dhNext: FloatBuffer
    public let dcNext: FloatBuffer
    /// (T*B, input): gradient of the layer's input.
    public let dInput: FloatBuffer

    public init(cell: CellKind, input: Int, hidden: Int, steps: Int, batch: Int) {
        let gh = cell.gates * hidden, rows = steps * batch
        gates = FloatBuffer(count: rows * gh)
        hiddenProjection = FloatBuffer(count: cell == .gru ? rows * gh : 0)
        h = FloatBuffer(count: (steps + 1) * batch * hidden)
        c = FloatBuffer(count: cell == .lstm ? (steps + 1) * batch * hidden : 0)
        tanhC = FloatBuffer(count: cell == .lstm ? rows * hidden : 0)
        dGatesInput = FloatBuffer(count: rows * gh)
        dGatesHidden = FloatBuffer(count: cell == .gru ? rows * gh : 0)
        dhNext = FloatBuffer(count: batch * hidden)
        dcNext = FloatBuffer(count: cell == .lstm ? batch * hidden : 0)
        dInput = FloatBuffer(count: rows * input)
    }
}

/// One recurrent layer with PyTorch's equations and weight layout:
/// weight_ih (G*H, input), weight_hh (G*H, H), bias_ih and bias_hh (G*H); gate order LSTM i,f,g,o; GRU r,z,n.
///
/// Fused: the input projection of a whole window is one GEMM, each step's recurrent projection (all gates) is one GEMM,
/// and the weight gradients of the window are two GEMMs over all T*B rows.
public struct RecurrentLayer {
    public let cell: CellKind
    public let activation: Activation
    public let input: Int
    public let hidden: Int
    public let weightIH: Int, weightHH: Int, biasIH: Int, biasHH: Int

    public init(cell: CellKind, activation: Activation, input: Int, hidden: Int, layer: Int, layout: ParameterLayout) {
        self.cell = cell; self.activation = activation; self.input = input; self.hidden = hidden
        weightIH = layout.offset("rnn.weight_ih_l\(layer)")
        weightHH = layout.offset("rnn.weight_hh_l\(layer)")
        biasIH = layout.offset("rnn.bias_ih_l\(layer)")
        biasHH = layout.offset("rnn.bias_hh_l\(layer)")
    }

    /// Runs T steps from (h0, c0) over `x` (T*B, input). The output is ws.h rows 1...T.
    public func forward(params p: UnsafePointer<Float>, x: UnsafePointer<Float>, steps T: Int, batch B: Int,
                        h0: UnsafePointer<Float>, c0: UnsafePointer<Float>?, ws: LayerWorkspace) {
        projectInput(params: p, x: x, rows: T * B, into: ws.gates.pointer)
        recur(params: p, steps: T, batch: B, h0: h0, c0: c0, ws: ws)
    }

    /// gates (rows, G*H) = x W_ih^T + b_ih (+ b_hh for LSTM and RNN): the input side of every step in one GEMM.
    public func projectInput(params p: UnsafePointer<Float>, x: UnsafePointer<Float>, rows: Int,
                             into gates: UnsafeMutablePointer<Float>) {
        let GH = cell.gates * hidden
        BLAS.gemm(transB: true, m: rows, n: GH, k: input, a: x, lda: input, b: p + weightIH, ldb: input,
                  beta: 0, c: gates, ldc: GH)
        Kernels.addRowVector(gates, rows: rows, n: GH, p + biasIH)
        // LSTM and RNN add b_hh outside the nonlinearity, so it folds into the input projection; GRU's cannot.
        if cell != .gru { Kernels.addRowVector(gates, rows: rows, n: GH, p + biasHH) }
    }

    /// The time loop, with ws.gates already holding the input projection of every step.
    public func recur(params p: UnsafePointer<Float>, steps T: Int, batch B: Int,
                      h0: UnsafePointer<Float>, c0: UnsafePointer<Float>?, ws: LayerWorkspace) {
        let H = hidden, GH = cell.gates * hidden
        let gates = ws.gates.pointer, h = ws.h.pointer
        h.update(from: h0, count: B * H)
        if cell == .lstm, let c0 { ws.c.pointer.update(from: c0, count: B * H) }
        let whh = p + weightHH

        for t in 0..<T {
            let hPrev = h + t * B * H, hNew = h + (t + 1) * B * H, g = gates + t * B * GH
            switch cell {
            case .lstm:
                BLAS.gemm(transB: true, m: B, n: GH, k: H, a: hPrev, lda: H, b: whh, ldb: H, beta: 1, c: g, ldc: GH)
                let cPrev = ws.c.pointer + t * B * H, cNew = cPrev + B * H, tc = ws.tanhC.pointer + t * B * H
                for b in 0..<B {
                    let o = b * H
                    RecurrentLayer.lstmCell(gates: g + b * GH, cPrev: cPrev + o, c: cNew + o, tanhC: tc + o, h: hNew + o, hidden: H)
                }
            case .rnn:
                BLAS.gemm(transB: true, m: B, n: GH, k: H, a: hPrev, lda: H, b: whh, ldb: H, beta: 1, c: g, ldc: GH)
                if activation == .tanh {
                    for k in 0..<(B * H) { let a = Kernels.tanh(g[k]); g[k] = a; hNew[k] = a }
                } else {
                    for k in 0..<(B * H) { let a = Kernels.sigmoid(g[k]); g[k] = a; hNew[k] = a }
                }
            case .gru:
                let hp = ws.hiddenProjection.pointer + t * B * GH
                for b in 0..<B { (hp + b * GH).update(from: p + biasHH, count: GH) }
                BLAS.gemm(transB: true, m: B, n: GH, k: H, a: hPrev, lda: H, b: whh, ldb: H, beta: 1, c: hp, ldc: GH)
                for b in 0..<B {
                    let gr = g + b * GH, hr = hp + b * GH, o = b * H
                    for j in 0..<H {
                        let r = Kernels.sigmoid(gr[j] + hr[j])
                        let z = Kernels.sigmoid(gr[H + j] + hr[H + j])
                        let n = Kernels.tanh(gr[2 * H + j] + r * hr[2 * H + j])
                        gr[j] = r; gr[H + j] = z; gr[2 * H + j] = n
                        hNew[o + j] = (1 - z) * n + z * hPrev[o + j]
                    }
                }
            }
        }
    }

    /// One column's LSTM cell: the gate pre-activations (i, f, g, o blocks of `hidden`) become activations in place,
    /// then c = f c_prev + i g, tanh(c) and h = o tanh(c). Gate by gate over contiguous blocks (i and f are adjacent),
    /// so that every loop vectorises. `c` may be `cPrev`, and `tanhC` may be `h` (the generator keeps neither).
    @inline(__always)
    static func lstmCell(gates gr: UnsafeMutablePointer<Float>, cPrev: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>,
                         tanhC: UnsafeMutablePointer<Float>, h: UnsafeMutablePointer<Float>, hidden H: Int) {
        Kernels.sigmoidInPlace(gr, count: 2 * H)
        Kernels.tanh(gr + 2 * H, into: gr + 2 * H, count: H)
        Kernels.sigmoidInPlace(gr + 3 * H, count: H)
        let i = gr, f = gr + H, g = gr + 2 * H, o = gr + 3 * H
        for j in 0..<H { c[j] = f[j] * cPrev[j] + i[j] * g[j] }
        Kernels.tanh(c, into: tanhC, count: H)
        for j in 0..<H { h[j] = o[j] * tanhC[j] }
    }

    /// Backward over the window, accumulating into `grads`. `dOut` (T*B, H) is the gradient of the loss with respect
    /// to the layer's outputs; the state gradient starts at zero (truncated BPTT). Afterwards ws.dInput holds the
    /// input gradient (when `inputGradient`) and ws.dhNext / ws.dcNext the gradient of the initial state.
    /// `hiddenGradNorms`, if given, receives |dL/dh_t| for t = 0..<T (the chapter's vanishing-gradient lesson).
    /// With `x` nil the input-side weight gradient and input gradient are left to the caller (ws.dGatesInput).
    public func backward(params p: UnsafePointer<Float>, grads gp: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>?,
                  dOut: UnsafePointer<Float>, steps T: Int, batch B: Int, ws: LayerWorkspace, inputGradient: Bool,
                  hiddenGradNorms: UnsafeMutablePointer<Double>? = nil) {
        let H = hidden, GH = cell.gates * hidden, rows = T * B
        let gates = ws.gates.pointer, h = ws.h.pointer, whh = p + weightHH
        let dGx = ws.dGatesInput.pointer
        let dGh = cell == .gru ? ws.dGatesHidden.pointer : dGx
        let dhNext = ws.dhNext.pointer
        ws.dhNext.zero()
        if cell == .lstm { ws.dcNext.zero() }

        for t in stride(from: T - 1, through: 0, by: -1) {
            let g = gates + t * B * GH, dg = dGx + t * B * GH, dOutT = dOut + t * B * H
            var norm2: Float = 0
            switch cell {
            case .lstm:
                let cPrev = ws.c.pointer + t * B * H, tc = ws.tanhC.pointer + t * B * H, dcNext = ws.dcNext.pointer
                for b in 0..<B {
                    let gr = g + b * GH, dr = dg + b * GH, o = b * H
                    for j in 0..<H {
                        let k = o + j
                        let dh = dOutT[k] + dhNext[k]
                        norm2 += dh * dh
                        let i = gr[j], f = gr[H + j], gg = gr[2 * H + j], og = gr[3 * H + j], tcv = tc[k]
                        let dc = dcNext[k] + dh * og * (1 - tcv * tcv)
                        dr[j] = dc * gg * i * (1 - i)
                        dr[H + j] = dc * cPrev[k] * f * (1 - f)
                        dr[2 * H + j] = dc * i * (1 - gg * gg)
                        dr[3 * H + j] = dh * tcv * og * (1 - og)
                        dcNext[k] = dc * f
                    }
                }
                BLAS.gemm(m: B, n: H, k: GH, a: dg, lda: GH, b: whh, ldb: H, beta: 0, c: dhNext, ldc: H)
            case .rnn:
                for k in 0..<(B * H) {
                    let dh = dOutT[k] + dhNext[k]
                    norm2 += dh * dh
                    let a = g[k]
                    dg[k] = dh * (activation == .tanh ? 1 - a * a : a * (1 - a))
                }
                BLAS.gemm(m: B, n: H, k: GH, a: dg, lda: GH, b: whh, ldb: H, beta: 0, c: dhNext, ldc: H)
            case .gru:
                let hp = ws.hiddenProjection.pointer + t * B * GH, dgh = dGh + t * B * GH, hPrev = h + t * B * H
                for b in 0..<B {
                    let gr = g + b * GH, hr = hp + b * GH, dr = dg + b * GH, dhr = dgh + b * GH, o = b * H
                    for j in 0..<H {
                        let k = o + j
                        let dh = dOutT[k] + dhNext[k]
                        norm2 += dh * dh
                        let r = gr[j], z = gr[H + j], n = gr[2 * H + j]
                        let dnPre = dh * (1 - z) * (1 - n * n)
                        let dzPre = dh * (hPrev[k] - n) * z * (1 - z)
                        let drPre = dnPre * hr[2 * H + j] * r * (1 - r)
                        dr[j] = drPre; dr[H + j] = dzPre; dr[2 * H + j] = dnPre
                        dhr[j] = drPre; dhr[H + j] = dzPre; dhr[2 * H + j] = dnPre * r
                        dhNext[k] = dh * z
                    }
                }
                BLAS.gemm(m: B, n: H, k: GH, a: dgh, lda: GH, b: whh, ldb: H, beta: 1, c: dhNext, ldc: H)
            }
            hiddenGradNorms?[t] = Double(norm2).squareRoot()
        }
        // Weight gradients of the whole window: dW_hh += dG_h^T h_{t-1}, dW_ih += dG_x^T x.
        BLAS.gemm(transA: true, m: GH, n: H, k: rows, a: dGh, lda: GH, b: h, ldb: H, beta: 1, c: gp + weightHH, ldc: H)
        Kernels.addColumnSums(dGx, rows: rows, n: GH, into: gp + biasIH)
        Kernels.addColumnSums(dGh, rows: rows, n: GH, into: gp + biasHH)
        guard let x else { return }  // the caller handles the input side (Model's embedding table)
        BLAS.gemm(transA: true, m: GH, n: input, k: rows, a: dGx, lda: GH, b: x, ldb: input,
                  beta: 1, c: gp + weightIH, ldc: input)
        if inputGradient {
            BLAS.gemm(m: rows, n: input, k: GH, a: dGx, lda: GH, b: p + weightIH, ldb: input,
                      beta: 0, c: ws.dInput.pointer, ldc: input)
        }
    }
}
