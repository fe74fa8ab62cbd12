import BardModel
import BardNumerics
import Foundation
import XCTest

final class BatchingTests: XCTestCase {
    /// The chapter's layout: column j is tokens[j*rows ..< (j+1)*rows]; inputs row r, targets row r+1.
    func testChapterColumnLayout() {
        let tokens = (0..<26).map(Int32.init)  // 26 tokens, 3 columns -> 8 rows, 2 dropped
        let s = ColumnStreams(tokens, columns: 3)
        XCTAssertEqual(s.rows, 8)
        XCTAssertEqual((0..<8).map { s.token(row: $0, column: 0) }, Array(0..<8))
        XCTAssertEqual((0..<8).map { s.token(row: $0, column: 2) }, Array(16..<24))
        // n_bptt = (rows - 1) // bptt
        XCTAssertEqual(s.trainingWindows(bptt: 3), 2)
        XCTAssertEqual(s.trainingWindows(bptt: 7), 1)
        XCTAssertEqual(s.targetCount, 21)
        // Window 1 with bptt 3: rows 3...6 of every column, time-major.
        XCTAssertEqual(s.window(startRow: 3, steps: 3), [3, 11, 19, 4, 12, 20, 5, 13, 21, 6, 14, 22])
    }

    /// CHAPTER.md's example: with batch 8 the text starting "That," forms rows 0..4 of column 0.
    func testChapterExampleFirstColumn() {
        let text = "That, " + String(repeating: "abcdefgh ", count: 20)
        let corpus = Corpus(text: text)
        let s = ColumnStreams(corpus.tokens, columns: 8)
        let first = (0..<5).map { corpus.vocabulary.character(Int(s.token(row: $0, column: 0))) }.joined()
        XCTAssertEqual(first, "That,")
    }
}

final class CorpusTests: XCTestCase {
    func testVocabularySortedByScalarAndRoundTrips() throws {
        let c = Corpus(text: "zebra é Apple\n")
        XCTAssertEqual(c.vocabulary.scalars.map(\.value), c.vocabulary.scalars.map(\.value).sorted())
        XCTAssertEqual(c.vocabulary.character(0), "\n")
        XCTAssertEqual(try Vocabulary(json: c.vocabulary.json), c.vocabulary)
    }

    func testInvalidUTF8ReportsByteOffset() {
        XCTAssertThrowsError(try Corpus.decodeUTF8([0x61, 0x62, 0xC3, 0x28], name: "x")) { e in
            XCTAssertTrue("\(e)".contains("byte offset 2"), "\(e)")
        }
    }

    func testMissingAndEmptyFiles() throws {
        XCTAssertThrowsError(try Corpus.load(path: "/nonexistent/bard.txt")) { XCTAssertTrue("\($0)".contains("no such file")) }
        let empty = NSTemporaryDirectory() + "bard-empty-\(getpid()).txt"
        FileManager.default.createFile(atPath: empty, contents: Data())
        defer { unlink(empty) }
        XCTAssertThrowsError(try Corpus.load(path: empty)) { XCTAssertTrue("\($0)".contains("empty")) }
    }

    func testSplitMatchesReference() {
        let c = Corpus(text: String(repeating: "a", count: 1_115_394))
        let (train, val) = c.split(valFraction: 0.1)
        XCTAssertEqual(train.count, 1_003_854)
        XCTAssertEqual(val.count, 111_540)
    }
}

final class SafetensorsTests: XCTestCase {
    func tmp(_ name: String) -> String { NSTemporaryDirectory() + "bard-\(getpid())-\(name)" }

