import BardModel
import BardNumerics
import XCTest

/// Backward against central differences in Double, and the fused forward against the naive per-step reference.
final class GradientTests: XCTestCase {
    /// Tiny distinct sizes, as torch-rnn's gradcheck: batch 2, steps 3 or 4, input 4, hidden 5, vocabulary 6.
    func config(_ cell: CellKind, _ act: Activation = .tanh, layers: Int = 1, dropout: Float = 0, bias: Bool = true,
                hidden: Int = 5) -> Config {
        var c = Config()
        c.cell = cell; c.activation = act; c.layers = layers; c.embed = 4; c.hidden = hidden; c.dropout = dropout
        c.outputBias = bias
        return c
    }

    static let cells: [(CellKind, Activation)] = [(.lstm, .tanh), (.gru, .tanh), (.rnn, .tanh), (.rnn, .sigmoid)]

    /// One layer alone: L = sum_t <dOut_t, h_t> with a random upstream gradient dOut, T = 4 steps, random initial
    /// state. Checks weights, biases, the input and the initial state (h0 and, for LSTM, c0).
    func testEachLayerBackwardMatchesFiniteDifferences() {
        for (cell, act) in Self.cells {
            let cfg = config(cell, act)
            let T = 4, B = 2, In = cfg.embed, H = cfg.hidden, V = 6
            let layout = ParameterLayout(config: cfg, vocabularySize: V)
            var rng = RNG(seed: 7)
            let params = randomBuffer(layout.total, &rng)
            let x = randomBuffer(T * B * In, &rng), dOut = randomBuffer(T * B * H, &rng, scale: 1)
            let h0 = randomBuffer(B * H, &rng), c0 = randomBuffer(B * H, &rng)
            let layer = RecurrentLayer(cell: cell, activation: act, input: In, hidden: H, layer: 0, layout: layout)
            let ws = LayerWorkspace(cell: cell, input: In, hidden: H, steps: T, batch: B)
            layer.forward(params: params.pointer, x: x.pointer, steps: T, batch: B, h0: h0.pointer, c0: c0.pointer, ws: ws)
            let grads = FloatBuffer(count: layout.total)
            layer.backward(params: params.pointer, grads: grads.pointer, x: x.pointer, dOut: dOut.pointer, steps: T,
                           batch: B, ws: ws, inputGradient: true)

            let ref = ReferenceModel(config: cfg, vocab: V)
            // Objective in Double over (params, x, h0, c0) as one vector.
            func objective(_ p: [Double], _ xs: [Double], _ hs: [Double], _ cs: [Double]) -> Double {
                var total = 0.0
                for b in 0..<B {
                    var h = Array(hs[(b * H)..<((b + 1) * H)]), c = Array(cs[(b * H)..<((b + 1) * H)])
                    for t in 0..<T {
                        let xv = Array(xs[((t * B + b) * In)..<((t * B + b + 1) * In)])
                        (h, c) = ref.cellStep(p, layer: 0, x: xv, h: h, c: c)
                        for j in 0..<H { total += Double(dOut[(t * B + b) * H + j]) * h[j] }
                    }
                }
                return total
            }
            // vars: parameters, input, h0, c0.
            var vars = [params.array.map(Double.init), x.array.map(Double.init), h0.array.map(Double.init),
                        c0.array.map(Double.init)]
            let eps = Tolerance.finiteDifferenceStep
            func central(_ k: Int, _ i: Int) -> Double {
                let old = vars[k][i]
                vars[k][i] = old + eps; let up = objective(vars[0], vars[1], vars[2], vars[3])
                vars[k][i] = old - eps; let down = objective(vars[0], vars[1], vars[2], vars[3])
                vars[k][i] = old
                return (up - down) / (2 * eps)
            }
            // Parameters of this layer only (embedding and decoder are not part of it).
            for spec in layout.specs where spec.name.hasPrefix("rnn.") {
                for i in spec.offset..<(spec.offset + spec.count) {
                    let numeric = central(0, i)
                    XCTAssert(Tolerance.close(Double(grads[i]), numeric), "\(cell) \(spec.name)[\(i - spec.offset)]: analytic \(grads[i]) numeric \(numeric)")
                }
            }
            for i in 0..<vars[1].count {
                let numeric = central(1, i)
                XCTAssert(Tolerance.close(Double(ws.dInput[i]), numeric), "\(cell) dx[\(i)]: \(ws.dInput[i]) vs \(numeric)")
            }
            for i in 0..<vars[2].count {
                let numeric = central(2, i)
                XCTAssert(Tolerance.close(Double(ws.dhNext[i]), numeric), "\(cell) dh0[\(i)]: \(ws.dhNext[i]) vs \(numeric)")
            }
            if cell == .lstm {
                for i in 0..<vars[3].count {
                    let numeric = central(3, i)
                    XCTAssert(Tolerance.close(Double(ws.dcNext[i]), numeric), "lstm dc0[\(i)]: \(ws.dcNext[i]) vs \(numeric)")
                }
            }
        }
    }

