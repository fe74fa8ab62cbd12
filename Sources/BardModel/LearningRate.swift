import Foundation

/// How the learning rate moves over a run.
public enum Schedule: String, Codable, CaseIterable, Sendable {
    /// `lr x lrDecay^epoch`: the chapter's and the reference recipes' per-epoch decay.
    case exp
    /// Half a cosine from `lr` down to `lr / 10` at the run's last step (nanoGPT's `get_lr`).
    case cosine
    /// A straight line from `lr` down to 0 at the run's last step.
    case linear
}

/// The learning rate's one home: a pure function of the configuration and where the run is, used for every update,
/// every metrics record and every resume (nothing stores a rate that could drift from it).
public enum LearningRate {
    /// The rate of the update made at `step` (0-based: the run's first update is step 0), in `epoch` (0-based), of a
    /// run of `totalSteps` updates. Warmup (`config.warmup` steps) ramps linearly from lr / warmup up to lr first.
    public static func at(step: Int, epoch: Int, totalSteps: Int, config c: Config) -> Double {
        let warmup = c.warmup ?? 0
        let base: Double
        switch c.schedule ?? .exp {
        case .exp:
            base = c.lr * pow(c.lrDecay, Double(epoch))
        case .cosine, .linear:
            // Progress through the steps after warmup, 0 at the first and 1 at the last.
            let span = max(1, totalSteps - warmup - 1)
            let t = min(1, max(0, Double(step - warmup) / Double(span)))
            base = c.schedule == .cosine ? c.lr / 10 + (c.lr - c.lr / 10) * 0.5 * (1 + cos(Double.pi * t)) : c.lr * (1 - t)
        }
        return step < warmup ? base * Double(step + 1) / Double(warmup) : base
    }
}