    func testRoundTripAndLayout() throws {
        let t = [Tensor(name: "a", shape: [2, 3], values: [1, 2, 3, 4, 5, 6]), Tensor(name: "b", shape: [1], values: [-1])]
        let bytes = Safetensors.encode(t, metadata: ["k": "v"])
        var n = 0
        for i in 0..<8 { n |= Int(bytes[i]) << (8 * i) }
        XCTAssertEqual((8 + n) % 8, 0)
        XCTAssertEqual(bytes.count, 8 + n + 7 * 4)
        let (back, meta) = try Safetensors.decode(bytes, name: "t")
        XCTAssertEqual(back.map(\.name), ["a", "b"])
        XCTAssertEqual(back[0].values, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(back[0].shape, [2, 3])
        XCTAssertEqual(meta["k"], "v")
    }

    func testTruncatedAndCorruptFilesAreClearErrors() throws {
        let bytes = Safetensors.encode([Tensor(name: "a", shape: [4], values: [1, 2, 3, 4])], metadata: [:])
        for cut in [0, 4, 9, bytes.count - 3] {
            XCTAssertThrowsError(try Safetensors.decode(Array(bytes.prefix(cut)), name: "f")) { e in
                XCTAssertTrue("\(e)".contains("f:"), "\(e)")
            }
        }
        var flipped = bytes
        flipped[bytes.count - 1] ^= 0x40
        XCTAssertThrowsError(try Safetensors.decode(flipped, name: "f")) { XCTAssertTrue("\($0)".contains("checksum")) }
        var badHeader = bytes
        badHeader[10] = 0x7B
        XCTAssertThrowsError(try Safetensors.decode(badHeader, name: "f"))
        XCTAssertThrowsError(try Safetensors.decode([255, 255, 255, 255, 255, 255, 255, 255, 0], name: "f"))
    }

    func testModelCheckpointRoundTripAndInit() throws {
        var cfg = Config()
        cfg.layers = 2; cfg.embed = 3; cfg.hidden = 4; cfg.cell = .gru
        let vocab = Vocabulary(text: Array("abc\n".unicodeScalars))
        let model = Model(config: cfg, vocabularySize: vocab.count)
        let params = model.makeParameters(seed: 1)
        let path = tmp("ck.safetensors")
        defer { unlink(path) }
        try ModelCheckpoint(config: cfg, vocabulary: vocab, params: params, step: 12, epoch: 1, valLoss: 1.5).save(to: path)
        let back = try ModelCheckpoint.load(path: path)
        XCTAssertEqual(back.config, cfg)
        XCTAssertEqual(back.vocabulary, vocab)
        XCTAssertEqual(back.params.array, params.array)
        XCTAssertEqual(back.step, 12)
        XCTAssertEqual(back.valLoss, 1.5)
        XCTAssertEqual(model.layout.specs.map(\.name), ["embedding.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0",
            "rnn.bias_ih_l0", "rnn.bias_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1", "rnn.bias_ih_l1", "rnn.bias_hh_l1",
            "decoder.weight", "decoder.bias"])
        XCTAssertEqual(model.layout["rnn.weight_ih_l0"]?.shape, [12, 3])
        XCTAssertEqual(try ModelCheckpoint.loadWeights(path: path, layout: model.layout).array, params.array)
        var other = cfg
        other.hidden = 5
        XCTAssertThrowsError(try ModelCheckpoint.loadWeights(path: path, layout: ParameterLayout(config: other, vocabularySize: 4))) {
            XCTAssertTrue("\($0)".contains("shape"), "\($0)")
        }
        // --init from a Bard checkpoint of another vocabulary of the same size: the shapes fit, the meaning does not.
        XCTAssertEqual(try ModelCheckpoint.loadWeights(path: path, layout: model.layout, vocabulary: vocab).array, params.array)
        let shifted = Vocabulary(text: Array("abd\n".unicodeScalars))
        XCTAssertThrowsError(try ModelCheckpoint.loadWeights(path: path, layout: model.layout, vocabulary: shifted)) {
            XCTAssertTrue("\($0)".contains("another vocabulary (4 characters against this corpus's 4, first differing at index 3)"), "\($0)")
        }
    }
}

final class OptimizerTests: XCTestCase {
    /// Adam against torch.optim.Adam's update written out for two steps on one parameter.
    func testAdamMatchesPyTorchFormula() {
        let opt = Optimizer(kind: .adam, lr: 0.1, parameterCount: 1)
        let p = FloatBuffer([1.0]), g = FloatBuffer([0.5])
        opt.apply(params: p, grads: g)
        // step 1: m = 0.05, v = 0.00025; p -= 0.1/0.1 * 0.05 / (sqrt(0.00025)/sqrt(0.001) + 1e-8) = 0.1
        XCTAssertEqual(Double(p[0]), 0.9, accuracy: 1e-6)
        g[0] = -1
        opt.apply(params: p, grads: g)
        let m = 0.9 * 0.05 + 0.1 * -1.0, v = 0.999 * 0.00025 + 0.001 * 1.0
        let expected = 0.9 - 0.1 / (1 - 0.81) * m / (sqrt(v) / sqrt(1 - 0.999 * 0.999) + 1e-8)
        XCTAssertEqual(Double(p[0]), expected, accuracy: 1e-5)
    }

    func testClipLikeClipGradNorm() {
        let g = FloatBuffer([3, 4])
        XCTAssertEqual(clipGradientNorm(g, maxNorm: 1), 5, accuracy: 1e-6)
        XCTAssertEqual(Double(g[0]), 3 / (5 + 1e-6), accuracy: 1e-6)
        let small = FloatBuffer([0.3, 0.4])
        clipGradientNorm(small, maxNorm: 1)
        XCTAssertEqual(small.array, [0.3, 0.4])
    }

