import ArgumentParser
import BardModel
import BardNumerics
import BardTraining
import Foundation

@main
struct Bard: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bard",
        abstract: "Train character-level RNN/LSTM/GRU language models and sample from them.",
        subcommands: [Train.self, Sample.self, Eval.self, Inspect.self, Gradients.self, Bench.self,
                      CoordinatorCommand.self, ShardCommand.self, WorkerCommand.self, Fetch.self, Keys.self, Plot.self])

    static func main() {
        OpenBLASCore.preferFastKernels()
        Allocator.reuseLargeBlocks()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let error as BardError {
            FileHandle.standardError.write(Data("bard: error: \(error.description)\n".utf8))
            Foundation.exit(error.exitCode)
        } catch let error as CocoaError {
            // Foundation's file errors print as "Error Domain=NSCocoaErrorDomain Code=..."; a user gets the path and
            // the system's reason instead.
            FileHandle.standardError.write(Data("bard: error: \(plainDescription(error))\n".utf8))
            Foundation.exit(74)
        } catch {
            exit(withError: error)
        }
    }
}

/// A Foundation file error as one plain line: the path and the operating system's reason.
func plainDescription(_ error: CocoaError) -> String {
    let path = error.filePath ?? (error.userInfo[NSURLErrorKey] as? URL)?.path
    var reason = "file operation failed"
    if let underlying = error.underlying as? POSIXError {
        reason = String(cString: strerror(underlying.code.rawValue))
    } else if let underlying = error.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
        reason = String(cString: strerror(Int32(underlying.code)))
    } else {
        switch error.code {
        case .fileNoSuchFile, .fileReadNoSuchFile: reason = "no such file or directory"
        case .fileReadNoPermission, .fileWriteNoPermission: reason = "permission denied"
        case .fileWriteOutOfSpace: reason = "no space left on device"
        case .fileWriteFileExists: reason = "it already exists"
        default: break
        }
    }
    return path.map { "\($0): \(reason)" } ?? reason
}

extension BardError {
    var exitCode: Int32 {
        switch self {
        case .invalidArgument: return 64
        case .badInput, .badCheckpoint: return 65
        case .diverged: return 3
        case .io: return 74
        case .refused: return BardError.refusedExitCode
        }
    }
    /// EX_NOPERM: the coordinator will not have this worker; the `--count` supervisor does not restart it.
    static let refusedExitCode: Int32 = 77
}

/// stdout, flushed per line so progress shows up in pipes and logs.
func say(_ s: String) {
    print(s)
    fflush(stdout)
}

/// The training flags shared by `bard train` (and the cluster coordinator): each maps one to one onto `Config`.
struct TrainingFlags: ParsableArguments {
    @Option(help: "Recipe whose settings are the defaults: \(Config.recipeNames.joined(separator: ", ")) (default: default).")
    var recipe: String?
    @Option(help: "UTF-8 text to train on (default data/tinyshakespeare.txt; on --resume, the run's own corpus).") var data: String?
    @Option(help: "Recurrent cell: lstm, rnn or gru.") var cell: CellKind?
    @Option(help: "RNN activation: tanh or sigmoid (--cell rnn only).") var activation: Activation?
    @Option(help: "Recurrent layers.") var layers: Int?
    @Option(help: "Embedding size.") var embed: Int?
    @Option(help: "Hidden size.") var hidden: Int?
    @Option(help: "Dropout between layers and before the output (0 = off).") var dropout: Float?
    @Option(help: "Optimiser: sgd or adam (PyTorch's defaults).") var optimizer: OptimizerKind?
    @Option(help: "Learning rate (on the mean loss of a window).") var lr: Double?
    @Option(name: .customLong("lr-decay"), help: "Multiply the learning rate by this after every epoch (--schedule exp).") var lrDecay: Double?
    @Option(help: "Learning-rate schedule: exp (per-epoch --lr-decay), cosine (to lr/10 at the last step) or linear (to 0 at the last step).") var schedule: Schedule?
    @Option(help: "Steps of linear learning-rate warmup.") var warmup: Int?
    @Option(help: "Keep an exponential moving average of the parameters with this decay (e.g. 0.999): validated beside the raw ones, and what the model file holds for sampling and evaluation.") var ema: Double?
    @Option(help: "Train until this much time is spent (e.g. 10m, 1h30m, 90s), planning the steps from the measured pace and annealing the schedule (cosine unless --schedule is given) to end there; counts the time before a resume.") var budget: String?
    @Option(help: "Clip the global gradient norm to this (0 = off).") var clip: Double?
    @Option(help: "Batch columns.") var batch: Int?
    @Option(help: "Truncated BPTT window in characters.") var bptt: Int?
    @Option(help: "Epochs to train (ignored with --steps).") var epochs: Int?
    @Option(help: "Total optimiser steps of the run, counting those before a resume.") var steps: Int?
    @Option(help: "Random seed (initialisation, dropout, samples).") var seed: UInt64?
    @Option(help: "Worker threads (they share each step of the window: WindowThreads).") var threads: Int?
    @Option(name: .customLong("val-fraction"), help: "Last fraction of the text held out for validation.") var valFraction: Double?
    @Flag(name: .customLong("carry-state"), help: "Keep the hidden state across epochs instead of resetting it.") var carryState = false

