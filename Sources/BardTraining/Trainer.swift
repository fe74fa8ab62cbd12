import BardMetrics
import BardModel
import BardNumerics
import Foundation

/// What computes the gradient of one window: threads in this process (`WindowThreads`) or, later, workers.
public protocol GradientComputer: AnyObject {
    /// Forward and backward over all `totalColumns` columns, the gradient of the loss sum into `grads` (a computer
    /// may add to what it holds, so a caller that wants the sum clears it first, or write over it), state carried in
    /// place; returns the loss sum.
    func computeGradients(params: FloatBuffer, grads: FloatBuffer, window: UnsafePointer<Int32>, steps: Int,
                          totalColumns: Int, state: RecurrentState, dropout: DropoutKey?) throws -> Double
    /// `computeGradients` into `grads`, whatever it held, divided by `meanOver` targets: the mean gradient, and the
    /// sums of squares of its blocks (`Optimizer.mean`), on up to `threads` threads. The default clears `grads`,
    /// computes and takes the mean in a pass of its own; a computer that sums other gradients (the coordinator) does
    /// it in the pass that adds them.
    func meanGradients(params: FloatBuffer, grads: FloatBuffer, window: UnsafePointer<Int32>, steps: Int,
                       totalColumns: Int, state: RecurrentState, dropout: DropoutKey?, meanOver n: Int,
                       threads: Int) throws -> (lossSum: Double, squares: [Double])
    /// Appended to the progress line (workers alive, step time split).
    var statusSuffix: String { get }
    /// Adds what it knows to each step's metrics record (workers, the step's time split, counters).
    func annotate(_ record: inout MetricsRecord)
}

extension GradientComputer {
    public func meanGradients(params: FloatBuffer, grads: FloatBuffer, window: UnsafePointer<Int32>, steps: Int,
                              totalColumns: Int, state: RecurrentState, dropout: DropoutKey?, meanOver n: Int,
                              threads: Int) throws -> (lossSum: Double, squares: [Double]) {
        grads.zero(threads: threads)
        let loss = try computeGradients(params: params, grads: grads, window: window, steps: steps,
                                        totalColumns: totalColumns, state: state, dropout: dropout)
        return (loss, Optimizer.mean(grads, over: n, threads: threads))
    }
    public var statusSuffix: String { "" }
    public func annotate(_ record: inout MetricsRecord) {}
}

extension WindowThreads: GradientComputer {
    public func computeGradients(params: FloatBuffer, grads: FloatBuffer, window: UnsafePointer<Int32>, steps: Int,
                                 totalColumns: Int, state: RecurrentState, dropout: DropoutKey?) throws -> Double {
        run(params: params, grads: grads, window: window, steps: steps, totalColumns: totalColumns, state: state,
            dropout: dropout)
    }
}

/// Thrown by a gradient computer interrupted by a signal mid-step: the trainer checkpoints the last completed step.
public struct StopTraining: Error {
    public init() {}
}

/// Set from SIGINT/SIGTERM: the trainer finishes its step, writes a checkpoint and stops.
nonisolated(unsafe) public var stopRequested: sig_atomic_t = 0

public func installStopHandlers() {
    signal(SIGINT) { _ in stopRequested = 1 }
    signal(SIGTERM) { _ in stopRequested = 1 }
}

public struct TrainOptions {
    public var config: Config
    public var dataPath: String
    public var outDir: String = "out"
    public var initPath: String?
    public var resume: Bool = false
    /// On resume, the run length comes from the checkpoint unless given here (flags given on the command line).
    public var explicitSteps: Int?
    public var explicitEpochs: Int?
    /// On resume, the deadline comes from the checkpoint unless --budget is given here; --steps or --epochs given
    /// without it end the deadline (a recipe's included), as they do for a new run.
    public var explicitBudget: Double?
    /// On resume, called with the checkpoint's configuration: throws if a flag given now conflicts with it.
    public var checkResume: ((Config) throws -> Void)?
    public var checkpointEvery: Int = 0
    public var sampleLength: Int = 200
    /// Seconds between progress lines when stdout is not a terminal.
    public var logInterval: Double = 10
    /// Threads of the optimiser step (nil: `--threads`). A coordinator gives it every core: its workers wait then.
    public var updateThreads: Int?
    public init(config: Config, dataPath: String) { self.config = config; self.dataPath = dataPath }
}