    /// Finite gradients near Float's maximum clip to the max norm: their squares overflow a Float sum, not a Double.
    func testClipOfHugeFiniteGradientsStaysFinite() {
        let g = FloatBuffer(count: 10_000)
        for i in 0..<g.count { g[i] = i % 2 == 0 ? 3e38 : -3e38 }
        let norm = clipGradientNorm(g, maxNorm: 5)
        XCTAssertTrue(norm.isFinite, "norm \(norm)")
        XCTAssertEqual(norm, 3e38 * 100, accuracy: 3e38 * 100 * 1e-6)
        XCTAssertTrue(g.allFinite)
        XCTAssertEqual(g.sumOfSquares().squareRoot(), 5, accuracy: 1e-4)
        XCTAssertEqual(Double(g[0]), 0.05, accuracy: 1e-7)
        XCTAssertEqual(Double(g[1]), -0.05, accuracy: 1e-7)
    }
}

final class RecipeTests: XCTestCase {
    /// The deadline recipes: their budget, model and schedule.
    func testDeadlineRecipes() throws {
        for (name, seconds, layers) in [("10m", 600.0, 1), ("30m", 1800, 2), ("60m", 3600, 2)] {
            let c = try Config.recipe(name)
            XCTAssertEqual(c.budget, seconds, name)
            XCTAssertEqual(c.layers, layers, name)
            XCTAssertEqual(c.schedule, .cosine, name)
            XCTAssertEqual(c.recipe, name)
            XCTAssertNoThrow(try c.validate())
            XCTAssertTrue(c.summary.contains(String(format: "budget %.0fs", seconds)), c.summary)
        }
        XCTAssertEqual(try Config.recipe("60m").hidden, 704)
        XCTAssertEqual(try Config.recipe("60m").dropout, 0.3)
        XCTAssertEqual(try Config.recipe("30m").ema, 0.998)
        XCTAssertTrue(try Config.recipe("30m").summary.contains(" ema 0.998"))  // the start-up line shows averaging
        XCTAssertEqual(try Config.recipe("60m").ema, 0.998)
        XCTAssertNil(try Config.recipe("10m").ema)
        XCTAssertNil(try Config.recipe("default").budget)
        XCTAssertThrowsError(try Config.recipe("5m"))
    }
}

/// The trainer's optimiser step (mean, norm, clip, update, average, finiteness in two blocked passes on several threads)
/// against the one-operation-per-pass reference on one thread.
final class OptimizerStepTests: XCTestCase {
    func buffers(_ n: Int, seed: UInt64, scale: Float) -> FloatBuffer {
        var rng = RNG(seed: seed)
        let b = FloatBuffer(count: n)
        for i in 0..<n { b[i] = (Float(rng.next() % 20001) / 10000 - 1) * scale }
        return b
    }

    func testBlockedStepMatchesTheReferenceForAnyThreadCount() throws {
        let n = 3 * Blocks.size + 123, lossCount = 64 * 50
        for kind in OptimizerKind.allCases {
            for clip in [0.0, 1e9, 0.5] {  // off, on but not binding, binding
                let params = buffers(n, seed: 1, scale: 1), start = buffers(n, seed: 2, scale: 40)
                let ref = Optimizer(kind: kind, lr: 0.01, parameterCount: n), refParams = params.copy(), refAverage = params.copy()
                // (parameters, optimiser, average) stepped with 1 thread and with 3
                let results = [1, 3].map { _ in (params.copy(), Optimizer(kind: kind, lr: 0.01, parameterCount: n), params.copy()) }
                for step in 0..<3 {
                    let g = buffers(n, seed: 10 + UInt64(step), scale: 40)
                    g.add(start)
                    let refGrads = g.copy()
                    refGrads.scale(by: Float(1 / Double(lossCount)))
                    let refNorm = clipGradientNorm(refGrads, maxNorm: clip)
                    ref.apply(params: refParams, grads: refGrads)
                    for i in 0..<n { refAverage[i] = 0.9 * refAverage[i] + (1 - 0.9) * refParams[i] }
                    for (k, threads) in [1, 3].enumerated() {
                        let (p, opt, avg) = results[k]
                        let report = opt.step(params: p, grads: g.copy(), meanOver: lossCount, clip: clip, average: avg,
                                              decay: 0.9, threads: threads)
                        XCTAssertEqual(report.norm, refNorm, accuracy: refNorm * 1e-12)
                        XCTAssertTrue(report.paramsFinite && report.momentsFinite)
                    }
                }
                // One thread or three: the same bits (the same blocks, added in the same order, in one process).
                XCTAssertEqual(results[0].0.array, results[1].0.array, "\(kind) clip \(clip)")
                XCTAssertEqual(results[0].1.m.array, results[1].1.m.array)
                XCTAssertEqual(results[0].2.array, results[1].2.array)
                // Against the reference: the norm's Double sum is associated by blocks, so a clip factor may differ
                // in its last bits.
                let (p, opt, avg) = results[1]
                for i in stride(from: 0, to: n, by: 97) {
                    XCTAssertEqual(p[i], refParams[i], accuracy: 1e-6 * max(1, abs(refParams[i])), "\(kind) clip \(clip) at \(i)")
                    XCTAssertEqual(avg[i], refAverage[i], accuracy: 1e-6 * max(1, abs(refAverage[i])))
                    if kind == .adam { XCTAssertEqual(opt.v[i], ref.v[i], accuracy: 1e-6 * max(1e-6, abs(ref.v[i]))) }
                }
                XCTAssertNotEqual(p.array, params.array, "the step changed nothing")
            }
        }
    }

