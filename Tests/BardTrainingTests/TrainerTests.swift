import BardMetrics
import BardModel
import BardNumerics
import BardTraining
import Foundation
import XCTest

/// Generated text, so the suite needs neither the network nor ../shared.
func syntheticText(_ n: Int, seed: UInt64 = 1) -> String {
    let words = ["the", "king", "shall", "not", "love", "thee", "my", "lord", "and", "her", "é", "—", "ROMEO:", "\n"]
    var rng = RNG(seed: seed), s = ""
    while s.unicodeScalars.count < n { s += words[Int(rng.next() % UInt64(words.count))] + " " }
    return String(String.UnicodeScalarView(s.unicodeScalars.prefix(n)))
}

final class TrainerTests: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = NSTemporaryDirectory() + "bard-trainer-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func smallConfig() -> Config {
        var c = Config()
        c.layers = 2; c.embed = 8; c.hidden = 12; c.dropout = 0.2; c.batch = 4; c.bptt = 6; c.lr = 0.01; c.seed = 5
        return c
    }

    func trainer(_ cfg: Config, corpus: Corpus, out: String, resume: Bool = false) throws -> Trainer {
        var o = TrainOptions(config: cfg, dataPath: "synthetic")
        o.outDir = out; o.resume = resume; o.sampleLength = 10; o.logInterval = 1e9
        o.explicitSteps = cfg.steps
        return try Trainer(options: o, corpus: corpus, log: { _ in })
    }

    /// The learning rate is a function of the step: exp decays per epoch, cosine ends at lr/10 and linear at 0 on
    /// the last step, warmup ramps up first.
    func testLearningRateSchedules() {
        var c = smallConfig()
        c.lr = 1; c.lrDecay = 0.5
        XCTAssertEqual(LearningRate.at(step: 7, epoch: 0, totalSteps: 100, config: c), 1)
        XCTAssertEqual(LearningRate.at(step: 7, epoch: 2, totalSteps: 100, config: c), 0.25)
        c.schedule = .cosine
        XCTAssertEqual(LearningRate.at(step: 0, epoch: 0, totalSteps: 101, config: c), 1, accuracy: 1e-12)
        XCTAssertEqual(LearningRate.at(step: 50, epoch: 3, totalSteps: 101, config: c), 0.55, accuracy: 1e-12)
        XCTAssertEqual(LearningRate.at(step: 100, epoch: 9, totalSteps: 101, config: c), 0.1, accuracy: 1e-12)
        c.schedule = .linear
        XCTAssertEqual(LearningRate.at(step: 25, epoch: 0, totalSteps: 101, config: c), 0.75, accuracy: 1e-12)
        XCTAssertEqual(LearningRate.at(step: 100, epoch: 0, totalSteps: 101, config: c), 0, accuracy: 1e-12)
        c.warmup = 10
        XCTAssertEqual(LearningRate.at(step: 0, epoch: 0, totalSteps: 111, config: c), 0.1, accuracy: 1e-12)
        XCTAssertEqual(LearningRate.at(step: 4, epoch: 0, totalSteps: 111, config: c), 0.5, accuracy: 1e-12)
        XCTAssertEqual(LearningRate.at(step: 10, epoch: 0, totalSteps: 111, config: c), 1, accuracy: 1e-12)
        XCTAssertEqual(LearningRate.at(step: 110, epoch: 0, totalSteps: 111, config: c), 0, accuracy: 1e-12)
    }

    /// A cosine schedule with warmup resumes exactly: the rate comes from the step, not from a stored value.
    func testScheduledRunResumesExactly() throws {
        let corpus = Corpus(text: syntheticText(3000))
        var cfg = smallConfig()
        cfg.schedule = .cosine; cfg.warmup = 20
        let straight = try trainer({ cfg.steps = 120; return cfg }(), corpus: corpus, out: dir + "/a")
        try straight.run()
        var half = cfg
        half.steps = 120
        // Stop halfway through the same 120-step run (as a signal would), then resume it.
        let first = try trainer(half, corpus: corpus, out: dir + "/b")
        first.stopAfter = 60
        try first.run()
        let resumed = try trainer(half, corpus: corpus, out: dir + "/b", resume: true)
        XCTAssertEqual(resumed.step, 60)
        try resumed.run()
        XCTAssertEqual(resumed.params.array, straight.params.array)
        let lrs = try String(contentsOfFile: dir + "/a/metrics.jsonl", encoding: .utf8).split(separator: "\n").map {
            (try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["lr"] as? Double ?? -1
        }
        XCTAssertEqual(lrs.first ?? 0, cfg.lr / 20, accuracy: 1e-12)
        XCTAssertEqual(lrs.last ?? 0, cfg.lr / 10, accuracy: 1e-12)
    }

    func testBudgetPlanParsesDurationsAndPlansFromThePace() {
        XCTAssertEqual(BudgetPlan.parse("10m"), 600)
        XCTAssertEqual(BudgetPlan.parse("1h30m"), 5400)
        XCTAssertEqual(BudgetPlan.parse("90s"), 90)
        XCTAssertEqual(BudgetPlan.parse("45"), 45)
        XCTAssertEqual(BudgetPlan.parse("1.5h"), 5400)
        for bad in ["", "10x", "m", "-5m", "0", "5m3"] { XCTAssertNil(BudgetPlan.parse(bad), bad) }
        var plan = BudgetPlan(seconds: 100, validationChars: 1000, stepChars: 100)
        // 0.1 s a step; the end costs 1.2 x (a validation: 10 steps' characters at 0.4 of the cost, 0.4 s) + 1 s.
        XCTAssertEqual(plan.totalSteps(step: 10, elapsed: 1, stepSeconds: 0.1), 10 + Int((100 - 1 - 1.48) / 0.1))
        plan.measuredValidation = 5
        XCTAssertEqual(plan.totalSteps(step: 10, elapsed: 1, stepSeconds: 0.1), 10 + Int((100 - 1 - 7) / 0.1))
        XCTAssertEqual(plan.totalSteps(step: 500, elapsed: 99, stepSeconds: 0.1), 500, "a spent budget ends the run now")
    }

    /// A run with a budget ends by itself with its final validation and checkpoint inside the budget (plus 5% and a
    /// second for a loaded machine), having used most of it; a resumed one counts the time already spent.
    func testBudgetEndsTheRunInTime() throws {
        let corpus = Corpus(text: syntheticText(6000))
        var cfg = smallConfig()
        cfg.budget = 3; cfg.schedule = .cosine
        let t = try trainer(cfg, corpus: corpus, out: dir + "/budget")
        let started = Date()
        let result = try t.run()
        let took = Date().timeIntervalSince(started)
        XCTAssertLessThan(took, 3 * 1.05 + 1, "the run overran its budget")
        XCTAssertGreaterThan(took, 1.5, "the run left most of its budget unused")
        XCTAssertNotNil(result.valLoss)
        let ckpt = try ModelCheckpoint.load(path: dir + "/budget/model.safetensors")
        XCTAssertEqual(ckpt.step, result.step)
        XCTAssertEqual(t.totalSteps, result.step)
        // Resumed, the spent budget is a complete run.
        let again = try trainer(cfg, corpus: corpus, out: dir + "/budget", resume: true)
        XCTAssertEqual(again.totalSteps, again.step)
    }

    /// A budget run stopped part way and resumed plans its length from the pace of the steps already done, so its
    /// schedule is in the right place from its first step (not at the start of a run of unknown length).
    func testResumedBudgetRunPlansFromItsPace() throws {
        let corpus = Corpus(text: syntheticText(6000))
        var cfg = smallConfig()
        cfg.budget = 60; cfg.schedule = .cosine
        let first = try trainer(cfg, corpus: corpus, out: dir + "/part")
        first.stopAfter = 5
        try first.run()
        let again = try trainer(cfg, corpus: corpus, out: dir + "/part", resume: true)
        XCTAssertEqual(again.step, 5)
        XCTAssertGreaterThan(again.totalSteps, 5)
        XCTAssertLessThan(again.totalSteps, 10_000_000, "planned from the pace, not left open")
        XCTAssertEqual(again.budget?.seconds, 60)
    }

    /// With --ema the model file holds the average (validated beside the raw parameters in metrics), and a resume
    /// continues both exactly.
    func testAveragedRunResumesExactly() throws {
        let corpus = Corpus(text: syntheticText(3000))
        var cfg = smallConfig()
        cfg.ema = 0.9; cfg.steps = 120
        let straight = try trainer(cfg, corpus: corpus, out: dir + "/a")
        try straight.run()
        let first = try trainer(cfg, corpus: corpus, out: dir + "/b")
        first.stopAfter = 60
        try first.run()
        let resumed = try trainer(cfg, corpus: corpus, out: dir + "/b", resume: true)
        try resumed.run()
        XCTAssertEqual(resumed.params.array, straight.params.array)
        XCTAssertEqual(resumed.average?.array, straight.average?.array)
        let saved = try ModelCheckpoint.load(path: dir + "/a/model.safetensors").params.array
        XCTAssertEqual(saved, straight.average?.array, "the model file holds the average")
        XCTAssertNotEqual(saved, straight.params.array)
        let last = try String(contentsOfFile: dir + "/a/metrics.jsonl", encoding: .utf8).split(separator: "\n").last.map {
            MetricsRecord.decode(line: $0)
        }
        XCTAssertNotNil(last??.valLossEma)
        XCTAssertNotNil(last??.valLoss)
    }

    /// N steps straight equal N/2, a checkpoint, a resume and N/2 more, bit for bit, across an epoch boundary
    /// (state reset, lr decay) with dropout and Adam.
    func testResumeContinuesExactly() throws {
        let corpus = Corpus(text: syntheticText(3000))
        var cfg = smallConfig()
        let straight = try trainer({ cfg.steps = 200; return cfg }(), corpus: corpus, out: dir + "/a")
        XCTAssertLessThan(straight.windowsPerEpoch, 200, "the run must cross an epoch boundary")
        try straight.run()
        cfg.steps = 100
        try trainer(cfg, corpus: corpus, out: dir + "/b").run()
        cfg.steps = 200
        let resumed = try trainer(cfg, corpus: corpus, out: dir + "/b", resume: true)
        XCTAssertEqual(resumed.step, 100)
        try resumed.run()
        XCTAssertEqual(resumed.params.array, straight.params.array)
        let a = try ModelCheckpoint.load(path: dir + "/a/model.safetensors")
        let b = try ModelCheckpoint.load(path: dir + "/b/model.safetensors")
        XCTAssertEqual(a.params.array, b.params.array)
        XCTAssertEqual(a.step, 200)
        // metrics.jsonl: one line per step, with the required keys.
        let lines = try String(contentsOfFile: dir + "/a/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 200)
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as! [String: Any]
        for key in ["step", "epoch", "chars", "train_loss", "chars_per_s", "lr", "time"] { XCTAssertNotNil(first[key], key) }
        // The run's final validation (step 200 is mid-epoch) is in its last record, as in the checkpoint.
        let last = try JSONSerialization.jsonObject(with: Data(lines[lines.count - 1].utf8)) as! [String: Any]
        XCTAssertNotEqual(200 % straight.windowsPerEpoch, 0)
        let lastVal = try XCTUnwrap(last["val_loss"] as? Double), checkpointVal = try XCTUnwrap(a.valLoss)
        XCTAssertEqual(lastVal, checkpointVal, accuracy: 1e-12)  // the same number, up to its JSON printing
    }

    /// A crash after the new training state is written but before the new model replaces the old: the previous
    /// state file still matches the model, so the resume is exact; with neither matching, the error says so.
    func testResumeAfterACrashBetweenStateAndModelWrites() throws {
        let corpus = Corpus(text: syntheticText(3000))
        var cfg = smallConfig()
        cfg.steps = 60
        let straight = try trainer(cfg, corpus: corpus, out: dir + "/a")
        try straight.run()
        cfg.steps = 30
        try trainer(cfg, corpus: corpus, out: dir + "/b").run()
        let fm = FileManager.default
        try fm.copyItem(atPath: dir + "/b/model.safetensors", toPath: dir + "/model-30")
        cfg.steps = 40
        try trainer(cfg, corpus: corpus, out: dir + "/b", resume: true).run()
        // The crash: the model of step 30 is still in place, the state of step 40 is already written.
        try fm.removeItem(atPath: dir + "/b/model.safetensors")
        try fm.copyItem(atPath: dir + "/model-30", toPath: dir + "/b/model.safetensors")
        cfg.steps = 60
        let resumed = try trainer(cfg, corpus: corpus, out: dir + "/b", resume: true)
        XCTAssertEqual(resumed.step, 30)
        try resumed.run()
        XCTAssertEqual(resumed.params.array, straight.params.array)
        try fm.removeItem(atPath: dir + "/b/training-state.previous.safetensors")
        try fm.removeItem(atPath: dir + "/b/model.safetensors")
        try fm.copyItem(atPath: dir + "/model-30", toPath: dir + "/b/model.safetensors")
        XCTAssertThrowsError(try trainer(cfg, corpus: corpus, out: dir + "/b", resume: true)) {
            XCTAssertTrue("\($0)".contains("model is at step 30 but training state at 60"), "\($0)")
        }
    }

    /// Training lowers the loss (a smoke test that learning happens at all).
    func testLossFalls() throws {
        let corpus = Corpus(text: syntheticText(6000))
        var cfg = smallConfig()
        cfg.steps = 150; cfg.dropout = 0; cfg.lr = 0.02
        let t = try trainer(cfg, corpus: corpus, out: dir + "/l")
        let before = t.validate()!
        let r = try t.run()
        XCTAssertLessThan(r.valLoss!, before - 0.5)
    }

    /// Validation counts every target once, whatever the window length; two threads give the one-thread result.
    func testEvaluationIndependentOfWindowAndThreads() {
        let corpus = Corpus(text: syntheticText(2000))
        var cfg = smallConfig()
        cfg.cell = .gru
        let model = Model(config: cfg, vocabularySize: corpus.vocabulary.count)
        let params = model.makeParameters(seed: 2)
        let a = evaluate(model: model, params: params, tokens: corpus.tokens[...], columns: 5, bptt: 7, threads: 1)
        let b = evaluate(model: model, params: params, tokens: corpus.tokens[...], columns: 5, bptt: 400, threads: 2)
        XCTAssertEqual(a.chars, 5 * (2000 / 5 - 1))
        XCTAssertEqual(a.chars, b.chars)
        XCTAssertEqual(a.loss, b.loss, accuracy: 1e-5)
    }

    /// Threads share a window's columns and every parameter's rows: 2 and 3 threads give one thread's loss, gradient
    /// and carried state (an LSTM of two layers with dropout, 7 columns that do not divide evenly).
    func testThreadsComputeTheOneThreadGradient() {
        let corpus = Corpus(text: syntheticText(2000))
        let cfg = smallConfig()
        let model = Model(config: cfg, vocabularySize: corpus.vocabulary.count)
        let params = model.makeParameters(seed: 3)
        let columns = 7, steps = cfg.bptt
        let window = Array(corpus.tokens.prefix((steps + 1) * columns))
        func gradient(threads: Int) -> (loss: Double, grads: [Float], h: [Float]) {
            let runner = WindowThreads(model: model, steps: steps, columns: 0..<columns, threads: threads)
            let grads = FloatBuffer(count: model.parameterCount), state = model.makeState(columns: columns)
            let loss = window.withUnsafeBufferPointer { w in
                runner.run(params: params, grads: grads, window: w.baseAddress!, steps: steps, totalColumns: columns,
                           state: state, dropout: DropoutKey(seed: 1, step: 2))
            }
            return (loss, grads.array, state.h.array)
        }
        let one = gradient(threads: 1)
        XCTAssertGreaterThan(one.grads.map(abs).max()!, 0.01)
        for threads in [2, 3] {
            let many = gradient(threads: threads)
            XCTAssertEqual(one.loss, many.loss, accuracy: 1e-5 * one.loss, "\(threads) threads")
            let worst = zip(one.grads, many.grads).map { abs($0 - $1) / max(1, abs($0)) }.max()!
            XCTAssertLessThan(worst, 1e-5, "\(threads) threads")
            let worstState = zip(one.h, many.h).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worstState, 1e-6, "\(threads) threads")
        }
    }

    func testTooShortCorpusIsAClearError() {
        var cfg = smallConfig()
        cfg.batch = 32; cfg.bptt = 50
        XCTAssertThrowsError(try trainer(cfg, corpus: Corpus(text: syntheticText(500)), out: dir + "/s")) {
            XCTAssertTrue("\($0)".contains("corpus too short"), "\($0)")
        }
    }

    /// Every checkpoint file in `out` holds finite numbers only (model, training state, previous training state).
    func assertCheckpointsFinite(_ out: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasSuffix(".safetensors") }
        XCTAssertTrue(names.contains("model.safetensors"), "\(names)", file: file, line: line)
        for name in names {
            for t in try Safetensors.read(path: out + "/" + name).tensors {
                XCTAssertTrue(t.values.allSatisfy(\.isFinite), "\(name): \(t.name) is not finite", file: file, line: line)
            }
        }
    }

    /// A diverging run stops with a clear error and leaves the last good checkpoint readable. Checkpointing every step,
    /// the diverged step is the one after the last checkpoint, whether the loss or the update overflowed first.
    func testDivergenceKeepsLastGoodCheckpoint() throws {
        let corpus = Corpus(text: syntheticText(3000))
        var cfg = smallConfig()
        cfg.optimizer = .sgd; cfg.clip = 0; cfg.lr = 1e30; cfg.steps = 50; cfg.dropout = 0
        var o = TrainOptions(config: cfg, dataPath: "synthetic")
        o.outDir = dir + "/d"; o.checkpointEvery = 1; o.logInterval = 1e9
        let t = try Trainer(options: o, corpus: corpus, log: { _ in })
        XCTAssertThrowsError(try t.run()) { e in
            guard case BardError.diverged(let m) = e else { return XCTFail("\(e)") }
            XCTAssertTrue(m.contains("the last good checkpoint is \(self.dir)/d/model.safetensors (step "), m)
            guard let good = try? ModelCheckpoint.load(path: self.dir + "/d/model.safetensors").step else { return XCTFail("no checkpoint") }
            XCTAssertTrue(m.hasPrefix("training diverged at step \(good + 1) ") && m.contains("(step \(good))"), m)
        }
        try assertCheckpointsFinite(dir + "/d")
        let ck = try ModelCheckpoint.load(path: dir + "/d/model.safetensors")
        XCTAssertTrue(ck.params.allFinite)
        // Without checkpoints, the message does not point at a file this run never wrote.
        o.outDir = dir + "/e"; o.checkpointEvery = 0
        XCTAssertThrowsError(try Trainer(options: o, corpus: corpus, log: { _ in }).run()) { e in
            guard case BardError.diverged(let m) = e else { return XCTFail("\(e)") }
            XCTAssertTrue(m.contains("no checkpoint was written before it"), m)
        }
    }

    /// The step whose update overflows is the diverged one, although its loss and gradient were finite: SGD at lr 1e30
    /// with a gradient of 1e10 at step 3 puts -inf into the parameters, and no checkpoint may hold it. With Adam the
    /// parameters stay finite but the second moment (g^2 of 1e30) does not, which is as fatal.
    func testOverflowingUpdateIsTheDivergedStep() throws {
        let corpus = Corpus(text: syntheticText(3000))
        for (kind, gradients, what) in [(OptimizerKind.sgd, [Float(1e-3), 1e-3, 1e10], "the parameters"),
                                        (.adam, [1e-3, 1e-3, 1e30], "the optimiser moments")] {
            var cfg = smallConfig()
            cfg.optimizer = kind; cfg.clip = 0; cfg.lr = kind == .sgd ? 1e30 : 0.01; cfg.steps = 10
            var o = TrainOptions(config: cfg, dataPath: "synthetic")
            o.outDir = dir + "/\(kind)"; o.checkpointEvery = 1; o.logInterval = 1e9
            let t = try Trainer(options: o, corpus: corpus, log: { _ in })
            XCTAssertThrowsError(try t.run(computer: ScriptedGradients(gradients)), "\(kind)") { e in
                guard case BardError.diverged(let m) = e else { return XCTFail("\(e)") }
                XCTAssertTrue(m.hasPrefix("training diverged at step 3 (loss 1.0, "), m)
                XCTAssertTrue(m.contains("update made \(what) overflow") && m.contains("model.safetensors (step 2)"), m)
                XCTAssertFalse(m.contains("\n"), m)
            }
            XCTAssertEqual(try ModelCheckpoint.load(path: o.outDir + "/model.safetensors").step, 2)
            try assertCheckpointsFinite(o.outDir)
            // Nothing else writes the overflowed state either.
            XCTAssertThrowsError(try t.saveCheckpoint(elapsed: 0))
            try assertCheckpointsFinite(o.outDir)
        }
    }

    /// A non-finite gradient norm with a finite loss is the diverged step, refused before its update is written.
    func testNonFiniteNormIsRefusedBeforeTheUpdate() throws {
        let corpus = Corpus(text: syntheticText(3000))
        var cfg = smallConfig()
        cfg.steps = 10
        var o = TrainOptions(config: cfg, dataPath: "synthetic")
        o.outDir = dir + "/norm"; o.checkpointEvery = 1; o.logInterval = 1e9
        let t = try Trainer(options: o, corpus: corpus, log: { _ in })
        XCTAssertThrowsError(try t.run(computer: ScriptedGradients([1e-3, 1e-3, .nan]))) { e in
            guard case BardError.diverged(let m) = e else { return XCTFail("\(e)") }
            XCTAssertTrue(m.hasPrefix("training diverged at step 3 (loss 1.0, gradient norm nan)"), m)
            XCTAssertTrue(m.contains("model.safetensors (step 2)"), m)
        }
        let kept = try ModelCheckpoint.load(path: o.outDir + "/model.safetensors")
        XCTAssertEqual(kept.step, 2)
        XCTAssertEqual(kept.params.array, t.params.array, "the refused step changed the parameters")
        XCTAssertEqual(t.optimizer.step, 2)
    }

    /// An --out that cannot be a directory fails in init (before a coordinator waits for workers), in one line
    /// naming it, without Foundation's wording.
    func testBadOutDirectoryIsAOneLineErrorAtInit() throws {
        let corpus = Corpus(text: syntheticText(3000))
        let file = dir + "/plain-file"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        for out in [file, file + "/run"] {
            XCTAssertThrowsError(try trainer(smallConfig(), corpus: corpus, out: out)) { e in
                let m = "\(e)"
                XCTAssertEqual(e as? BardError, .io(m), m)
                XCTAssertTrue(m.contains(out), m)
                XCTAssertFalse(m.contains("\n") || m.contains("NSCocoaErrorDomain") || m.contains("couldn"), m)
            }
        }
        XCTAssertThrowsError(try trainer(smallConfig(), corpus: corpus, out: dir + "/never-made", resume: true)) { e in
            XCTAssertTrue("\(e)".contains(self.dir + "/never-made"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/never-made"), "a failed resume creates nothing")
        // A good one is created with its parents.
        XCTAssertNoThrow(try trainer(smallConfig(), corpus: corpus, out: dir + "/a/b/c"))
        var isDirectory: ObjCBool = false
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/a/b/c", isDirectory: &isDirectory) && isDirectory.boolValue)
    }

    /// Temporary files a killed run left in the out dir are gone once training starts; others stay.
    func testTrainingRemovesLeftoverTemporaryFiles() throws {
        let out = dir + "/left"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let orphan = out + "/.model.safetensors.00000000deadbeef.bard-tmp", notes = out + "/notes.txt"
        XCTAssertTrue(FileManager.default.createFile(atPath: orphan, contents: Data(count: 100)))
        XCTAssertTrue(FileManager.default.createFile(atPath: notes, contents: Data("mine".utf8)))
        var cfg = smallConfig()
        cfg.steps = 2
        var lines: [String] = []
        var o = TrainOptions(config: cfg, dataPath: "synthetic")
        o.outDir = out; o.logInterval = 1e9; o.sampleLength = 5
        try Trainer(options: o, corpus: Corpus(text: syntheticText(3000)), log: { lines.append($0) }).run()
        XCTAssertFalse(FileManager.default.fileExists(atPath: orphan))
        XCTAssertTrue(FileManager.default.fileExists(atPath: notes))
        XCTAssertTrue(lines.contains { $0.contains(".model.safetensors.00000000deadbeef.bard-tmp") }, "\(lines)")
        let names = try FileManager.default.contentsOfDirectory(atPath: out)
        XCTAssertFalse(names.contains { AtomicFile.isTemporaryName($0) }, "\(names)")
        var st = stat()
        XCTAssertEqual(stat(out + "/model.safetensors", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
    }
}

/// A gradient computer that ignores the model: every step's mean loss is 1 and every gradient value is the step's
/// entry in `gradients` (the last repeated), so a test can choose exactly when an update overflows.
final class ScriptedGradients: GradientComputer {
    let gradients: [Float]
    var calls = 0
    init(_ gradients: [Float]) { self.gradients = gradients }

    func computeGradients(params: FloatBuffer, grads: FloatBuffer, window: UnsafePointer<Int32>, steps: Int,
                          totalColumns: Int, state: RecurrentState, dropout: DropoutKey?) throws -> Double {
        let g = gradients[min(calls, gradients.count - 1)]
        calls += 1
        // The trainer divides the sums by the number of targets, as for a real loss sum.
        let n = Float(steps * totalColumns)
        for i in 0..<grads.count { grads[i] += g * n }
        return Double(steps * totalColumns)
    }
}
