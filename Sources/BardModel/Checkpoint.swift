import BardNumerics
import Foundation

/// A trained model: `OUT/model.safetensors`, tensors named and laid out as a PyTorch state dict of
/// `embedding = nn.Embedding(V,E)`, `rnn = nn.LSTM|nn.RNN|nn.GRU(E,H,L)`, `decoder = nn.Linear(H,V)`.
public struct ModelCheckpoint {
    public static let format = "bard-1"
    public var config: Config
    public var vocabulary: Vocabulary
    public var params: FloatBuffer
    public var step: Int
    public var epoch: Int
    public var valLoss: Double?

    public init(config: Config, vocabulary: Vocabulary, params: FloatBuffer, step: Int, epoch: Int, valLoss: Double?) {
        self.config = config; self.vocabulary = vocabulary; self.params = params
        self.step = step; self.epoch = epoch; self.valLoss = valLoss
    }

    public var model: Model { Model(config: config, vocabularySize: vocabulary.count) }

    public func encode() -> [UInt8] {
        let layout = ParameterLayout(config: config, vocabularySize: vocabulary.count)
        var meta = ["format": Self.format, "vocabulary": vocabulary.json, "config": config.jsonString(),
                    "step": String(step), "epoch": String(epoch)]
        if let valLoss { meta["val_loss"] = String(valLoss) }
        return Safetensors.encode(Self.tensors(params, layout: layout), metadata: meta)
    }

    public func save(to path: String) throws { try AtomicFile.write(encode(), to: path) }

    static func tensors(_ params: FloatBuffer, layout: ParameterLayout) -> [Tensor] {
        layout.specs.map { s in
            Tensor(name: s.name, shape: s.shape, values: Array(UnsafeBufferPointer(start: params.pointer + s.offset, count: s.count)))
        }
    }

    public static func load(path: String) throws -> ModelCheckpoint {
        let (tensors, meta) = try Safetensors.read(path: path)
        guard meta["format"] == format else {
            throw BardError.badCheckpoint("\(path): not a Bard checkpoint (format \(meta["format"] ?? "missing"), expected \(format))")
        }
        guard let vocabJSON = meta["vocabulary"], let configJSON = meta["config"], let data = configJSON.data(using: .utf8)
        else { throw BardError.badCheckpoint("\(path): metadata lacks vocabulary or config") }
        let vocabulary = try Vocabulary(json: vocabJSON)
        let config: Config
        do { config = try JSONDecoder().decode(Config.self, from: data) } catch {
            throw BardError.badCheckpoint("\(path): config metadata is malformed")
        }
        do { try config.validate() } catch { throw BardError.badCheckpoint("\(path): config: \(error)") }
        let layout = ParameterLayout(config: config, vocabularySize: vocabulary.count)
        let params = try fill(layout: layout, from: tensors, name: path)
        return ModelCheckpoint(config: config, vocabulary: vocabulary, params: params,
                               step: Int(meta["step"] ?? "") ?? 0, epoch: Int(meta["epoch"] ?? "") ?? 0,
                               valLoss: meta["val_loss"].flatMap(Double.init))
    }

    /// Weights for `--init`: any safetensors file with the state-dict names of `layout` and matching shapes.
    /// When the file carries Bard's vocabulary and `vocabulary` is given, they must be the same: with another one of
    /// the same size the shapes fit, but every embedding and decoder row would stand for another character.
    public static func loadWeights(path: String, layout: ParameterLayout, vocabulary: Vocabulary? = nil) throws -> FloatBuffer {
        let (tensors, meta) = try Safetensors.read(path: path)
        if let vocabulary, let json = meta["vocabulary"], let theirs = try? Vocabulary(json: json), theirs != vocabulary {
            let shared = min(theirs.count, vocabulary.count)
            let differs = (0..<shared).first { theirs.scalars[$0] != vocabulary.scalars[$0] } ?? shared
            throw BardError.badCheckpoint("\(path) was trained on another vocabulary (\(theirs.count) characters against this corpus's \(vocabulary.count), first differing at index \(differs)): its embedding and decoder rows would stand for other characters")
        }
        return try fill(layout: layout, from: tensors, name: path)
    }