    func makeConfig() throws -> Config {
        var c = try Config.recipe(recipe ?? "default")
        if let cell { c.cell = cell }
        if let activation { c.activation = activation }
        if let layers { c.layers = layers }
        if let embed { c.embed = embed }
        if let hidden { c.hidden = hidden }
        if let dropout { c.dropout = dropout }
        if let optimizer { c.optimizer = optimizer }
        if let lr { c.lr = lr }
        if let lrDecay { c.lrDecay = lrDecay }
        if let schedule { c.schedule = schedule }
        if let warmup { c.warmup = warmup }
        if let ema { c.ema = ema }
        if let budget {
            guard let seconds = BudgetPlan.parse(budget) else {
                throw BardError.invalidArgument("--budget takes a duration such as 10m, 1h30m or 90s (got \(budget))")
            }
            c.budget = seconds
            if schedule == nil { c.schedule = .cosine }
        }
        if let clip { c.clip = clip }
        if let batch { c.batch = batch }
        if let bptt {
            c.bptt = bptt
            // The book's alpha is per step of the summed window loss: keep it per step when the window changes.
            if c.recipe == "book" && lr == nil && c.optimizer == .sgd { c.lr = Config.bookLearningRate(bptt: bptt) }
        }
        if let epochs { c.epochs = epochs }
        if let steps { c.steps = steps }
        // A run length asked for on the command line wins over a recipe's deadline (--budget with --steps caps it).
        if budget == nil && (epochs != nil || steps != nil) { c.budget = nil }
        if let seed { c.seed = seed }
        if let threads { c.threads = threads }
        if let valFraction { c.valFraction = valFraction }
        if carryState { c.carryState = true }
        try c.validate()
        return c
    }

    /// Flags that may differ from the checkpoint on --resume; every other flag given must agree with it.
    static let changeableOnResume = "--steps, --epochs, --threads, --budget and --data"

    /// The corpus to train on: --data, else on resume the one the run recorded (checked by sha256 when loaded),
    /// else the default.
    func corpusPath(resume: String?) throws -> String {
        if let data { return data }
        guard let resume else { return "data/tinyshakespeare.txt" }
        let recorded = try Trainer.recordedCorpus(in: resume)
        guard FileManager.default.fileExists(atPath: recorded.path) else {
            throw BardError.badInput("the corpus this run was trained on, \(recorded.path), is gone: give --data PATH to a copy (its sha256 must be \(recorded.sha256.prefix(12))...)")
        }
        return recorded.path
    }

    /// The flags given on the command line whose values differ from `saved`, as "--flag given (checkpoint: saved)".
    func conflicts(with saved: Config) -> [String] {
        var out: [String] = []
        func check<T: Equatable>(_ name: String, _ given: T?, _ savedValue: T) {
            if let given, given != savedValue { out.append("--\(name) \(given) (the checkpoint has \(savedValue))") }
        }
        check("cell", cell, saved.cell); check("activation", activation, saved.activation)
        check("layers", layers, saved.layers); check("embed", embed, saved.embed); check("hidden", hidden, saved.hidden)
        check("dropout", dropout, saved.dropout); check("optimizer", optimizer, saved.optimizer); check("lr", lr, saved.lr)
        check("lr-decay", lrDecay, saved.lrDecay); check("schedule", schedule, saved.schedule ?? .exp)
        check("warmup", warmup, saved.warmup ?? 0); check("ema", ema, saved.ema ?? 0); check("clip", clip, saved.clip); check("batch", batch, saved.batch)
        check("bptt", bptt, saved.bptt); check("seed", seed, saved.seed); check("val-fraction", valFraction, saved.valFraction)
        // Recipe names compared as Config.recipe spells them, with the default recipe's two names as one.
        func canonical(_ r: String) -> String {
            let name = (try? Config.recipe(r))?.recipe ?? r
            return name == "adam_2x512_do25_b32_t50" ? "default" : name
        }
        if let recipe, canonical(recipe) != canonical(saved.recipe) {
            out.append("--recipe \(recipe) (the checkpoint has \(saved.recipe))")
        }
        if carryState && !saved.carryState { out.append("--carry-state (the checkpoint runs without it)") }
        return out
    }