public struct TrainResult {
    public let step: Int
    public let trainLoss: Double
    public let valLoss: Double?
}

/// Truncated BPTT over the column layout: carried, detached hidden state (reset every epoch unless --carry-state),
/// mean cross-entropy over the window, clipping, the optimiser, validation, samples, metrics and checkpoints.
public final class Trainer {
    public let options: TrainOptions
    public let config: Config
    public let corpus: Corpus
    public let model: Model
    public let params: FloatBuffer
    /// The exponential moving average of the parameters (`--ema`): what the model file holds and samples use.
    public private(set) var average: FloatBuffer?
    public let grads: FloatBuffer
    public let optimizer: Optimizer
    public let state: RecurrentState
    public internal(set) var step = 0
    public internal(set) var epoch = 0
    var window = 0
    var chars = 0
    var minLoss = Double.infinity
    var rng: RNG
    var elapsedBefore = 0.0
    var lastValLoss: Double?
    let trainStreams: ColumnStreams
    let valTokens: ArraySlice<Int32>
    public let windowsPerEpoch: Int
    /// The run's length in steps; with a budget, planned again after every step.
    public private(set) var totalSteps: Int
    /// With `--budget`: the plan, and the time left.
    public private(set) var budget: BudgetPlan?
    let log: (String) -> Void
    /// Observers for monitoring (the metrics server and dashboard): each step's metrics record, each epoch's sample.
    public var onRecord: ((MetricsRecord) -> Void)?
    public var onSample: ((String) -> Void)?
    /// Stop after this step as a signal would (checkpoint, then return); for tests and tools.
    public var stopAfter: Int?
    /// Where the update is made when not here (coordinator shards), and whether the buffers here are behind it.
    var remote: RemoteUpdate?
    var remoteAhead = false

    /// Losses of remote state between two checkpoints before the run stops (a loss that recurs before the run can
    /// checkpoint again would otherwise send it back to the same step for ever).
    static let maxRecoveries = 8

    public var modelPath: String { Trainer.modelPath(in: options.outDir) }
    public var statePath: String { Trainer.statePath(in: options.outDir) }
    var previousStatePath: String { Trainer.previousStatePath(in: options.outDir) }
    /// The files of a run's checkpoint in `dir`.
    public static func modelPath(in dir: String) -> String { dir + "/model.safetensors" }
    static func statePath(in dir: String) -> String { dir + "/training-state.safetensors" }
    static func previousStatePath(in dir: String) -> String { dir + "/training-state.previous.safetensors" }

    /// Whether `dir` holds a checkpoint to resume from (for `--auto-resume`).
    public static func hasCheckpoint(in dir: String) -> Bool {
        FileManager.default.fileExists(atPath: Trainer.modelPath(in: dir))
    }

    /// The corpus a run in `dir` was started on: its path then and its sha256 (for `--resume DIR` without --data).
    public static func recordedCorpus(in dir: String) throws -> (path: String, sha256: String) {
        let ckpt = try ModelCheckpoint.load(path: Trainer.modelPath(in: dir))
        let ts = try trainingState(matching: ckpt.step, in: dir)
        guard !ts.corpusPath.isEmpty else {
            throw BardError.badInput("the checkpoint in \(dir) does not record its corpus (an older run): give --data")
        }
        return (ts.corpusPath, ts.corpusSHA256)
    }

    /// The training state saved with the model of `step`: the current file, or the previous one when a crash came
    /// between writing the state and the model.
    static func trainingState(matching step: Int, in dir: String) throws -> TrainingState {
        let current = Result { try TrainingState.load(path: Trainer.statePath(in: dir)) }
        if case .success(let ts) = current, ts.step == step { return ts }
        if let previous = try? TrainingState.load(path: Trainer.previousStatePath(in: dir)), previous.step == step {
            return previous
        }
        let ts = try current.get()
        throw BardError.badCheckpoint("\(dir): model is at step \(step) but training state at \(ts.step)")
    }

