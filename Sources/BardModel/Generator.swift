import BardNumerics
import Foundation

/// Runs the model one character at a time for one stream (batch 1), for sampling.
///
/// Layer 0's input projection depends only on the input character, so it is precomputed for the whole vocabulary
/// (V x G*H): each step then costs one matrix-vector product per layer for W_hh (and W_ih above layer 0).
public final class Generator {
    let model: Model
    let params: FloatBuffer
    let table: FloatBuffer
    let h: [FloatBuffer], c: [FloatBuffer]
    let gates: FloatBuffer, scratch: FloatBuffer
    public let logits: FloatBuffer

    public init(model: Model, params: FloatBuffer) {
        self.model = model; self.params = params
        let cfg = model.config, H = cfg.hidden, GH = cfg.cell.gates * H, V = model.vocabularySize
        table = FloatBuffer(count: model.tableCount)
        model.makeTable(params: params.pointer, into: table.pointer, part: 0, of: 1)
        h = (0..<cfg.layers).map { _ in FloatBuffer(count: H) }
        c = (0..<cfg.layers).map { _ in FloatBuffer(count: H) }
        gates = FloatBuffer(count: GH)
        scratch = FloatBuffer(count: GH)
        logits = FloatBuffer(count: V)
        reset()
    }

    public func reset() {
        for l in 0..<model.config.layers {
            h[l].zero(); c[l].zero()
            if model.config.initialState == .book { h[l][0] = 1; c[l][0] = 1 }
        }
    }

    /// Feeds one character; returns the logits of the next one (in `logits`).
    @discardableResult
    public func step(_ token: Int32) -> FloatBuffer {
        let H = model.config.hidden, p = params.pointer
        var x: UnsafePointer<Float> = UnsafePointer(h[0].pointer)  // placeholder, replaced below for layers > 0
        for (l, layer) in model.layers.enumerated() {
            step(layer.cell, layer: layer, l: l, token: token, x: x)
            x = UnsafePointer(h[l].pointer)
        }
        let V = model.vocabularySize
        BLAS.gemv(m: V, n: H, a: p + model.decoderWeight, lda: H, x: x, beta: 0, y: logits.pointer)
        if let db = model.decoderBias { for j in 0..<V { logits[j] += p[db + j] } }
        return logits
    }

    /// One layer, generic over its cell (opened once per layer and character).
    private func step<Cell: RecurrentCell>(_ cell: Cell, layer: RecurrentLayer, l: Int, token: Int32, x: UnsafePointer<Float>) {
        let H = layer.hidden, GH = cell.gates * H, p = params.pointer, g = gates.pointer
        if l == 0 {
            g.update(from: table.pointer + Int(token) * GH, count: GH)
        } else {
            BLAS.gemv(m: GH, n: H, a: p + layer.weightIH, lda: layer.input, x: x, beta: 0, y: g)
            for j in 0..<GH { g[j] += p[layer.biasIH + j] }
            if cell.foldsHiddenBias { for j in 0..<GH { g[j] += p[layer.biasHH + j] } }
        }
        cell.generate(h: h[l].pointer, c: c[l].pointer, gates: g, scratch: scratch.pointer, whh: p + layer.weightHH,
                      bhh: p + layer.biasHH, hidden: H)
    }
}

/// Draws characters from logits: temperature, optional top-k, real categorical sampling (the first index whose
/// cumulative probability exceeds a uniform draw), or argmax.
public struct Sampler {
    public var temperature: Double
    public var topK: Int
    public var greedy: Bool
    public var rng: RNG

    public init(temperature: Double = 1, topK: Int = 0, greedy: Bool = false, seed: UInt64) {
        self.temperature = temperature; self.topK = topK; self.greedy = greedy; rng = RNG(seed: seed)
    }

    public mutating func draw(_ logits: FloatBuffer) -> Int32 {
        let n = logits.count
        var best = 0
        for j in 1..<n where logits[j] > logits[best] { best = j }
        if greedy { return Int32(best) }
        var cutoff = -Double.infinity
        if topK > 0 && topK < n {
            cutoff = Double(logits.array.sorted(by: >)[topK - 1])
        }
        // Max-subtracted softmax in Double; ties at the top-k cutoff are kept.
        let m = Double(logits[best])
        var probs = [Double](repeating: 0, count: n)
        var sum = 0.0
        for j in 0..<n where Double(logits[j]) >= cutoff {
            probs[j] = exp((Double(logits[j]) - m) / temperature)
            sum += probs[j]
        }
        let r = rng.uniform() * sum
        var acc = 0.0
        for j in 0..<n {
            acc += probs[j]
            if acc > r { return Int32(j) }
        }
        return Int32(best)
    }
}

/// Primes a generator with text and streams `length` sampled characters to `emit`.
public func generateText(model: Model, params: FloatBuffer, vocabulary: Vocabulary, prime: String, length: Int,
                         sampler: inout Sampler, emit: (String) -> Void) throws {
    var primeIDs: [Int32] = []
    for s in prime.unicodeScalars {
        guard let id = vocabulary.id(of: s) else {
            throw BardError.invalidArgument("prime character \(String(Character(s)).debugDescription) (U+\(String(s.value, radix: 16, uppercase: true))) is not in the model's vocabulary")
        }
        primeIDs.append(id)
    }
    if primeIDs.isEmpty { primeIDs = [vocabulary.id(of: "\n") ?? 0] }
    let gen = Generator(model: model, params: params)
    for id in primeIDs.dropLast() { gen.step(id) }
    var token = primeIDs[primeIDs.count - 1]
    for _ in 0..<length {
        token = sampler.draw(gen.step(token))
        emit(vocabulary.character(Int(token)))
    }
}