    /// The run's options, shared by `bard train` and `bard coordinator`.
    func makeOptions(_ output: OutputFlags, resume: String?, defaultCheckpointEvery: Int) throws -> TrainOptions {
        let out = output.directory, initFile = output.initFile, sampleLength = output.sampleLength
        let checkpointEvery = output.checkpointEvery ?? defaultCheckpointEvery
        if resume != nil && initFile != nil { throw BardError.invalidArgument("--init and --resume exclude each other") }
        if let resume, let given = output.out,
           URL(fileURLWithPath: given).standardizedFileURL.path != URL(fileURLWithPath: resume).standardizedFileURL.path {
            throw BardError.invalidArgument("--out \(given) with --resume \(resume): a resumed run goes on writing in its own directory; leave out --out")
        }
        guard sampleLength >= 0 else { throw BardError.invalidArgument("--sample-length must be >= 0, got \(sampleLength)") }
        guard checkpointEvery >= 0 else { throw BardError.invalidArgument("--checkpoint-every must be >= 0, got \(checkpointEvery)") }
        var options = TrainOptions(config: try makeConfig(), dataPath: try corpusPath(resume: resume))
        let flags = self
        options.checkResume = { saved in
            let conflicts = flags.conflicts(with: saved)
            guard conflicts.isEmpty else {
                throw BardError.invalidArgument("--resume: \(conflicts.joined(separator: ", ")) conflicts with the checkpoint; only \(TrainingFlags.changeableOnResume) may change on resume")
            }
        }
        options.outDir = resume ?? out
        options.resume = resume != nil
        options.explicitSteps = steps
        options.explicitEpochs = epochs
        options.explicitBudget = budget != nil ? options.config.budget : nil
        options.initPath = initFile
        options.checkpointEvery = checkpointEvery
        options.sampleLength = sampleLength
        return options
    }
}

extension CellKind: ExpressibleByArgument {}
extension Activation: ExpressibleByArgument {}
extension OptimizerKind: ExpressibleByArgument {}
extension Schedule: ExpressibleByArgument {}

/// Where a run writes and what it starts from: shared by `bard train` and `bard coordinator`.
struct OutputFlags: ParsableArguments {
    @Option(help: "Output directory for checkpoints and metrics (default: out; a resumed run writes in its own).") var out: String?
    var directory: String { out ?? "out" }
    @Option(name: .customLong("init"), help: "Start from the weights of a safetensors file with Bard's tensor names.") var initFile: String?
    @Option(help: "Continue the run whose checkpoint is in this directory (its corpus too, unless --data is given); only \(TrainingFlags.changeableOnResume) may differ from its settings.") var resume: String?
    @Option(name: .customLong("checkpoint-every"), help: "Also checkpoint every N steps, besides epoch ends and the end (0 = only those; default: 0 for train, 100 for coordinator).") var checkpointEvery: Int?
    @Option(name: .customLong("sample-length"), help: "Characters of the sample printed after each epoch.") var sampleLength: Int = 200
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Train a model with truncated BPTT.")
    @OptionGroup var flags: TrainingFlags
    @OptionGroup var output: OutputFlags
    @OptionGroup var monitoring: MonitorFlags