    static func fill(layout: ParameterLayout, from tensors: [Tensor], name: String) throws -> FloatBuffer {
        let byName = Dictionary(tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let params = FloatBuffer(count: layout.total)
        for s in layout.specs {
            guard let t = byName[s.name] else { throw BardError.badCheckpoint("\(name): missing tensor \(s.name)") }
            guard t.shape == s.shape else {
                throw BardError.badCheckpoint("\(name): tensor \(s.name) has shape \(t.shape), the model needs \(s.shape)")
            }
            t.values.withUnsafeBufferPointer { if let b = $0.baseAddress { (params.pointer + s.offset).update(from: b, count: s.count) } }
        }
        let extra = Set(byName.keys).subtracting(layout.specs.map(\.name))
        if !extra.isEmpty { throw BardError.badCheckpoint("\(name): unexpected tensors \(extra.sorted().joined(separator: ", "))") }
        return params
    }
}

/// Everything besides the weights that `--resume` needs to continue exactly: optimiser moments and step, lr, the
/// carried hidden state, the data cursor and the RNG. Stored beside the model as `training-state.safetensors`.
public struct TrainingState {
    public var step: Int
    public var epoch: Int
    /// Next training window within the epoch.
    public var window: Int
    public var lr: Double
    public var optimizerStep: Int
    public var m: [Float], v: [Float]
    public var h: [Float], c: [Float]
    public var rng: RNG
    public var chars: Int
    public var minLoss: Double
    public var elapsed: Double
    /// sha256 of the corpus trained on ("" in older states), so --resume refuses another text.
    public var corpusSHA256: String
    /// The raw (not averaged) parameters when the run keeps an average (`--ema`): the model file holds the average,
    /// and a resume needs both. Empty otherwise.
    public var rawParams: [Float] = []
    /// Absolute path of the corpus when the run started ("" in older states), so `--resume DIR` alone finds it.
    public var corpusPath: String = ""

    public init(step: Int, epoch: Int, window: Int, lr: Double, optimizerStep: Int, m: [Float], v: [Float],
                h: [Float], c: [Float], rng: RNG, chars: Int, minLoss: Double, elapsed: Double, corpusSHA256: String = "") {
        self.step = step; self.epoch = epoch; self.window = window; self.lr = lr; self.optimizerStep = optimizerStep
        self.m = m; self.v = v; self.h = h; self.c = c; self.rng = rng; self.chars = chars
        self.minLoss = minLoss; self.elapsed = elapsed; self.corpusSHA256 = corpusSHA256
    }

    public func save(to path: String) throws {
        let meta = ["format": "bard-state-1", "step": String(step), "epoch": String(epoch), "window": String(window),
                    "lr": String(lr), "optimizer_step": String(optimizerStep),
                    "rng": [rng.s0, rng.s1, rng.s2, rng.s3].map { String($0) }.joined(separator: ","),
                    "chars": String(chars), "min_loss": String(minLoss), "elapsed": String(elapsed), "corpus_sha256": corpusSHA256,
                    "corpus_path": corpusPath]
        var tensors = [Tensor(name: "optimizer.m", shape: [m.count], values: m),
                       Tensor(name: "optimizer.v", shape: [v.count], values: v),
                       Tensor(name: "state.h", shape: [h.count], values: h),
                       Tensor(name: "state.c", shape: [c.count], values: c)]
        if !rawParams.isEmpty { tensors.append(Tensor(name: "params.raw", shape: [rawParams.count], values: rawParams)) }
        try Safetensors.write(tensors, metadata: meta, to: path)
    }

    public static func load(path: String) throws -> TrainingState {
        let (tensors, meta) = try Safetensors.read(path: path)
        func int(_ k: String) throws -> Int {
            guard let v = meta[k].flatMap(Int.init) else { throw BardError.badCheckpoint("\(path): bad or missing \(k)") }
            return v
        }
        func double(_ k: String) throws -> Double {
            guard let v = meta[k].flatMap(Double.init) else { throw BardError.badCheckpoint("\(path): bad or missing \(k)") }
            return v
        }
        guard meta["format"] == "bard-state-1" else { throw BardError.badCheckpoint("\(path): not a Bard training state") }
        let words = (meta["rng"] ?? "").split(separator: ",").compactMap { UInt64($0) }
        guard words.count == 4 else { throw BardError.badCheckpoint("\(path): bad rng state") }
        var rng = RNG(seed: 0)
        rng.s0 = words[0]; rng.s1 = words[1]; rng.s2 = words[2]; rng.s3 = words[3]
        let t = Dictionary(tensors.map { ($0.name, $0.values) }, uniquingKeysWith: { a, _ in a })
        var ts = TrainingState(step: try int("step"), epoch: try int("epoch"), window: try int("window"), lr: try double("lr"),
                             optimizerStep: try int("optimizer_step"), m: t["optimizer.m"] ?? [], v: t["optimizer.v"] ?? [],
                             h: t["state.h"] ?? [], c: t["state.c"] ?? [], rng: rng, chars: try int("chars"),
                             minLoss: try double("min_loss"), elapsed: try double("elapsed"),
                             corpusSHA256: meta["corpus_sha256"] ?? "")
        ts.corpusPath = meta["corpus_path"] ?? ""
        ts.rawParams = t["params.raw"] ?? []
        return ts
    }
}