    /// - Parameter parameterStorage: where the parameters live, given the model: memory the caller provides (the
    ///   coordinator's shared region, which the workers on its host read in place), or nil (or no answer, or memory
    ///   of another size, which a precondition refuses) for the trainer's own.
    public init(options: TrainOptions, corpus: Corpus, log: @escaping (String) -> Void,
                parameterStorage: ((Model) -> FloatBuffer?)? = nil) throws {
        var config = options.config
        self.options = options
        self.corpus = corpus
        self.log = log
        var resumed: (ModelCheckpoint, TrainingState)?
        // Before anything slow (a coordinator waits for its workers after this): a bad --out is a one-line error now,
        // not a Foundation error at the first checkpoint. A resume needs the directory as it is; a new run creates it.
        try AtomicFile.prepareDirectory(options.outDir, create: !options.resume)
        if options.resume {
            let ckpt = try ModelCheckpoint.load(path: Trainer.modelPath(in: options.outDir))
            let ts = try Trainer.trainingState(matching: ckpt.step, in: options.outDir)
            guard ckpt.vocabulary == corpus.vocabulary else {
                throw BardError.badInput("--data has a different vocabulary (\(corpus.vocabulary.count) characters) than the checkpoint in \(options.outDir) (\(ckpt.vocabulary.count))")
            }
            // The checkpoint's recipe wins; only the run length and threads may change on resume, and a flag that says
            // otherwise is an error rather than silently dropped.
            try options.checkResume?(ckpt.config)
            let saved = config
            config = ckpt.config
            config.steps = options.explicitSteps ?? ckpt.config.steps
            config.epochs = options.explicitEpochs ?? ckpt.config.epochs
            config.threads = saved.threads
            let lengthGiven = options.explicitSteps != nil || options.explicitEpochs != nil
            config.budget = options.explicitBudget ?? (lengthGiven ? nil : ckpt.config.budget)
            guard ts.corpusSHA256.isEmpty || ts.corpusSHA256 == corpus.sha256 else {
                throw BardError.badInput("--data is not the corpus this run was trained on (sha256 \(corpus.sha256.prefix(12)) vs \(ts.corpusSHA256.prefix(12)))")
            }
            resumed = (ckpt, ts)
        }
        try config.validate()
        self.config = config
        model = Model(config: config, vocabularySize: corpus.vocabulary.count)
        let (train, val) = corpus.split(valFraction: config.valFraction)
        let need = config.batch * (config.bptt + 1)
        guard train.count >= need else {
            throw BardError.badInput("corpus too short: the training part has \(train.count) characters, batch \(config.batch) x (bptt \(config.bptt) + 1) needs \(need)")
        }
        trainStreams = ColumnStreams(train, columns: config.batch)
        valTokens = val
        windowsPerEpoch = trainStreams.trainingWindows(bptt: config.bptt)
        totalSteps = config.steps ?? config.epochs * windowsPerEpoch
        if let seconds = config.budget {
            budget = BudgetPlan(seconds: seconds, validationChars: val.count, stepChars: config.batch * config.bptt)
        }
        grads = FloatBuffer(count: model.parameterCount)
        optimizer = Optimizer(kind: config.optimizer, lr: config.lr, parameterCount: model.parameterCount)
        state = model.makeState(columns: config.batch)
        rng = RNG(seed: config.seed &+ 1)

        let initial: FloatBuffer
        let statePath = Trainer.statePath(in: options.outDir)
        if let (ckpt, ts) = resumed {
            if config.ema != nil {
                guard ts.rawParams.count == ckpt.params.count else {
                    throw BardError.badCheckpoint("\(statePath): the run keeps an average (--ema) but its raw parameters are missing")
                }
                initial = FloatBuffer(ts.rawParams)
            } else {
                initial = ckpt.params
            }
            // The rate is not restored: it is a function of the step (LearningRate), set before every update.
            try optimizer.restore(step: ts.optimizerStep, lr: config.lr, m: ts.m, v: ts.v)
            guard ts.h.count == state.h.count, ts.c.count == state.c.count else {
                throw BardError.badCheckpoint("\(statePath): hidden state has the wrong size")
            }
            state.h.copy(from: FloatBuffer(ts.h)); state.c.copy(from: FloatBuffer(ts.c))
            guard ts.window >= 0, ts.window < windowsPerEpoch else {
                throw BardError.badCheckpoint("\(statePath): data cursor \(ts.window) outside the epoch's \(windowsPerEpoch) windows")
            }
            step = ts.step; epoch = ts.epoch; window = ts.window; chars = ts.chars; minLoss = ts.minLoss
            rng = ts.rng; elapsedBefore = ts.elapsed; lastValLoss = ckpt.valLoss
        } else if let initPath = options.initPath {
            initial = try ModelCheckpoint.loadWeights(path: initPath, layout: model.layout, vocabulary: corpus.vocabulary)
        } else {
            initial = model.makeParameters(seed: config.seed)
        }
        if let storage = parameterStorage?(model) {
            precondition(storage.count == initial.count, "Trainer: the parameter storage has the wrong size")
            storage.copy(from: initial)
            params = storage
        } else {
            params = initial
        }
        // A resumed average is the model file's; a new one starts from the initial parameters.
        if config.ema != nil {
            let a = FloatBuffer(count: params.count)
            a.copy(from: resumed?.0.params ?? params)
            average = a
        }
        if let plan = budget {
            // The budget decides the length (a --steps given too caps it); a spent budget is a complete run. A resumed
            // one starts from the pace of the steps already done (everything included), so its schedule is in the
            // right place from the first step; it is planned again after every step as always.
            let cap = options.explicitSteps ?? config.steps ?? Int.max / 4
            if elapsedBefore >= plan.seconds {
                totalSteps = step
            } else if step > 0 && elapsedBefore > 0 {
                totalSteps = max(step, min(cap, plan.totalSteps(step: step, elapsed: elapsedBefore, stepSeconds: elapsedBefore / Double(step))))
            } else {
                totalSteps = max(step, cap)
            }
        }
    }

