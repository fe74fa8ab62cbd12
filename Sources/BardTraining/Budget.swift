import Foundation

/// Training to a deadline (`--budget`): how many steps the time left buys, planned again after every step from the
/// run's own measured pace, keeping back what the end costs (the final validation and checkpoint).
public struct BudgetPlan: Sendable {
    /// The whole budget in seconds, counting time spent before a resume.
    public let seconds: Double
    /// Characters the final validation reads, and the batch x bptt characters of one step, to estimate its cost from
    /// the training pace until a validation has been timed.
    let validationChars: Int
    let stepChars: Int
    /// Seconds the last validation took, once one has run.
    public var measuredValidation: Double?

    public init(seconds: Double, validationChars: Int, stepChars: Int) {
        self.seconds = seconds; self.validationChars = validationChars; self.stepChars = stepChars
    }

    /// What the end of the run costs: a validation (forward only: about a third of a training step's work per
    /// character, measured 0.36 for LSTM 512; taken as 0.4) and a checkpoint, plus a margin.
    func finishSeconds(stepSeconds: Double) -> Double {
        let validation = measuredValidation ?? stepSeconds * Double(validationChars) / Double(max(1, stepChars)) * 0.4
        return 1.2 * validation + 1
    }

    /// The run's total steps given `step` done, `elapsed` seconds spent (this budget's), and the measured seconds per
    /// step (wall time, everything included). Never fewer than `step`: a plan at or below it ends the run now.
    public func totalSteps(step: Int, elapsed: Double, stepSeconds: Double) -> Int {
        let left = seconds - elapsed - finishSeconds(stepSeconds: stepSeconds)
        guard left > 0, stepSeconds > 0 else { return step }
        return step + Int(left / stepSeconds)
    }

    /// `10m`, `1h30m`, `90s`, `2h`, `45` (seconds), `1.5h`: seconds, or nil.
    public static func parse(_ text: String) -> Double? {
        let units: [Character: Double] = ["h": 3600, "m": 60, "s": 1]
        var total = 0.0, number = "", sawUnit = false
        for ch in text {
            if ch.isNumber || ch == "." { number.append(ch); continue }
            guard let unit = units[ch], let v = Double(number) else { return nil }
            total += v * unit; number = ""; sawUnit = true
        }
        if !number.isEmpty {
            guard let v = Double(number), !sawUnit else { return nil }
            total += v
        }
        return total > 0 && total.isFinite ? total : nil
    }
}