    /// The whole model over a window (loss summed over steps and columns, 2 layers, dropout on, no output bias for
    /// one case) against central differences of the Double reference; and the fused forward against it.
    func testWholeModelGradientAndForwardMatchReference() {
        for (cell, act) in Self.cells {
            for (dropout, bias) in [(Float(0.3), true), (Float(0), false)] {
                let cfg = config(cell, act, layers: 2, dropout: dropout, bias: bias)
                let V = 6, T = 3, B = 2  // distinct sizes, so a transposed index cannot pass
                let model = Model(config: cfg, vocabularySize: V)
                var rng = RNG(seed: 11)
                let (params, window) = randomParametersAndWindow(model, steps: T, columns: B, &rng)
                let state = model.makeState(columns: B)
                for i in 0..<state.h.count { state.h[i] = rng.uniform(-0.5, 0.5) }
                for i in 0..<state.c.count { state.c[i] = rng.uniform(-0.5, 0.5) }
                let h0 = state.h.array, c0 = state.c.array
                let key = DropoutKey(seed: 5, step: 9)
                let grads = FloatBuffer(count: model.parameterCount)
                let ws = model.makeWorkspace(steps: T, batch: B)
                let loss = window.withUnsafeBufferPointer { w in
                    model.run(params: params, grads: grads, window: w.baseAddress!, steps: T, totalColumns: B, columns: 0..<B,
                              state: state, dropout: key, workspace: ws)
                }
                let ref = ReferenceModel(config: cfg, vocab: V)
                let H = cfg.hidden
                func nest(_ flat: [Float]) -> [[[Double]]] {
                    guard !flat.isEmpty else { return Array(repeating: Array(repeating: Array(repeating: 0, count: H), count: B), count: cfg.layers) }
                    return (0..<cfg.layers).map { l in (0..<B).map { b in (0..<H).map { Double(flat[(l * B + b) * H + $0]) } } }
                }
                var p = params.array.map(Double.init)
                let r = ref.loss(p, window: window, steps: T, totalColumns: B, columns: 0..<B, h0: nest(h0), c0: nest(c0), dropout: key)
                XCTAssertEqual(loss, r.loss, accuracy: Tolerance.forwardRelative * abs(r.loss) + 1e-6, "\(cell) forward loss")
                let finalH = nest(state.h.array)
                for l in 0..<cfg.layers { for b in 0..<B { for j in 0..<H {
                    XCTAssertEqual(finalH[l][b][j], r.h[l][b][j], accuracy: 1e-5, "\(cell) carried h")
                } } }
                let eps = Tolerance.finiteDifferenceStep
                var worst = 0.0
                for i in 0..<p.count {
                    let old = p[i]
                    p[i] = old + eps
                    let up = ref.loss(p, window: window, steps: T, totalColumns: B, columns: 0..<B, h0: nest(h0), c0: nest(c0), dropout: key).loss
                    p[i] = old - eps
                    let down = ref.loss(p, window: window, steps: T, totalColumns: B, columns: 0..<B, h0: nest(h0), c0: nest(c0), dropout: key).loss
                    p[i] = old
                    let numeric = (up - down) / (2 * eps)
                    worst = max(worst, abs(numeric - Double(grads[i])))
                    XCTAssert(Tolerance.close(Double(grads[i]), numeric), "\(cell) dropout \(dropout) param \(i): analytic \(grads[i]) numeric \(numeric)")
                }
                XCTAssertLessThan(worst, 1e-3)
            }
        }
    }

    /// Columns are independent: two shards' gradients add up to the full batch's, and states match.
    func testShardsAddUpToTheFullBatch() {
        let cfg = config(.lstm, layers: 2, dropout: 0.2)
        let V = 7, T = 5, B = 5
        let model = Model(config: cfg, vocabularySize: V)
        var rng = RNG(seed: 3)
        let (params, window) = randomParametersAndWindow(model, steps: T, columns: B, &rng)
        let key = DropoutKey(seed: 1, step: 2)
        let full = FloatBuffer(count: model.parameterCount), sharded = FloatBuffer(count: model.parameterCount)
        let s1 = model.makeState(columns: B), s2 = model.makeState(columns: B)
        window.withUnsafeBufferPointer { w in
            let l1 = model.run(params: params, grads: full, window: w.baseAddress!, steps: T, totalColumns: B, columns: 0..<B,
                               state: s1, dropout: key, workspace: model.makeWorkspace(steps: T, batch: B))
            var l2 = 0.0
            for shard in [0..<2, 2..<5] {
                l2 += model.run(params: params, grads: sharded, window: w.baseAddress!, steps: T, totalColumns: B, columns: shard,
                                state: s2, dropout: key, workspace: model.makeWorkspace(steps: T, batch: shard.count))
            }
            XCTAssertEqual(l1, l2, accuracy: 1e-5 * abs(l1))
        }
        for i in 0..<full.count { XCTAssertEqual(full[i], sharded[i], accuracy: 1e-5, "grad \(i)") }
        for i in 0..<s1.h.count { XCTAssertEqual(s1.h[i], s2.h[i], accuracy: 1e-6) }
    }

