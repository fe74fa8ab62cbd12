import ArgumentParser
import BardModel
import BardNumerics
import BardTraining
import Foundation

struct Gradients: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The chapter's lesson: vanishing and exploding gradients, then |dL/dh| by lag for an RNN and an LSTM.")
    @Option(help: "Text to measure on.") var data: String = "data/tinyshakespeare.txt"
    @Option(help: "Window length (lags 0...bptt-1).") var bptt: Int = 25
    @Option(help: "Hidden size of the fresh models.") var hidden: Int = 128
    @Option(help: "Windows to average over.") var windows: Int = 8
    @Option(help: "Measure this trained checkpoint too.") var checkpoint: String?
    @Option(help: "Random seed.") var seed: UInt64 = 0

    func validate() throws {
        guard bptt >= 2 && bptt <= 1000 else { throw ValidationError("--bptt must be 2...1000") }
        guard hidden >= 1 && windows >= 1 else { throw ValidationError("--hidden and --windows must be >= 1") }
    }

    func run() throws {
        say(ToyGradients.table())
        let corpus = try Corpus.load(path: data)
        var models: [(String, Model, FloatBuffer, Vocabulary)] = []
        for (name, cell, act) in [("rnn (sigmoid)", CellKind.rnn, Activation.sigmoid), ("rnn (tanh)", .rnn, .tanh),
                                  ("lstm", .lstm, .tanh)] {
            var c = Config()
            c.cell = cell; c.activation = act; c.layers = 1; c.embed = 64; c.hidden = hidden; c.dropout = 0
            let m = Model(config: c, vocabularySize: corpus.vocabulary.count)
            models.append(("fresh " + name, m, m.makeParameters(seed: seed), corpus.vocabulary))
        }
        if let checkpoint {
            let ck = try ModelCheckpoint.load(path: checkpoint)
            guard ck.vocabulary == corpus.vocabulary else {
                throw BardError.badInput("--checkpoint was trained on another vocabulary than --data")
            }
            models.append(("trained \(ck.config.cell)", ck.model, ck.params, ck.vocabulary))
        }
        let columns = 16
        let streams = ColumnStreams(corpus.tokens, columns: columns)
        guard streams.rows > bptt * windows else {
            throw BardError.badInput("\(data) is too short for \(windows) windows of \(bptt) in \(columns) columns")
        }
        say("\n|dL/dh_t| of the top layer for the loss at the last step of a \(bptt)-step window, by lag (mean of \(windows) windows x \(columns) columns), relative to lag 0:")
        var header = "lag  "
        for (name, _, _, _) in models { header += name.padding(toLength: 20, withPad: " ", startingAt: 0) }
        say(header)
        var norms: [[Double]] = []
        for (_, model, params, _) in models {
            let ws = model.makeWorkspace(steps: bptt, batch: columns)
            let grads = FloatBuffer(count: model.parameterCount)
            var sum = [Double](repeating: 0, count: bptt)
            var per = [Double](repeating: 0, count: bptt)
            for w in 0..<windows {
                let state = model.makeState(columns: columns)
                var window = streams.window(startRow: w * bptt, steps: bptt)
                window.withUnsafeMutableBufferPointer { wp in
                    per.withUnsafeMutableBufferPointer { np in
                        guard let base = wp.baseAddress, let nb = np.baseAddress else { return }
                        model.run(params: params, grads: grads, window: base, steps: bptt, totalColumns: columns,
                                  columns: 0..<columns, state: state, dropout: nil, workspace: ws, lastStepOnly: true,
                                  hiddenGradNorms: nb)
                    }
                }
                for t in 0..<bptt { sum[bptt - 1 - t] += per[t] }
            }
            norms.append(sum.map { $0 / sum[0] })
        }
        for lag in 0..<bptt {
            var line = String(lag).padding(toLength: 5, withPad: " ", startingAt: 0)
            for n in norms { line += String(format: "%-20.3e", n[lag]) }
            say(line)
        }
        say("\nA ratio that falls by orders of magnitude over the lags is a vanishing gradient: the early characters of the window get almost no learning signal. The LSTM's additive cell state keeps it.")
    }
}

/// The chapter's toy: two units, W = [[1,4],[4,1]], ten steps forward, then the gradient back through them.
enum ToyGradients {
    static func table() -> String {
        let w = [[1.0, 4.0], [4.0, 1.0]]
        func dot(_ a: [Double]) -> [Double] { [a[0] * w[0][0] + a[1] * w[1][0], a[0] * w[0][1] + a[1] * w[1][1]] }
        func dotT(_ g: [Double]) -> [Double] { [g[0] * w[0][0] + g[1] * w[0][1], g[0] * w[1][0] + g[1] * w[1][1]] }
        func sigmoid(_ x: Double) -> Double { 1 / (1 + exp(-x)) }
        // numpy's default array printing: 8 decimals, fixed unless a value needs scientific notation.
        func fmt(_ v: [Double]) -> String {
            let scientific = v.contains { $0 != 0 && (abs($0) < 1e-4 || abs($0) >= 1e8) }
            return "[" + v.map { x -> String in
                if scientific { return String(format: "%.8e", x) }
                var s = String(format: "%.8f", x)
                while s.hasSuffix("0") { s.removeLast() }
                return s
            }.joined(separator: " ") + "]"
        }
        var lines = ["The chapter's toy example: W = [[1,4],[4,1]], a = sigmoid([1, 0.01]), ten steps.", "", "Sigmoid activations"]
        var a = [sigmoid(1), sigmoid(0.01)]
        var kept: [[Double]] = []
        for _ in 0..<10 { a = dot(a).map(sigmoid); kept.append(a); lines.append(fmt(a)) }
        lines += ["", "Sigmoid gradients (vanishing)"]
        var g = [1.0, 1.0]
        for act in kept.reversed() {
            g = dotT(zip(act, g).map { $0 * (1 - $0) * $1 })
            lines.append(fmt(g))
        }
        // As in the chapter, the relu loop starts from the activation left over by the loop above.
        a = kept[0]
        lines += ["", "Relu activations"]
        kept = []
        for _ in 0..<10 { a = dot(a).map { max(0, $0) }; kept.append(a); lines.append(fmt(a)) }
        lines += ["", "Relu gradients (exploding)"]
        g = [1.0, 1.0]
        for act in kept.reversed() {
            g = dotT(zip(act, g).map { $0 > 0 ? $1 : 0 })
            lines.append(fmt(g))
        }
        return lines.joined(separator: "\n")
    }
}
