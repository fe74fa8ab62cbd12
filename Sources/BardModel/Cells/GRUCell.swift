import BardNumerics

/// GRU, PyTorch's equations; gate blocks r, z, n (gates (B, 3H)), with hp = h_{t-1} W_hh^T + b_hh:
/// r = σ(x_r + hp_r), z = σ(x_z + hp_z), n = tanh(x_n + r hp_n), h_t = (1 - z) n + z h_{t-1}.
/// r multiplies hp_n, b_hh included, so b_hh cannot fold into the input projection and hp is kept per step.
public struct GRUCell: RecurrentCell {
    public init() {}
    public var gates: Int { 3 }
    public var hasCellState: Bool { false }
    public var foldsHiddenBias: Bool { false }

    public func project(ws: LayerWorkspace, step t: Int, whh: HiddenWeight, bhh: UnsafePointer<Float>,
                        batch B: Int, hidden H: Int, gates r: Range<Int>) {
        let GH = 3 * H, hPrev = ws.h.pointer + t * B * H, hp = ws.hiddenProjection.pointer + t * B * GH
        for b in 0..<B { (hp + b * GH + r.lowerBound).update(from: bhh + r.lowerBound, count: r.count) }
        whh.project(hPrev, rows: B, gates: r, into: hp, ldc: GH)
    }

    public func activate(ws: LayerWorkspace, step t: Int, batch B: Int, hidden H: Int, columns: Range<Int>) {
        let GH = 3 * H
        let hPrev = ws.h.pointer + t * B * H, hNew = hPrev + B * H, g = ws.gates.pointer + t * B * GH
        let hp = ws.hiddenProjection.pointer + t * B * GH
        for b in columns {
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

    /// dn = dh (1 - z)(1 - n²), dz = dh (h_{t-1} - n) σ', dr = dn hp_n σ'. The input side gets (dr, dz, dn), the
    /// hidden side (dr, dz, dn r); dh_{t-1} = dh z + dG_h W_hh (dh z here, the product in `backwardProject`).
    public func backwardColumns(ws: LayerWorkspace, step t: Int, dOut: UnsafePointer<Float>, batch B: Int, hidden H: Int,
                                columns: Range<Int>) -> Float {
        let GH = 3 * H
        let g = ws.gates.pointer + t * B * GH, dg = ws.dGatesInput.pointer + t * B * GH, dOutT = dOut + t * B * H
        let hp = ws.hiddenProjection.pointer + t * B * GH, dgh = ws.dGatesHidden.pointer + t * B * GH
        let hPrev = ws.h.pointer + t * B * H, dhNext = ws.dhNext.pointer
        var norm2: Float = 0
        for b in columns {
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
        return norm2
    }

    public func backwardProject(ws: LayerWorkspace, step t: Int, whh: HiddenWeight, batch B: Int, hidden H: Int,
                                columns c: Range<Int>, units u: Range<Int>) {
        let GH = 3 * H, dgh = ws.dGatesHidden.pointer + (t * B + c.lowerBound) * GH
        whh.projectBack(dgh, rows: c.count, units: u, into: ws.dhNext.pointer + c.lowerBound * H, beta: 1)
    }

    public func generate(h: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>, gates g: UnsafeMutablePointer<Float>,
                         scratch hp: UnsafeMutablePointer<Float>, whh: UnsafePointer<Float>, bhh: UnsafePointer<Float>,
                         hidden H: Int) {
        hp.update(from: bhh, count: 3 * H)
        BLAS.gemv(m: 3 * H, n: H, a: whh, lda: H, x: h, beta: 1, y: hp)
        for j in 0..<H {
            let r = Kernels.sigmoid(g[j] + hp[j]), z = Kernels.sigmoid(g[H + j] + hp[H + j])
            let n = Kernels.tanh(g[2 * H + j] + r * hp[2 * H + j])
            h[j] = (1 - z) * n + z * h[j]
        }
    }
}