    /// Trains until `totalSteps`; throws `BardError.diverged` on a non-finite loss (the last checkpoint stays). With
    /// `remote`, the update is made where it says (coordinator shards), and the state is brought back here for
    /// validation, samples and checkpoints; when the remote side loses its state (`RemoteStateLost`), the run goes
    /// back to its last checkpoint, kept in memory, and on.
    @discardableResult
    public func run(computer: GradientComputer? = nil, remote: RemoteUpdate? = nil) throws -> TrainResult {
        let cfg = config, B = cfg.batch, T = cfg.bptt
        let computer = computer ?? WindowThreads(model: model, steps: T, columns: 0..<B, threads: cfg.threads)
        try AtomicFile.prepareDirectory(options.outDir)
        var metrics = try MetricsLog(path: options.outDir + "/metrics.jsonl", keepThroughStep: step)
        let progress = Progress(total: totalSteps, windowsPerEpoch: windowsPerEpoch, interval: options.logInterval)
        log(cfg.summary)
        log("data: \(options.dataPath) \(corpus.tokens.count) chars, vocabulary \(corpus.vocabulary.count); \(windowsPerEpoch) windows per epoch, \(budget == nil ? "\(totalSteps) steps" : "steps planned from the pace to end within the budget"); \(model.parameterCount) parameters; BLAS \(BLAS.coreName)")
        if step > 0 { log("resumed at step \(step) (epoch \(epoch + 1), window \(window))") }
        self.remote = remote
        // With the update made elsewhere: the last checkpoint's state, to go back to when its owners lose theirs.
        var rollback = remote.map { _ in Rollback(of: self) }
        var needsSeed = remote != nil, rollbacks = 0, recoveries = 0
        // Temporary files of a run killed mid-write; this run is now the directory's only writer.
        for name in AtomicFile.removeLeftovers(in: options.outDir) { log("removed \(options.outDir)/\(name), left by an interrupted write") }
        var tokens = [Int32](repeating: 0, count: (T + 1) * B)
        let start = Date()
        var lastLoss = Double.nan
        var lastCheckpointStep = step
        let startStep = step, stepCap = options.explicitSteps ?? config.steps ?? Int.max / 4
        let updateThreads = options.updateThreads ?? cfg.threads

        training: while step < totalSteps {
            do {
                // The first seeding, one after a loss, or new owners once the state here is a checkpoint's.
                if let remote, needsSeed || (remote.wantsSeed && !remoteAhead) {
                    try remote.seed(params: params, average: average, optimizer: optimizer)
                    needsSeed = false; remoteAhead = false
                }
                let t0 = Date()
                let lossSum: Double
                // The mean gradient's blocks' sums of squares; with the update elsewhere the gradient is summed and
                // its norm found there too.
                var squares: [Double] = []
                do {
                    lossSum = try tokens.withUnsafeMutableBufferPointer { w -> Double in
                        guard let base = w.baseAddress else { return .nan }
                        trainStreams.window(startRow: window * T, steps: T, into: base)
                        let dropout = DropoutKey(seed: cfg.seed, step: step)
                        if remote != nil {
                            return try computer.computeGradients(params: params, grads: grads, window: base, steps: T,
                                                                 totalColumns: B, state: state, dropout: dropout)
                        }
                        let (loss, s) = try computer.meanGradients(params: params, grads: grads, window: base, steps: T,
                                                                   totalColumns: B, state: state, dropout: dropout,
                                                                   meanOver: B * T, threads: updateThreads)
                        squares = s
                        return loss
                    }
                } catch is StopTraining {
                    // Parameters, state and cursor are still those of the last completed step.
                    if lastCheckpointStep != step { try bringBack(); try saveCheckpoint(elapsed: elapsedBefore + Date().timeIntervalSince(start)) }
                    progress.finishLine()
                    log("stopped by signal at step \(step); resume with --resume \(options.outDir)")
                    break training
                }
                let loss = lossSum / Double(B * T)
                guard loss.isFinite else {
                    throw BardError.diverged("training diverged at step \(step + 1) (loss \(loss)); \(keptCheckpoint(lastCheckpointStep)); lower --lr or set --clip")
                }
                optimizer.lr = LearningRate.at(step: step, epoch: epoch, totalSteps: totalSteps, config: cfg)
                // Clipping, the update, the average and the finiteness checks in one pass on every update thread (the
                // mean and its norm came with the gradient). The parameters are only written once the norm is known
                // to be finite.
                let checkNorm = { (norm: Double) throws in
                    guard norm.isFinite else {
                        throw BardError.diverged("training diverged at step \(self.step + 1) (loss \(loss), gradient norm \(norm)); \(self.keptCheckpoint(lastCheckpointStep)); lower --lr or set --clip")
                    }
                }
                let report: Optimizer.StepReport
                if let remote {
                    report = try remote.update(lr: optimizer.lr, clip: cfg.clip, decay: cfg.ema ?? 0, checkNorm: checkNorm)
                    remoteAhead = true
                } else {
                    report = try optimizer.step(params: params, mean: grads, squares: squares, clip: cfg.clip, average: average,
                                                decay: cfg.ema ?? 0, threads: updateThreads, checkNorm: checkNorm)
                }
                let norm = report.norm
                // A finite loss and gradient do not make a finite update (lr * g, or Adam's g^2, can overflow): this step is
                // the diverged one, and nothing it produced may reach a checkpoint.
                let paramsFinite = report.paramsFinite
                guard paramsFinite, report.momentsFinite else {
                    let what = paramsFinite ? "the optimiser moments" : "the parameters"
                    throw BardError.diverged("training diverged at step \(step + 1) (loss \(loss), gradient norm \(norm), but the update made \(what) overflow); \(keptCheckpoint(lastCheckpointStep)); lower --lr or set --clip")
                }
                step += 1; window += 1; chars += B * T
                lastLoss = loss
                minLoss = min(minLoss, loss)
                let elapsed = elapsedBefore + Date().timeIntervalSince(start)
                if let plan = budget, step - startStep >= 2 {
                    // Plan again from this run's own pace: wall time per step, everything included.
                    let pace = Date().timeIntervalSince(start) / Double(step - startStep)
                    totalSteps = min(stepCap, plan.totalSteps(step: step, elapsed: elapsed, stepSeconds: pace))
                    progress.total = totalSteps
                }
                progress.record(stepSeconds: Date().timeIntervalSince(t0), chars: B * T)
                var record = MetricsRecord()
                record.step = step; record.epoch = epoch + 1; record.chars = chars; record.trainLoss = loss
                record.charsPerS = progress.charsPerSecond; record.lr = optimizer.lr; record.time = elapsed; record.gradNorm = norm
                computer.annotate(&record)
                if remote != nil { record.rollbacks = rollbacks }
                let epochEnds = window == windowsPerEpoch
                let checkpointDue = epochEnds || (options.checkpointEvery > 0 && step % options.checkpointEvery == 0) || step == totalSteps
                if checkpointDue || stopRequested != 0 || stopAfter == step { try bringBack() }
                // A run that ends mid-epoch is validated at its end, and the record says so like an epoch end's.
                if step == totalSteps && !epochEnds, let v = validateBoth() {
                    record.valLoss = v.raw; record.valPerplexity = exp(v.raw); record.valLossEma = v.averaged
                    lastValLoss = v.averaged ?? v.raw
                }
                if epochEnds {
                    epoch += 1; window = 0
                    if !cfg.carryState { state.reset(cfg.initialState) }
                    if let v = validateBoth() {
                        record.valLoss = v.raw; record.valPerplexity = exp(v.raw); record.valLossEma = v.averaged
                        lastValLoss = v.averaged ?? v.raw
                    }
                    progress.finishLine()
                    log(String(format: "epoch %d done: step %d, train loss %.4f, val loss %@, %.0f chars/s, %.0f s",
                               epoch, step, loss, (lastValLoss.map { String(format: "%.4f (ppl %.2f)", $0, exp($0)) } ?? "n/a")
                                + (record.valLossEma != nil ? String(format: " averaged, %.4f raw", record.valLoss ?? .nan) : ""),
                               progress.charsPerSecond, elapsed))
                    let text = sample(length: options.sampleLength)
                    onSample?(text)
                    log("sample: " + text.replacingOccurrences(of: "\n", with: "\n        "))
                } else {
                    let left = budget.map { "left " + formatDuration($0.seconds - elapsed) }
                    let suffix = [left, computer.statusSuffix.isEmpty ? nil : computer.statusSuffix].compactMap { $0 }.joined(separator: " | ")
                    progress.show(step: step, epoch: epoch, window: window, loss: loss, minLoss: minLoss, suffix: suffix)
                }
                metrics.write(record)
                onRecord?(record)
                if checkpointDue {
                    // A budget run that ends has spent its budget (what is left went to the final validation and this
                    // checkpoint), so a resume of it is a complete run.
                    try saveCheckpoint(elapsed: step == totalSteps ? max(elapsed, budget?.seconds ?? 0) : elapsed)
                    lastCheckpointStep = step
                    if remote != nil { rollback = Rollback(of: self); recoveries = 0 }
                }
                if stopRequested != 0 || stopAfter == step {
                    if lastCheckpointStep != step { try saveCheckpoint(elapsed: elapsed) }
                    progress.finishLine()
                    log("stopped by signal at step \(step); resume with --resume \(options.outDir)")
                    break training
                }
            } catch let lost as RemoteStateLost {
                // An owner of the remote state is gone: back to the last checkpoint (in memory), seed the owners that
                // remain (or a replacement) with it, and on. A run that cannot take a step between losses stops.
                guard let back = rollback else { throw lost }
                recoveries += 1
                guard recoveries <= Trainer.maxRecoveries else {
                    throw BardError.io("\(lost.reason); \(recoveries) losses since the last checkpoint: stopping; \(keptCheckpoint(lastCheckpointStep))")
                }
                progress.finishLine()
                if stopRequested != 0 {
                    // A stop asked for while the state was being lost: the last checkpoint on disk stands.
                    log("\(lost.reason); stopped by signal at step \(back.step), the last checkpoint; resume with --resume \(options.outDir)")
                    back.restore(into: self)
                    break training
                }
                log("\(lost.reason): going back to step \(back.step) (the last checkpoint) and on without it")
                back.restore(into: self)
                metrics = try MetricsLog(path: options.outDir + "/metrics.jsonl", keepThroughStep: step)
                needsSeed = true; remoteAhead = false; rollbacks += 1
            }
        }
        progress.finishLine()
        return TrainResult(step: step, trainLoss: lastLoss, valLoss: lastValLoss)
    }