    func run() throws {
        let options = try flags.makeOptions(output, resume: output.resume, defaultCheckpointEvery: 0)
        let corpus = try Corpus.load(path: options.dataPath)
        let trainer = try Trainer(options: options, corpus: corpus, log: say)
        let monitor = try monitoring.start(trainer: trainer, title: "bard train: " + options.outDir)
        defer { monitor?.stop() }
        installStopHandlers()
        let result = try trainer.run()
        say(String(format: "done: step %d, train loss %.4f, val loss %@; checkpoint %@", result.step, result.trainLoss,
                   result.valLoss.map { String(format: "%.4f", $0) } ?? "n/a", trainer.modelPath))
        if stopRequested != 0 { throw ExitCode(130) }
    }
}

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text from a checkpoint, streamed to stdout.")
    @Option(help: "Checkpoint file (model.safetensors).") var checkpoint: String = "out/model.safetensors"
    @Option(help: "Characters to generate.") var length: Int = 500
    @Option(help: "Softmax temperature (> 0).") var temperature: Double = 0.8
    @Option(name: .customLong("top-k"), help: "Sample among the k most likely characters (0 = all).") var topK: Int = 0
    @Option(help: "Text to start from (printed first).") var prime: String = ""
    @Option(help: "Random seed: the same seed gives the same text.") var seed: UInt64 = 0
    @Flag(help: "Always take the most likely character.") var greedy = false

    func validate() throws {
        guard length >= 0 else { throw ValidationError("--length must be >= 0") }
        guard temperature > 0, temperature.isFinite else { throw ValidationError("--temperature must be > 0") }
        guard topK >= 0 else { throw ValidationError("--top-k must be >= 0") }
    }

    func run() throws {
        let ckpt = try ModelCheckpoint.load(path: checkpoint)
        var sampler = Sampler(temperature: temperature, topK: topK, greedy: greedy, seed: seed)
        let out = FileHandle.standardOutput
        var pending = prime
        try generateText(model: ckpt.model, params: ckpt.params, vocabulary: ckpt.vocabulary, prime: prime, length: length,
                         sampler: &sampler) { ch in
            pending += ch
            if pending.utf8.count >= 64 || ch == "\n" { out.write(Data(pending.utf8)); pending = "" }
        }
        out.write(Data((pending + "\n").utf8))
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Loss and perplexity of a checkpoint on a text.")
    @Option(help: "Checkpoint file.") var checkpoint: String = "out/model.safetensors"
    @Option(help: "UTF-8 text (its vocabulary must be within the model's).") var data: String = "data/tinyshakespeare.txt"
    @Option(help: "val: the held-out part (as in training); all: the whole file.") var split: String = "val"
    @Option(help: "Columns read in parallel.") var batch: Int = 32
    @Option(help: "Window length (does not change the result).") var bptt: Int = 50
    @Option(help: "Threads.") var threads: Int = 1
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard ["val", "all"].contains(split) else { throw ValidationError("--split must be val or all") }
        guard batch >= 1 else { throw ValidationError("--batch must be >= 1") }
        guard bptt >= 1 else { throw ValidationError("--bptt must be >= 1") }
    }

    func run() throws {
        let ckpt = try ModelCheckpoint.load(path: checkpoint)
        let corpus = try Corpus.load(path: data)
        // Map the text through the model's vocabulary; an unknown character is a clear error.
        var ids: [Int32] = []
        ids.reserveCapacity(corpus.tokens.count)
        for t in corpus.tokens {
            let s = corpus.vocabulary.scalars[Int(t)]
            guard let id = ckpt.vocabulary.id(of: s) else {
                throw BardError.badInput("\(data) has the character \(String(Character(s)).debugDescription) (U+\(String(s.value, radix: 16, uppercase: true))), which the model's vocabulary lacks")
            }
            ids.append(id)
        }
        let cut = split == "val" ? Int(Double(ids.count) * (1 - ckpt.config.valFraction)) : 0
        let r = evaluate(model: ckpt.model, params: ckpt.params, tokens: ids[cut...], columns: batch, bptt: bptt, threads: threads)
        guard r.chars > 0 else { throw BardError.badInput("\(data): too little text to evaluate with \(batch) columns") }
        if json {
            // JSON has no NaN or infinity (a checkpoint with non-finite weights): those print as null.
            func number(_ v: Double) -> String { v.isFinite ? "\(v)" : "null" }
            say("{\"loss\": \(number(r.loss)), \"perplexity\": \(number(exp(r.loss))), \"chars\": \(r.chars), \"split\": \"\(split)\", \"batch\": \(batch)}")
        } else {
            say(String(format: "%@ split: loss %.4f nats/char, perplexity %.3f, %d characters", split, r.loss, exp(r.loss), r.chars))
        }
    }
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a checkpoint's configuration and state.")
    @Argument(help: "Checkpoint file.") var file: String

    func run() throws {
        let c = try ModelCheckpoint.load(path: file)
        say("checkpoint: \(file)")
        say(c.config.summary)
        say("vocabulary: \(c.vocabulary.count) characters")
        say("parameters: \(c.model.parameterCount)")
        say("step: \(c.step), epochs completed: \(c.epoch)")
        say("validation loss: " + (c.valLoss.map { String(format: "%.4f nats/char (perplexity %.3f)", $0, exp($0)) } ?? "not measured"))
    }
}