    /// `run`'s three phases shared among 2, 3 or 8 threads (more than columns, hidden units and characters: some
    /// threads have nothing of some phase), the threads meeting at a real barrier, give the whole window's loss,
    /// gradient and state: for every cell, one and two layers, with and without dropout and decoder bias, and row
    /// counts (V = 7, G*H = 5 to 20) that do not divide, and H = 37 (G*H = 37 to 148: several strips a thread, whole
    /// and cut); with the steps reading W_hh in every way (`HiddenWeight.Layout.all`), whichever this machine's
    /// kernels prefer.
    /// The whole test has 120 s: threads that miss a barrier fail it instead of hanging the suite.
    func testPhasesSharedAmongThreadsGiveTheWholeWindow() {
        let deadline = DispatchTime.now() + 120
        for (cell, act) in Self.cells {
            for (layers, dropout, bias, hidden) in [(1, Float(0), true, 5), (2, Float(0.2), false, 5), (2, Float(0), true, 5),
                                                    (1, Float(0), true, 37)] {
                let cfg = config(cell, act, layers: layers, dropout: dropout, bias: bias, hidden: hidden)
                let V = 7, T = 4, B = 5
                let model = Model(config: cfg, vocabularySize: V)
                var rng = RNG(seed: 11)
                let (params, window) = randomParametersAndWindow(model, steps: T, columns: B, &rng)
                let key = DropoutKey(seed: 4, step: 9)
                let whole = FloatBuffer(count: model.parameterCount), s1 = model.makeState(columns: B)
                let l1 = window.withUnsafeBufferPointer { w in
                    model.run(params: params, grads: whole, window: w.baseAddress!, steps: T, totalColumns: B,
                              columns: 0..<B, state: s1, dropout: key, workspace: model.makeWorkspace(steps: T, batch: B))
                }
                for (n, layout) in [2, 3, 8].flatMap({ n in HiddenWeight.Layout.all.map { (n, $0) } }) {
                    let split = FloatBuffer(count: model.parameterCount), s2 = model.makeState(columns: B)
                    let ws = model.makeWorkspace(steps: T, batch: B)
                    let prepared = model.makePreparedWindow(batch: B, layout: layout)
                    let team = ThreadTeam(count: n)
                    let what = "\(cell) \(act) layers \(layers) hidden \(hidden) dropout \(dropout) bias \(bias), \(n) threads, \(layout)"
                    // Freed only once the threads are done: after a missed deadline they may still run.
                    nonisolated(unsafe) let losses = UnsafeMutableBufferPointer<Double>.allocate(capacity: n)
                    nonisolated(unsafe) let tokens = UnsafeMutableBufferPointer<Int32>.allocate(capacity: window.count)
                    _ = tokens.initialize(from: window)
                    let finished = DispatchSemaphore(value: 0)
                    Thread {
                        team.run { i in
                            model.prepareWindow(params: params, into: prepared, part: i, of: n)
                            team.barrier()
                            losses[i] = model.runColumns(params: params, prepared: prepared, backward: true,
                                                         window: tokens.baseAddress!, steps: T, totalColumns: B,
                                                         columns: 0..<B, state: s2, dropout: key, workspace: ws, part: i,
                                                         of: n, barrier: team.barrier)
                            team.barrier()
                            model.addParameterGradients(into: split, params: params, workspace: ws, part: i, of: n)
                        }
                        finished.signal()
                    }.start()
                    guard finished.wait(timeout: deadline) == .success else {
                        return XCTFail("the threads were not done by the test's deadline (a missed barrier?), \(what)")
                    }
                    let l2 = losses.reduce(0, +)
                    losses.deallocate(); tokens.deallocate()
                    XCTAssertEqual(l1, l2, accuracy: Tolerance.forwardRelative * abs(l1), what)
                    var worst: Float = 0
                    for i in 0..<whole.count { worst = max(worst, abs(whole[i] - split[i]) / max(1, abs(whole[i]))) }
                    XCTAssertLessThan(Double(worst), Tolerance.forwardRelative, what)
                    XCTAssertGreaterThan(whole.array.map(abs).max()!, 0.01, "a gradient to compare, \(what)")
                    for i in 0..<s1.h.count { XCTAssertEqual(s1.h[i], s2.h[i], accuracy: 1e-6, what) }
                    for i in 0..<s1.c.count { XCTAssertEqual(s1.c[i], s2.c[i], accuracy: 1e-6, what) }
                }
            }
        }
    }
}