    /// The parameters, average and optimiser state back from where the updates were made, if they are behind.
    func bringBack() throws {
        guard let remote, remoteAhead else { return }
        try remote.gather(params: params, average: average, optimizer: optimizer)
        remoteAhead = false
    }

    /// Where a diverged run's last good state is, for its error message.
    func keptCheckpoint(_ lastCheckpointStep: Int) -> String {
        // A fresh run that has not checkpointed yet has no good checkpoint (out/ may hold an older run's).
        lastCheckpointStep > 0 ? "the last good checkpoint is \(modelPath) (step \(lastCheckpointStep))"
            : "no checkpoint was written before it" + (options.checkpointEvery == 0 ? " (--checkpoint-every N keeps one every N steps)" : "")
    }

    /// The validation of the raw parameters and, when the run keeps one, of the average; timed together for the
    /// budget's plan, since the end of a run does both.
    func validateBoth() -> (raw: Double, averaged: Double?)? {
        let t0 = Date()
        defer { budget?.measuredValidation = Date().timeIntervalSince(t0) }
        guard let raw = validate() else { return nil }
        return (raw, validateAverage())
    }

    /// Validation loss over the held-out part, in `batch` columns with carried state from the initial state.
    public func validate() -> Double? {
        let v = evaluate(model: model, params: params, tokens: valTokens, columns: config.batch, bptt: config.bptt,
                         threads: config.threads)
        return v.chars > 0 ? v.loss : nil
    }

