import ArgumentParser
import BardModel
import BardNumerics
import BardTraining
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure training and generation speed (default: Embedding 512 -> LSTM 512 -> Linear, batch 32, bptt 25).")
    @Option(help: "Threads (they share each step of the window: WindowThreads).") var threads: Int = 1
    @Option(help: "Cell.") var cell: CellKind = .lstm
    @Option(help: "Layers.") var layers: Int = 1
    @Option(help: "Embedding size.") var embed: Int = 512
    @Option(help: "Hidden size.") var hidden: Int = 512
    @Option(help: "Vocabulary size of the synthetic data.") var vocab: Int = 65
    @Option(help: "Batch columns.") var batch: Int = 32
    @Option(help: "BPTT window.") var bptt: Int = 25
    @Option(help: "Timed training steps (after 5 warm-up steps).") var steps: Int = 40
    @Option(name: .customLong("gen-chars"), help: "Characters generated at batch 1.") var genChars: Int = 3000
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        var c = Config()
        c.cell = cell; c.layers = layers; c.embed = embed; c.hidden = hidden; c.dropout = 0; c.batch = batch; c.bptt = bptt
        c.optimizer = .sgd; c.lr = 0.05; c.clip = 5; c.threads = threads
        try c.validate()
        guard vocab >= 2, steps >= 1, genChars >= 1 else {
            throw BardError.invalidArgument("--vocab must be >= 2, --steps >= 1 and --gen-chars >= 1")
        }
        let model = Model(config: c, vocabularySize: vocab)
        let params = model.makeParameters(seed: 0), grads = FloatBuffer(count: model.parameterCount)
        let optimizer = Optimizer(kind: .sgd, lr: 0.05, parameterCount: model.parameterCount)
        let runner = WindowThreads(model: model, steps: bptt, columns: 0..<batch, threads: threads)
        let state = model.makeState(columns: batch)
        var rng = RNG(seed: 1)
        var window = (0..<((bptt + 1) * batch)).map { _ in Int32(rng.next() % UInt64(vocab)) }
        var times: [Double] = []
        let start = Date()
        for s in 0..<(5 + steps) {
            if s == 5 { times.removeAll() }
            let t0 = Date()
            grads.zero(threads: threads)
            let loss = window.withUnsafeMutableBufferPointer { w in
                runner.run(params: params, grads: grads, window: w.baseAddress.map { UnsafePointer($0) } ?? UnsafePointer(bitPattern: 8)!,
                           steps: bptt, totalColumns: batch, state: state, dropout: nil)
            }
            _ = optimizer.step(params: params, grads: grads, meanOver: batch * bptt, clip: 5, threads: threads)
            times.append(Date().timeIntervalSince(t0))
            precondition(loss.isFinite, "bench loss \(loss)")
        }
        _ = start
        let sorted = times.sorted(), median = sorted[sorted.count / 2]
        let trainCPS = Double(batch * bptt) / median
        let meanCPS = Double(batch * bptt * steps) / times.reduce(0, +)
        // Model FLOPs per character: forward 2 x (input + recurrent + decoder) multiply-adds, backward twice that.
        let g = c.cell.gates * hidden
        var fwd = 0
        for l in 0..<layers { fwd += 2 * ((l == 0 ? embed : hidden) * g + hidden * g) }
        fwd += 2 * hidden * vocab
        let gflops = trainCPS * Double(3 * fwd) / 1e9

        let gen = Generator(model: model, params: params)
        var sampler = Sampler(temperature: 1, seed: 2)
        var token: Int32 = 0
        for _ in 0..<50 { token = sampler.draw(gen.step(token)) }
        let g0 = Date()
        for _ in 0..<genChars { token = sampler.draw(gen.step(token)) }
        let genCPS = Double(genChars) / Date().timeIntervalSince(g0)
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let peakMiB = Double(usage.ru_maxrss) / 1024
        let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first.map(String.init) ?? "?"
        if json {
            say("{\"train_chars_per_s\": \(Int(trainCPS)), \"train_chars_per_s_mean\": \(Int(meanCPS)), \"train_gflops\": \(String(format: "%.1f", gflops)), \"step_ms_median\": \(String(format: "%.2f", median * 1000)), \"generate_chars_per_s\": \(Int(genCPS)), \"peak_memory_mib\": \(Int(peakMiB)), \"threads\": \(threads), \"batch\": \(batch), \"bptt\": \(bptt), \"cell\": \"\(cell)\", \"layers\": \(layers), \"hidden\": \(hidden), \"blas_core\": \"\(BLAS.coreName)\", \"load\": \"\(load)\"}")
        } else {
            say(String(format: "train: %.0f chars/s (median of %d steps; mean %.0f), %.1f GFLOP/s, step %.1f ms, threads %d, BLAS %@",
                       trainCPS, steps, meanCPS, gflops, median * 1000, threads, BLAS.coreName))
            say(String(format: "generate (batch 1): %.0f chars/s", genCPS))
            say(String(format: "peak memory: %.0f MiB; load average %@", peakMiB, load))
        }
    }
}
