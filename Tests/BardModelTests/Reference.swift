import BardModel
import BardNumerics
import Foundation

/// A deliberately naive, per-step, Double-precision twin of Bard's model, written from PyTorch's equations and
/// sharing no code with the fused Float path: the reference for forward results and for finite differences.
struct ReferenceModel {
    let config: Config
    let layout: ParameterLayout
    let vocab: Int

    init(config: Config, vocab: Int) {
        self.config = config; self.vocab = vocab
        layout = ParameterLayout(config: config, vocabularySize: vocab)
    }

    func tensor(_ p: [Double], _ name: String) -> ArraySlice<Double> {
        guard let s = layout[name] else { fatalError("no \(name)") }
        return p[s.offset..<(s.offset + s.count)]
    }

    static func sigmoid(_ x: Double) -> Double { 1 / (1 + exp(-x)) }

    /// y = W x + b for a row-major (rows x cols) slice W.
    static func affine(_ w: ArraySlice<Double>, rows: Int, cols: Int, _ x: [Double], _ b: ArraySlice<Double>?) -> [Double] {
        let w0 = w.startIndex
        return (0..<rows).map { r in
            var s = b.map { $0[$0.startIndex + r] } ?? 0
            for k in 0..<cols { s += w[w0 + r * cols + k] * x[k] }
            return s
        }
    }

    /// One step of one layer: returns (h', c').
    func cellStep(_ p: [Double], layer l: Int, x: [Double], h: [Double], c: [Double]) -> ([Double], [Double]) {
        let H = config.hidden, G = config.cell.gates, inDim = x.count
        let gx = Self.affine(tensor(p, "rnn.weight_ih_l\(l)"), rows: G * H, cols: inDim, x, tensor(p, "rnn.bias_ih_l\(l)"))
        let gh = Self.affine(tensor(p, "rnn.weight_hh_l\(l)"), rows: G * H, cols: H, h, tensor(p, "rnn.bias_hh_l\(l)"))
        switch config.cell {
        case .lstm:
            var hn = [Double](repeating: 0, count: H), cn = hn
            for j in 0..<H {
                let i = Self.sigmoid(gx[j] + gh[j]), f = Self.sigmoid(gx[H + j] + gh[H + j])
                let g = tanh(gx[2 * H + j] + gh[2 * H + j]), o = Self.sigmoid(gx[3 * H + j] + gh[3 * H + j])
                cn[j] = f * c[j] + i * g
                hn[j] = o * tanh(cn[j])
            }
            return (hn, cn)
        case .gru:
            var hn = [Double](repeating: 0, count: H)
            for j in 0..<H {
                let r = Self.sigmoid(gx[j] + gh[j]), z = Self.sigmoid(gx[H + j] + gh[H + j])
                let n = tanh(gx[2 * H + j] + r * gh[2 * H + j])
                hn[j] = (1 - z) * n + z * h[j]
            }
            return (hn, c)
        case .rnn:
            return ((0..<H).map { j in
                let a = gx[j] + gh[j]
                return config.activation == .tanh ? tanh(a) : Self.sigmoid(a)
            }, c)
        }
    }

    /// Dropout multiplier, from the same counter-based definition the model documents.
    func mask(_ key: DropoutKey?, site: Int, t: Int, column: Int, totalColumns: Int, width: Int, j: Int) -> Double {
        guard let key, config.dropout > 0 else { return 1 }
        let rnd = CounterRandom(key: CounterRandom.key(key.seed, key.step, UInt64(site)))
        let keep = 1 - config.dropout
        return rnd.uniform(at: UInt64((t * totalColumns + column) * width + j)) < keep ? Double(1 / keep) : 0
    }

    /// Summed cross-entropy of a window for the given columns, from initial states h0/c0 [layer][column][unit].
    func loss(_ p: [Double], window: [Int32], steps T: Int, totalColumns: Int, columns: Range<Int>,
              h0: [[[Double]]], c0: [[[Double]]], dropout: DropoutKey?) -> (loss: Double, h: [[[Double]]], c: [[[Double]]]) {
        let E = config.embed, H = config.hidden, L = config.layers
        var h = h0, c = c0, total = 0.0
        let emb = tensor(p, "embedding.weight"), dw = tensor(p, "decoder.weight")
        let db = config.outputBias ? tensor(p, "decoder.bias") : nil
        for t in 0..<T {
            for (bi, col) in columns.enumerated() {
                let token = Int(window[t * totalColumns + col])
                var x = (0..<E).map { j in emb[emb.startIndex + token * E + j] }
                for l in 0..<L {
                    let (hn, cn) = cellStep(p, layer: l, x: x, h: h[l][bi], c: c[l][bi])
                    h[l][bi] = hn; c[l][bi] = cn
                    x = (0..<H).map { j in hn[j] * mask(dropout, site: l + 1, t: t, column: col, totalColumns: totalColumns, width: H, j: j) }
                }
                let logits = Self.affine(dw, rows: vocab, cols: H, x, db)
                let m = logits.max() ?? 0
                let lse = m + log(logits.reduce(0) { $0 + exp($1 - m) })
                total += lse - logits[Int(window[(t + 1) * totalColumns + col])]
            }
        }
        return (total, h, c)
    }
}

/// Tolerances in one place. Float analytic gradients against Double central differences agree to about 1e-5
/// absolute on these tiny models; the chapter's bug (a dropped second gradient path) is off by 10-40%.
enum Tolerance {
    static let gradientAbsolute = 2e-4
    static let gradientRelative = 2e-3
    static let forwardRelative = 1e-5
    static let finiteDifferenceStep = 1e-5
    /// A float product of up to 2048 terms of magnitude below 1 (values up to about 15) against the naive one.
    static let productAbsolute: Float = 1e-3

    static func close(_ a: Double, _ b: Double) -> Bool {
        abs(a - b) <= gradientAbsolute + gradientRelative * max(abs(a), abs(b))
    }
}

func randomBuffer(_ n: Int, _ rng: inout RNG, scale: Float = 0.5) -> FloatBuffer {
    let b = FloatBuffer(count: n)
    for i in 0..<n { b[i] = rng.uniform(-scale, scale) }
    return b
}

/// Random parameters for `model` and a random token window of `steps` + 1 rows of `columns` columns, drawn from `rng`
/// in that order.
func randomParametersAndWindow(_ model: Model, steps: Int, columns: Int, _ rng: inout RNG) -> (FloatBuffer, [Int32]) {
    let params = randomBuffer(model.parameterCount, &rng)
    let v = UInt64(model.vocabularySize)
    return (params, (0..<((steps + 1) * columns)).map { _ in Int32(rng.next() % v) })
}
