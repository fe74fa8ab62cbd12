import BardNumerics

/// One named tensor inside the flat parameter buffer, with PyTorch's state-dict name and row-major shape.
public struct ParameterSpec: Equatable, Sendable {
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
}

/// Every parameter of a model in one contiguous buffer with named views (as llm.c), so gradients, optimiser
/// moments, clipping and the wire format all work on one flat array with the same layout.
public struct ParameterLayout: Equatable, Sendable {
    public let specs: [ParameterSpec]
    public let total: Int

    public init(config: Config, vocabularySize v: Int) {
        var specs: [ParameterSpec] = []
        var offset = 0
        func add(_ name: String, _ shape: [Int]) {
            specs.append(ParameterSpec(name: name, shape: shape, offset: offset))
            offset += shape.reduce(1, *)
        }
        let g = config.cell.gates, h = config.hidden
        add("embedding.weight", [v, config.embed])
        for l in 0..<config.layers {
            let input = l == 0 ? config.embed : h
            add("rnn.weight_ih_l\(l)", [g * h, input])
            add("rnn.weight_hh_l\(l)", [g * h, h])
            add("rnn.bias_ih_l\(l)", [g * h])
            add("rnn.bias_hh_l\(l)", [g * h])
        }
        add("decoder.weight", [v, h])
        if config.outputBias { add("decoder.bias", [v]) }
        self.specs = specs
        self.total = offset
    }

    public subscript(name: String) -> ParameterSpec? { specs.first { $0.name == name } }

    public func offset(_ name: String) -> Int {
        guard let s = self[name] else { preconditionFailure("no parameter \(name) in layout") }
        return s.offset
    }
}

public enum Initializer {
    /// Fills parameters as PyTorch does by default (Embedding N(0,1); RNN and Linear U(-1/sqrt(fan), 1/sqrt(fan)))
    /// or as the chapter does (embedding U(-0.5/E, 0.5/E), He-normal weights, zero biases, zero output weight).
    public static func initialize(_ params: FloatBuffer, layout: ParameterLayout, config: Config, seed: UInt64) {
        var rng = RNG(seed: seed)
        let p = params.pointer
        for spec in layout.specs {
            let base = p + spec.offset
            let fanIn = spec.shape.count > 1 ? spec.shape[1] : config.hidden
            switch (config.initScheme, spec.name) {
            case (.pytorch, "embedding.weight"):
                for i in 0..<spec.count { base[i] = Float(rng.normal()) }
            case (.pytorch, let n) where n.hasPrefix("rnn."):
                let k = 1 / Float(config.hidden).squareRoot()
                for i in 0..<spec.count { base[i] = rng.uniform(-k, k) }
            case (.pytorch, _):
                let k = 1 / Float(config.hidden).squareRoot()
                for i in 0..<spec.count { base[i] = rng.uniform(-k, k) }
            case (.book, "embedding.weight"):
                let k = 0.5 / Float(config.embed)
                for i in 0..<spec.count { base[i] = rng.uniform(-k, k) }
            case (.book, "decoder.weight"), (.book, "decoder.bias"):
                for i in 0..<spec.count { base[i] = 0 }
            case (.book, let n) where n.contains("weight"):
                let sd = (2 / Double(fanIn)).squareRoot()
                for i in 0..<spec.count { base[i] = Float(rng.normal() * sd) }
            case (.book, _):
                for i in 0..<spec.count { base[i] = 0 }
            }
        }
    }
}
