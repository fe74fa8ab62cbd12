import Foundation

public enum CellKind: String, Codable, CaseIterable, Sendable {
    case lstm, rnn, gru

    /// The one place a kind maps to its implementation (Cells/). `activation` reaches only cells that use it.
    public func cell(activation: Activation = .tanh) -> any RecurrentCell {
        switch self {
        case .lstm: return LSTMCell()
        case .gru: return GRUCell()
        case .rnn: return RNNCell(activation: activation)
        }
    }

    /// Gate blocks stacked in weight_ih / weight_hh.
    public var gates: Int { cell().gates }
}

public enum Activation: String, Codable, CaseIterable, Sendable { case tanh, sigmoid }
public enum OptimizerKind: String, Codable, CaseIterable, Sendable { case sgd, adam }
/// `book`: the chapter's init_hidden, zeros with unit 0 of h (and c) set to 1.
public enum InitialState: String, Codable, CaseIterable, Sendable { case zeros, book }
/// `pytorch`: PyTorch's default initialisers; `book`: the chapter's (He-normal weights, zero biases, zero output weight).
public enum InitScheme: String, Codable, CaseIterable, Sendable { case pytorch, book }

/// The one configuration of a run: model shape and training recipe. Defaults live here, `validate()` checks them,
/// it is printed at start and saved in every checkpoint.
public struct Config: Codable, Equatable, Sendable {
    // Model
    public var cell: CellKind = .lstm
    public var activation: Activation = .tanh
    public var layers = 2
    public var embed = 512
    public var hidden = 512
    public var dropout: Float = 0.25
    public var outputBias = true
    public var initialState: InitialState = .zeros
    public var initScheme: InitScheme = .pytorch
    // Training
    public var recipe = "default"
    public var optimizer: OptimizerKind = .adam
    public var lr = 2e-3
    public var lrDecay = 0.95
    /// nil in checkpoints older than schedules: `.exp`.
    public var schedule: Schedule?
    /// Steps of linear warmup (nil: 0).
    public var warmup: Int?
    /// Train until this many seconds are spent (counting those before a resume), instead of for epochs or steps.
    public var budget: Double?
    /// Keep an exponential moving average of the parameters with this decay (nil: off); the model file holds it.
    public var ema: Double?
    public var clip = 5.0
    public var batch = 32
    public var bptt = 50
    public var epochs = 13
    /// Total optimiser steps of the run (counting those before a resume); nil: run `epochs` epochs.
    public var steps: Int?
    public var seed: UInt64 = 0
    public var valFraction = 0.1
    public var carryState = false
    public var threads = 1

    public init() {}

    /// The recipes of ../shared/reference (`default` is adam_2x512_do25_b32_t50), and the recipes for a deadline:
    /// `10m`, `30m` and `60m` train for that long (their `--budget`), each with the model and schedule that measured
    /// best for it on 2 cores (scripts/bench-budget.sh, docs/budget.md).
    public static let recipeNames = ["default", "adam_2x512_do25_b32_t50", "adam_1x512_b32_t50", "book", "10m", "30m", "60m"]

    /// The chapter's alpha, 0.05, applies to the window loss summed over bptt steps; on the mean loss Bard minimises
    /// that is 0.05 x bptt. The book recipe's one rule, for its default window and any other.
    public static func bookLearningRate(bptt: Int) -> Double { 0.05 * Double(bptt) }