    /// Validation loss of the averaged parameters, when the run keeps an average.
    func validateAverage() -> Double? {
        guard let average else { return nil }
        let v = evaluate(model: model, params: average, tokens: valTokens, columns: config.batch, bptt: config.bptt,
                         threads: config.threads)
        return v.chars > 0 ? v.loss : nil
    }

    func sample(length: Int) -> String {
        var sampler = Sampler(temperature: 0.8, seed: rng.next())
        var text = ""
        try? generateText(model: model, params: average ?? params, vocabulary: corpus.vocabulary, prime: "", length: length,
                          sampler: &sampler) { text += $0 }
        return text
    }

    public func saveCheckpoint(elapsed: Double) throws {
        // The last line of defence for "the last good checkpoint": never replace a good one with non-finite numbers.
        guard params.allFinite, optimizer.m.allFinite, optimizer.v.allFinite else {
            throw BardError.diverged("not writing a checkpoint at step \(step): the parameters or optimiser moments are not finite; lower --lr or set --clip")
        }
        var ts = TrainingState(step: step, epoch: epoch, window: window, lr: optimizer.lr, optimizerStep: optimizer.step,
                               m: optimizer.m.array, v: optimizer.v.array, h: state.h.array, c: state.c.array, rng: rng,
                               chars: chars, minLoss: minLoss, elapsed: elapsed, corpusSHA256: corpus.sha256)
        ts.corpusPath = URL(fileURLWithPath: options.dataPath).standardizedFileURL.path
        if average != nil { ts.rawParams = params.array }
        // The previous state is kept until the new model is in place, so whenever a crash strikes, one of the two
        // state files matches model.safetensors (see `trainingState(matching:in:)`). Each file is replaced atomically.
        if FileManager.default.fileExists(atPath: statePath) {
            _ = rename(statePath, previousStatePath)
        }
        try ts.save(to: statePath)
        try ModelCheckpoint(config: config, vocabulary: corpus.vocabulary, params: average ?? params, step: step, epoch: epoch,
                            valLoss: lastValLoss).save(to: modelPath)
    }
}