final class HiddenWeightTests: XCTestCase {
    /// The largest |out - want| over a (rows, columns) buffer.
    func worstDifference(_ out: FloatBuffer, rows: Int, columns: Int, _ want: (Int, Int) -> Float) -> Float {
        var worst: Float = 0
        for r in 0..<rows {
            for j in 0..<columns { worst = max(worst, abs(out[r * columns + j] - want(r, j))) }
        }
        return worst
    }

    /// A step's products through `HiddenWeight` against the naive ones, in every layout, with row counts and ranges
    /// that make several pieces, a short last one, no piece at all and, with 130 rows, one product (and, for the
    /// strips, every block of 1 to 6 rows, strips cut by the range or by the end of W_hh, made in 3 parts): forward adds
    /// hPrev W_hh^T in the asked gate columns, backward writes (beta 0) or adds (beta 1) dGates W_hh in the asked
    /// hidden units, and nothing else changes.
    func testProductsMatchTheNaiveOnesInEveryLayout() {
        var rng = RNG(seed: 5)
        func random(_ n: Int) -> FloatBuffer {
            let b = FloatBuffer(count: n)
            for i in 0..<n { b[i] = rng.uniform(-1, 1) }
            return b
        }
        for (rows, hidden, gates) in [(5, 24, 96), (32, 40, 160), (3, 7, 28), (16, 512, 2048), (130, 512, 1024),
                                      (1, 9, 36), (7, 16, 48), (4, 20, 60)] {
            let whh = random(gates * hidden), whhT = FloatBuffer(count: gates * hidden)
            BLAS.transpose(rows: gates, cols: hidden, a: whh.pointer, lda: hidden, b: whhT.pointer, ldb: gates)
            let strips = FloatBuffer(count: HiddenWeight.stripsSize(hidden: hidden, gateRows: gates))
            for i in 0..<strips.count { strips[i] = .nan }  // every value read must be made
            for part in 0..<3 {
                HiddenWeight.packStrips(whh: whh.pointer, hidden: hidden, gateRows: gates, into: strips.pointer,
                                        part: part, of: 3, backward: true)
            }
            let h = random(rows * hidden), dG = random(rows * gates)
            let forward = FloatBuffer(count: rows * gates), backward = FloatBuffer(count: rows * hidden)
            BLAS.naiveGemm(transB: true, m: rows, n: gates, k: hidden, a: h.pointer, lda: hidden, b: whh.pointer,
                           ldb: hidden, beta: 0, c: forward.pointer, ldc: gates)
            BLAS.naiveGemm(m: rows, n: hidden, k: gates, a: dG.pointer, lda: gates, b: whh.pointer, ldb: hidden,
                           beta: 0, c: backward.pointer, ldc: hidden)
            for layout in HiddenWeight.Layout.all {
                let weight = HiddenWeight(whh: whh.pointer, whhT: whhT.pointer, strips: strips.pointer, layout: layout,
                                          hidden: hidden, gateRows: gates)
                for range in [0..<gates, 7..<(gates - 3), 0..<0] {
                    let out = FloatBuffer(count: rows * gates)
                    for i in 0..<out.count { out[i] = 0.5 }
                    weight.project(h.pointer, rows: rows, gates: range, into: out.pointer, ldc: gates)
                    let worst = worstDifference(out, rows: rows, columns: gates) { r, j in
                        0.5 + (range.contains(j) ? forward[r * gates + j] : 0)
                    }
                    XCTAssertLessThan(worst, Tolerance.productAbsolute, "forward: rows \(rows) gates \(range) \(layout)")
                }
                for (range, beta) in [(0..<hidden, Float(0)), (3..<(hidden - 3), 0), (3..<(hidden - 3), 1), (0..<0, 1)] {
                    let out = FloatBuffer(count: rows * hidden)
                    for i in 0..<out.count { out[i] = 0.5 }
                    weight.projectBack(dG.pointer, rows: rows, units: range, into: out.pointer, beta: beta)
                    let worst = worstDifference(out, rows: rows, columns: hidden) { r, j in
                        range.contains(j) ? beta * 0.5 + backward[r * hidden + j] : 0.5
                    }
                    XCTAssertLessThan(worst, Tolerance.productAbsolute, "backward: rows \(rows) units \(range) beta \(beta) \(layout)")
                }
            }
        }
    }
}
