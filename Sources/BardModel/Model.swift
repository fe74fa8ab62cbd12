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

/// Buffers for one window of up to `steps` x `batch` columns, reused across windows.
public final class Workspace {
    let steps: Int, batch: Int
    /// (V, G*H): layer 0's input projection of every character, and its gradient.
    let table: FloatBuffer
    let dTable: FloatBuffer
    let layers: [LayerWorkspace]
    /// Per dropout site (between layers, before the decoder): the mask multipliers and the output.
    let masks: [FloatBuffer]
    let dropped: [FloatBuffer]
    let logits: FloatBuffer
    let dDecoderInput: FloatBuffer

    init(config: Config, vocabularySize v: Int, steps: Int, batch: Int) {
        self.steps = steps; self.batch = batch
        let rows = steps * batch
        let gh = config.cell.gates * config.hidden
        table = FloatBuffer(count: v * gh)
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

    public func makeWorkspace(steps: Int, batch: Int) -> Workspace {
        Workspace(config: config, vocabularySize: vocabularySize, steps: steps, batch: batch)
    }

    public func makeState(columns: Int) -> RecurrentState {
        let s = RecurrentState(layers: config.layers, columns: columns, hidden: config.hidden, hasCell: layers[0].cell.hasCellState)
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
    /// to the full batch. Returns the summed cross-entropy in nats.
    ///
    /// `dropout` nil means evaluation (no dropout). `lastStepOnly` keeps only the last step's loss, and
    /// `hiddenGradNorms` (steps entries) receives |dL/dh_t| of the top layer, for the vanishing-gradient lesson.
    @discardableResult
    public func run(params: FloatBuffer, grads: FloatBuffer?, window: UnsafePointer<Int32>, steps T: Int,
                    totalColumns: Int, columns: Range<Int>, state: RecurrentState, dropout: DropoutKey?,
                    workspace ws: Workspace, lastStepOnly: Bool = false,
                    hiddenGradNorms: UnsafeMutablePointer<Double>? = nil) -> Double {
        let B = columns.count, c0 = columns.lowerBound
        precondition(T <= ws.steps && B <= ws.batch, "window \(T)x\(B) exceeds workspace \(ws.steps)x\(ws.batch)")
        precondition(columns.upperBound <= totalColumns && state.columns == totalColumns,
                     "columns \(columns) of \(totalColumns), state has \(state.columns)")
        let p = params.pointer, E = config.embed, H = config.hidden, V = vocabularySize, rows = T * B
        let useDropout = dropout != nil && config.dropout > 0

        // Layer 0 reads an embedding row and projects it: the product of the two is a per-character table
        // (V x G*H) = E W_ih^T + biases, so the window's input projection is a gather instead of a GEMM.
        let GH = config.cell.gates * H, table = ws.table.pointer
        let layer0 = layers[0], lw0 = ws.layers[0]
        layer0.projectInput(params: p, x: p + embeddingOffset, rows: V, into: table)
        for t in 0..<T {
            for b in 0..<B {
                let token = Int(window[t * totalColumns + c0 + b])
                (lw0.gates.pointer + (t * B + b) * GH).update(from: table + token * GH, count: GH)
            }
        }
        func applyDropout(site: Int, _ x: UnsafeMutablePointer<Float>, width n: Int) -> UnsafeMutablePointer<Float> {
            guard useDropout, let key = dropout else { return x }
            let keep = 1 - config.dropout, scale = 1 / keep
            let rnd = CounterRandom(key: CounterRandom.key(key.seed, key.step, UInt64(site)))
            let mask = ws.masks[site].pointer, out = ws.dropped[site].pointer
            for t in 0..<T {
                for b in 0..<B {
                    let row = (t * B + b) * n
                    let position = UInt64((t * (key.globalColumns ?? totalColumns) + key.columnBase + c0 + b) * n)
                    for j in 0..<n {
                        let m: Float = rnd.uniform(at: position + UInt64(j)) < keep ? scale : 0
                        mask[row + j] = m
                        out[row + j] = x[row + j] * m
                    }
                }
            }
            return out
        }

        // Recurrent layers; dropout after each (site l + 1): between layers and before the decoder.
        var inputs: [UnsafeMutablePointer<Float>?] = [nil]
        var x = lw0.h.pointer
        for (l, layer) in layers.enumerated() {
            let lw = ws.layers[l]
            let h0 = UnsafePointer(state.hRows(l, c0)), c0p = state.cRows(l, c0).map { UnsafePointer($0) }
            if l == 0 {
                layer.recur(params: p, steps: T, batch: B, h0: h0, c0: c0p, ws: lw)
            } else {
                inputs.append(x)
                layer.forward(params: p, x: x, steps: T, batch: B, h0: h0, c0: c0p, ws: lw)
            }
            let out = lw.h.pointer + B * H
            // Carry the final state (its value, not its gradient).
            state.hRows(l, c0).update(from: lw.h.pointer + T * B * H, count: B * H)
            if let cr = state.cRows(l, c0) { cr.update(from: lw.c.pointer + T * B * H, count: B * H) }
            x = applyDropout(site: l + 1, out, width: H)
        }
        let decoderInput = x

        // Decoder and softmax cross-entropy; dlogits = softmax - onehot overwrites the logits.
        let logits = ws.logits.pointer
        BLAS.gemm(transB: true, m: rows, n: V, k: H, a: decoderInput, lda: H, b: p + decoderWeight, ldb: H,
                  beta: 0, c: logits, ldc: V)
        if let db = decoderBias { Kernels.addRowVector(logits, rows: rows, n: V, p + db) }
        var loss = 0.0
        for t in 0..<T {
            let counted = !lastStepOnly || t == T - 1
            for b in 0..<B {
                let row = logits + (t * B + b) * V
                let target = Int(window[(t + 1) * totalColumns + c0 + b])
                let targetLogit = row[target]
                var m = row[0]
                for j in 1..<V where row[j] > m { m = row[j] }
                var sum: Float = 0
                for j in 0..<V { let e = expf(row[j] - m); row[j] = e; sum += e }
                // Max-subtracted log-sum-exp (the chapter's softmax overflows once logits are scaled).
                if counted { loss += Double(m) + log(Double(sum)) - Double(targetLogit) }
                if grads != nil {
                    if counted {
                        let inv = 1 / sum
                        for j in 0..<V { row[j] *= inv }
                        row[target] -= 1
                    } else {
                        for j in 0..<V { row[j] = 0 }
                    }
                }
            }
        }
        guard let grads else { return loss }

        // Backward: decoder, then the layers top-down, then the embedding.
        let gp = grads.pointer
        BLAS.gemm(transA: true, m: V, n: H, k: rows, a: logits, lda: V, b: decoderInput, ldb: H,
                  beta: 1, c: gp + decoderWeight, ldc: H)
        if let db = decoderBias { Kernels.addColumnSums(logits, rows: rows, n: V, into: gp + db) }
        var dOut = ws.dDecoderInput.pointer
        BLAS.gemm(m: rows, n: H, k: V, a: logits, lda: V, b: p + decoderWeight, ldb: H, beta: 0, c: dOut, ldc: H)
        for l in stride(from: layers.count - 1, through: 0, by: -1) {
            if useDropout { multiply(dOut, ws.masks[l + 1].pointer, rows * H) }
            layers[l].backward(params: p, grads: gp, x: inputs[l].map { UnsafePointer($0) }, dOut: dOut, steps: T, batch: B,
                               ws: ws.layers[l], inputGradient: l > 0,
                               hiddenGradNorms: l == layers.count - 1 ? hiddenGradNorms : nil)
            dOut = ws.layers[l].dInput.pointer
        }
        // Layer 0's input side through the table: dTable[v] = sum of the gate gradients of rows reading v, then
        // dW_ih0 += dTable^T E and dE += dTable W_ih0 (V rows instead of T*B).
        let dTable = ws.dTable.pointer, dG = lw0.dGatesInput.pointer
        ws.dTable.zero()
        for t in 0..<T {
            for b in 0..<B {
                let token = Int(window[t * totalColumns + c0 + b])
                let dst = dTable + token * GH, src = dG + (t * B + b) * GH
                for j in 0..<GH { dst[j] += src[j] }
            }
        }
        BLAS.gemm(transA: true, m: GH, n: E, k: V, a: dTable, lda: GH, b: p + embeddingOffset, ldb: E,
                  beta: 1, c: gp + layer0.weightIH, ldc: E)
        BLAS.gemm(m: V, n: E, k: GH, a: dTable, lda: GH, b: p + layer0.weightIH, ldb: E,
                  beta: 1, c: gp + embeddingOffset, ldc: E)
        return loss
    }

    @inline(__always) private func multiply(_ x: UnsafeMutablePointer<Float>, _ m: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n { x[i] *= m[i] }
    }
}