    /// A refused norm leaves everything as it was; an update that overflows is reported, per buffer.
    func testRefusedNormWritesNothingAndOverflowIsReported() {
        let n = Blocks.size + 5
        let params = buffers(n, seed: 3, scale: 1), before = params.array
        let opt = Optimizer(kind: .adam, lr: 0.01, parameterCount: n)
        struct Refused: Error {}
        XCTAssertThrowsError(try opt.step(params: params, grads: buffers(n, seed: 4, scale: 1), meanOver: 1, clip: 5,
                                          threads: 2) { _ in throw Refused() })
        XCTAssertEqual(params.array, before)
        XCTAssertEqual(opt.step, 0)
        XCTAssertEqual(opt.m.array, [Float](repeating: 0, count: n))
        let sgd = Optimizer(kind: .sgd, lr: 1e38, parameterCount: n)
        let g = FloatBuffer(count: n)
        g[n - 1] = 100  // in the last, short block
        let report = sgd.step(params: params, grads: g, meanOver: 1, clip: 0, threads: 2)
        XCTAssertFalse(report.paramsFinite)
        XCTAssertTrue(report.momentsFinite)
        XCTAssertEqual(report.norm, 100, accuracy: 1e-9)
    }
}

final class SamplerTests: XCTestCase {
    /// The chapter's threshold trick picks index 2 of [.1, .6, .3] never; real sampling about 30% of the time.
    func testCategoricalFrequencies() {
        let logits = FloatBuffer([Float(log(0.1)), Float(log(0.6)), Float(log(0.3))])
        var s = Sampler(temperature: 1, seed: 42)
        var counts = [0, 0, 0]
        for _ in 0..<30000 { counts[Int(s.draw(logits))] += 1 }
        XCTAssertEqual(Double(counts[0]) / 30000, 0.1, accuracy: 0.015)
        XCTAssertEqual(Double(counts[1]) / 30000, 0.6, accuracy: 0.015)
        XCTAssertEqual(Double(counts[2]) / 30000, 0.3, accuracy: 0.015)
    }

    func testTopKAndGreedy() {
        let logits = FloatBuffer([0, 3, 2, 1])
        var s = Sampler(temperature: 1, topK: 2, seed: 1)
        for _ in 0..<500 { XCTAssertTrue([1, 2].contains(s.draw(logits))) }
        var g = Sampler(greedy: true, seed: 1)
        XCTAssertEqual(g.draw(logits), 1)
    }

    /// Generation at batch 1 equals the training forward pass, step by step.
    func testGeneratorMatchesWindowForward() {
        for cell in [CellKind.lstm, .gru, .rnn] {
            var cfg = Config()
            cfg.cell = cell; cfg.layers = 2; cfg.embed = 6; cfg.hidden = 7; cfg.dropout = 0; cfg.initialState = .book
            let V = 5, T = 6
            let model = Model(config: cfg, vocabularySize: V)
            let params = model.makeParameters(seed: 4)
            let tokens: [Int32] = [0, 3, 1, 4, 2, 2, 1]
            let gen = Generator(model: model, params: params)
            var genLoss = 0.0
            for t in 0..<T {
                let l = gen.step(tokens[t])
                let m = l.array.max()!
                let lse = Double(m) + log(l.array.reduce(0.0) { $0 + exp(Double($1 - m)) })
                genLoss += lse - Double(l[Int(tokens[t + 1])])
            }
            let loss = tokens.withUnsafeBufferPointer { w in
                model.run(params: params, grads: nil, window: w.baseAddress!, steps: T, totalColumns: 1, columns: 0..<1,
                          state: model.makeState(columns: 1), dropout: nil, workspace: model.makeWorkspace(steps: T, batch: 1))
            }
            XCTAssertEqual(genLoss, loss, accuracy: 1e-4, "\(cell)")
        }
    }
}
