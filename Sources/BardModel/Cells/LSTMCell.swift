import BardNumerics

/// LSTM, PyTorch's equations; gate blocks i, f, g, o (gates (B, 4H)):
/// i = σ(·), f = σ(·), g = tanh(·), o = σ(·); c_t = f c_{t-1} + i g; h_t = o tanh(c_t).
/// Both biases sit outside the nonlinearities, so b_hh folds into the input projection.
public struct LSTMCell: RecurrentCell {
    public init() {}
    public var gates: Int { 4 }
    public var hasCellState: Bool { true }
    public var foldsHiddenBias: Bool { true }

    public func project(ws: LayerWorkspace, step t: Int, whh: HiddenWeight, bhh: UnsafePointer<Float>,
                        batch B: Int, hidden H: Int, gates r: Range<Int>) {
        let GH = 4 * H, hPrev = ws.h.pointer + t * B * H, g = ws.gates.pointer + t * B * GH
        whh.project(hPrev, rows: B, gates: r, into: g, ldc: GH)
    }

    public func activate(ws: LayerWorkspace, step t: Int, batch B: Int, hidden H: Int, columns: Range<Int>) {
        let GH = 4 * H
        let hNew = ws.h.pointer + (t + 1) * B * H, g = ws.gates.pointer + t * B * GH
        let cPrev = ws.c.pointer + t * B * H, cNew = cPrev + B * H, tc = ws.tanhC.pointer + t * B * H
        for b in columns {
            let o = b * H
            Self.column(gates: g + b * GH, cPrev: cPrev + o, c: cNew + o, tanhC: tc + o, h: hNew + o, hidden: H)
        }
    }

    /// dc = dc_next + dh o (1 - tanh²c); the pre-activation gradients are dc g σ', dc c_{t-1} σ', dc i (1 - g²),
    /// dh tanh(c) σ'; dc_{t-1} = dc f; dh_{t-1} = dG W_hh (the input and hidden sides share dG).
    public func backwardColumns(ws: LayerWorkspace, step t: Int, dOut: UnsafePointer<Float>, batch B: Int, hidden H: Int,
                                columns: Range<Int>) -> Float {
        let GH = 4 * H
        let g = ws.gates.pointer + t * B * GH, dg = ws.dGatesInput.pointer + t * B * GH, dOutT = dOut + t * B * H
        let cPrev = ws.c.pointer + t * B * H, tc = ws.tanhC.pointer + t * B * H
        let dhNext = ws.dhNext.pointer, dcNext = ws.dcNext.pointer
        var norm2: Float = 0
        for b in columns {
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
        return norm2
    }

    public func backwardProject(ws: LayerWorkspace, step t: Int, whh: HiddenWeight, batch B: Int, hidden H: Int,
                                columns c: Range<Int>, units u: Range<Int>) {
        let GH = 4 * H, dg = ws.dGatesInput.pointer + (t * B + c.lowerBound) * GH
        whh.projectBack(dg, rows: c.count, units: u, into: ws.dhNext.pointer + c.lowerBound * H, beta: 0)
    }

    public func generate(h: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>, gates g: UnsafeMutablePointer<Float>,
                         scratch: UnsafeMutablePointer<Float>, whh: UnsafePointer<Float>, bhh: UnsafePointer<Float>,
                         hidden H: Int) {
        BLAS.gemv(m: 4 * H, n: H, a: whh, lda: H, x: h, beta: 1, y: g)
        Self.column(gates: g, cPrev: c, c: c, tanhC: h, h: h, hidden: H)
    }

    /// One column's cell: the gate pre-activations (i, f, g, o blocks of `hidden`) become activations in place,
    /// then c = f c_prev + i g, tanh(c) and h = o tanh(c). Gate by gate over contiguous blocks (i and f are adjacent),
    /// so that every loop vectorises. `c` may be `cPrev`, and `tanhC` may be `h` (the generator keeps neither).
    @inline(__always)
    static func column(gates gr: UnsafeMutablePointer<Float>, cPrev: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>,
                       tanhC: UnsafeMutablePointer<Float>, h: UnsafeMutablePointer<Float>, hidden H: Int) {
        Kernels.sigmoidInPlace(gr, count: 2 * H)
        Kernels.tanh(gr + 2 * H, into: gr + 2 * H, count: H)
        Kernels.sigmoidInPlace(gr + 3 * H, count: H)
        let i = gr, f = gr + H, g = gr + 2 * H, o = gr + 3 * H
        for j in 0..<H { c[j] = f[j] * cPrev[j] + i[j] * g[j] }
        Kernels.tanh(c, into: tanhC, count: H)
        for j in 0..<H { h[j] = o[j] * tanhC[j] }
    }
}