    public static func recipe(_ name: String) throws -> Config {
        var c = Config()
        c.recipe = name
        switch name {
        case "default", "adam_2x512_do25_b32_t50":
            break
        case "adam_1x512_b32_t50":
            c.layers = 1; c.dropout = 0; c.epochs = 7
        case "10m":
            // One layer: its input projection is a table lookup, so it is the fastest to learn in a short run.
            c.layers = 1; c.dropout = 0.2; c.batch = 64; c.lr = 3e-3; c.schedule = .cosine; c.budget = 600
        case "30m":
            // Averaging buys 0.004 here (1.4092 against 1.4136 without, docs/budget.md), so it is on.
            c.layers = 2; c.dropout = 0.25; c.batch = 64; c.lr = 3e-3; c.warmup = 100; c.schedule = .cosine; c.budget = 1800
            c.ema = 0.998
        case "60m":
            // Wider rather than longer: two layers of 704 take about 10 epochs in an hour (the count at which the 30m
            // model is at its best), where two layers of 512 for 19 epochs overfit (1.4273), 640 with dropout 0.35 for
            // 13 reached 1.4108, 768 got only 9 (1.4181) and three layers of 512 lagged (docs/budget.md). Averaging
            // buys 0.002-0.004 at the end, so it is on.
            c.layers = 2; c.hidden = 704; c.dropout = 0.3; c.batch = 64; c.lr = 3e-3; c.warmup = 100; c.schedule = .cosine
            c.budget = 3600; c.ema = 0.998
        case "book", "book_sgd_b16_t25":
            c.recipe = "book"
            c.layers = 1; c.dropout = 0; c.outputBias = false; c.initialState = .book; c.initScheme = .book
            c.optimizer = .sgd; c.lrDecay = 0.99; c.clip = 0; c.batch = 16; c.bptt = 25; c.epochs = 6
            c.lr = Config.bookLearningRate(bptt: c.bptt)
        default:
            throw BardError.invalidArgument("unknown recipe '\(name)' (known: \(recipeNames.joined(separator: ", ")))")
        }
        return c
    }

    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws { if !ok { throw BardError.invalidArgument(message) } }
        try check(layers >= 1 && layers <= 16, "--layers must be 1...16 (got \(layers))")
        try check(embed >= 1 && embed <= 16384, "--embed must be 1...16384 (got \(embed))")
        try check(hidden >= 1 && hidden <= 16384, "--hidden must be 1...16384 (got \(hidden))")
        try check(dropout >= 0 && dropout < 1, "--dropout must be in [0, 1) (got \(dropout))")
        try check(lr > 0 && lr.isFinite, "--lr must be positive (got \(lr))")
        try check(lrDecay > 0 && lrDecay <= 1, "--lr-decay must be in (0, 1] (got \(lrDecay))")
        try check(ema.map { $0 > 0 && $0 < 1 } ?? true, "--ema must be in (0, 1) (got \(ema ?? 0))")
        try check((warmup ?? 0) >= 0, "--warmup must be >= 0 (got \(warmup ?? 0))")
        try check(clip >= 0 && clip.isFinite, "--clip must be >= 0 (got \(clip))")
        try check(batch >= 1 && batch <= 65536, "--batch must be 1...65536 (got \(batch))")
        try check(bptt >= 1 && bptt <= 10000, "--bptt must be 1...10000 (got \(bptt))")
        try check(epochs >= 1, "--epochs must be >= 1 (got \(epochs))")
        try check(steps.map { $0 >= 1 } ?? true, "--steps must be >= 1")
        try check(valFraction >= 0 && valFraction < 1, "--val-fraction must be in [0, 1) (got \(valFraction))")
        try check(threads >= 1 && threads <= 256, "--threads must be 1...256 (got \(threads))")
        try check(cell.cell().usesActivation || activation == .tanh,
                  "--activation applies to --cell \(CellKind.allCases.filter { $0.cell().usesActivation }.map(\.rawValue).joined(separator: ", ")) only")
    }

    /// One line per group, for the start of a run.
    public var summary: String {
        var s = "model: \(cell)\(cell.cell().usesActivation ? "(\(activation))" : "") layers \(layers) embed \(embed) hidden \(hidden) "
        s += "dropout \(dropout) output-bias \(outputBias) init \(initScheme) initial-state \(initialState)\n"
        s += "train: recipe \(recipe) \(optimizer) lr \(lr) schedule \((schedule ?? .exp).rawValue)"
        s += (schedule ?? .exp) == .exp ? " decay \(lrDecay)" : ""
        s += (warmup ?? 0) > 0 ? " warmup \(warmup ?? 0)" : ""
        s += " clip \(clip) batch \(batch) bptt \(bptt) "
        s += steps.map { "steps \($0)" } ?? "epochs \(epochs)"
        s += budget.map { String(format: " budget %.0fs", $0) } ?? ""
        s += ema.map { " ema \($0)" } ?? ""
        s += " seed \(seed) val-fraction \(valFraction) threads \(threads)\(carryState ? " carry-state" : "")"
        return s
    }

    public func jsonString() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        guard let data = try? enc.encode(self), let s = String(data: data, encoding: .utf8) else { return "{}" }
        return s
    }
}

/// Errors a user can cause. Each prints as one line that says what to do.
public enum BardError: Error, CustomStringConvertible, Equatable {
    case invalidArgument(String)
    case badInput(String)
    case badCheckpoint(String)
    case diverged(String)
    case io(String)
    /// The other side of a connection refused us (another corpus, another protocol version).
    case refused(String)

    public var description: String {
        switch self {
        case .invalidArgument(let m), .badInput(let m), .badCheckpoint(let m), .diverged(let m), .io(let m), .refused(let m):
            return m
        }
    }
}
