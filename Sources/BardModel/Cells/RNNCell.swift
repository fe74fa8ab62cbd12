import BardNumerics

/// Elman RNN, PyTorch's equations (gates (B, H), one block): h_t = act(x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),
/// act tanh or sigmoid. b_hh is outside the nonlinearity, so it folds into the input projection.
public struct RNNCell: RecurrentCell {
    public let activation: Activation
    public init(activation: Activation) { self.activation = activation }
    public var gates: Int { 1 }
    public var hasCellState: Bool { false }
    public var foldsHiddenBias: Bool { true }
    public var usesActivation: Bool { true }

    public func project(ws: LayerWorkspace, step t: Int, whh: HiddenWeight, bhh: UnsafePointer<Float>,
                        batch B: Int, hidden H: Int, gates r: Range<Int>) {
        let hPrev = ws.h.pointer + t * B * H, g = ws.gates.pointer + t * B * H
        whh.project(hPrev, rows: B, gates: r, into: g, ldc: H)
    }

    public func activate(ws: LayerWorkspace, step t: Int, batch B: Int, hidden H: Int, columns: Range<Int>) {
        let g = ws.gates.pointer + t * B * H, hNew = ws.h.pointer + (t + 1) * B * H
        let k = (columns.lowerBound * H)..<(columns.upperBound * H)
        if activation == .tanh {
            for k in k { let a = Kernels.tanh(g[k]); g[k] = a; hNew[k] = a }
        } else {
            for k in k { let a = Kernels.sigmoid(g[k]); g[k] = a; hNew[k] = a }
        }
    }

    /// The derivative from the activation a itself: tanh' = 1 - a², σ' = a (1 - a); dh_{t-1} = dG W_hh.
    public func backwardColumns(ws: LayerWorkspace, step t: Int, dOut: UnsafePointer<Float>, batch B: Int, hidden H: Int,
                                columns: Range<Int>) -> Float {
        let g = ws.gates.pointer + t * B * H, dg = ws.dGatesInput.pointer + t * B * H, dOutT = dOut + t * B * H
        let dhNext = ws.dhNext.pointer
        var norm2: Float = 0
        for k in (columns.lowerBound * H)..<(columns.upperBound * H) {
            let dh = dOutT[k] + dhNext[k]
            norm2 += dh * dh
            let a = g[k]
            dg[k] = dh * (activation == .tanh ? 1 - a * a : a * (1 - a))
        }
        return norm2
    }

    public func backwardProject(ws: LayerWorkspace, step t: Int, whh: HiddenWeight, batch B: Int, hidden H: Int,
                                columns c: Range<Int>, units u: Range<Int>) {
        let dg = ws.dGatesInput.pointer + (t * B + c.lowerBound) * H
        whh.projectBack(dg, rows: c.count, units: u, into: ws.dhNext.pointer + c.lowerBound * H, beta: 0)
    }

    public func generate(h: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>, gates g: UnsafeMutablePointer<Float>,
                         scratch: UnsafeMutablePointer<Float>, whh: UnsafePointer<Float>, bhh: UnsafePointer<Float>,
                         hidden H: Int) {
        BLAS.gemv(m: H, n: H, a: whh, lda: H, x: h, beta: 1, y: g)
        for j in 0..<H { h[j] = activation == .tanh ? Kernels.tanh(g[j]) : Kernels.sigmoid(g[j]) }
    }
}
