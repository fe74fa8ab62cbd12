import BardMetrics
import Foundation
import BardModel

/// The live progress line, in the chapter's spirit: epoch, batch i/n, chars/s, loss, perplexity, min loss, ETA.
/// Redrawn in place on a terminal; printed every `interval` seconds otherwise.
final class Progress {
    var total: Int
    let windowsPerEpoch: Int, interval: Double
    let isTTY = isatty(STDERR_FILENO) != 0
    var recent: [(seconds: Double, chars: Int)] = []
    var lastPrint = Date.distantPast
    var lineOpen = false

    init(total: Int, windowsPerEpoch: Int, interval: Double) {
        self.total = total; self.windowsPerEpoch = windowsPerEpoch; self.interval = interval
    }

    func record(stepSeconds: Double, chars: Int) {
        recent.append((stepSeconds, chars))
        if recent.count > 20 { recent.removeFirst() }
    }

    /// Median over the last steps, so one slow step on a shared machine does not swing the figure.
    var charsPerSecond: Double {
        guard !recent.isEmpty else { return 0 }
        let rates = recent.map { Double($0.chars) / max($0.seconds, 1e-9) }.sorted()
        return rates[rates.count / 2]
    }

    func show(step: Int, epoch: Int, window: Int, loss: Double, minLoss: Double, suffix: String = "") {
        let now = Date()
        guard now.timeIntervalSince(lastPrint) >= (isTTY ? 0.25 : interval) else { return }
        lastPrint = now
        let perStep = recent.map(\.seconds).sorted()[recent.count / 2]
        // A budget run's length is unknown until its first plan.
        let known = total < Int.max / 8
        let eta = known ? Double(total - step) * perStep : .nan
        let line = String(format: "epoch %d batch %d/%d | %.0f chars/s | loss %.4f ppl %.2f | min %.4f | step %d/%@ | ETA %@",
                          epoch + 1, window, windowsPerEpoch, charsPerSecond, loss, exp(loss), minLoss, step,
                          known ? String(total) : "?", formatDuration(eta)) + (suffix.isEmpty ? "" : " | " + suffix)
        if isTTY {
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8)); lineOpen = true
        } else {
            print(line); fflush(stdout)
        }
    }

    func finishLine() {
        if lineOpen { FileHandle.standardError.write(Data("\n".utf8)); lineOpen = false }
    }
}

public func formatDuration(_ s: Double) -> String {
    guard s.isFinite, s >= 0 else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t / 60 % 60) : String(format: "%dm%02ds", t / 60, t % 60)
}

/// `OUT/metrics.jsonl`: one JSON object per optimiser step, appended (a resumed run continues the file).
final class MetricsLog {
    let handle: FileHandle
    /// Keeps the records of steps up to `keepThroughStep` (a resumed run's past; 0 for a fresh run) and drops the
    /// rest, so steps redone after a crash are not logged twice and a new run does not mix with an old one.
    init(path: String, keepThroughStep: Int) throws {
        var kept = Data()
        if keepThroughStep > 0, let old = FileManager.default.contents(atPath: path) {
            for line in old.split(separator: UInt8(ascii: "\n")) {
                guard let s = MetricsRecord.decode(line: String(decoding: line, as: UTF8.self))?.step, s <= keepThroughStep else { continue }
                kept.append(Data(line)); kept.append(UInt8(ascii: "\n"))
            }
        }
        guard FileManager.default.createFile(atPath: path, contents: kept) else { throw BardError.io("cannot write \(path)") }
        guard let h = FileHandle(forWritingAtPath: path) else { throw BardError.io("cannot open \(path) for writing") }
        h.seekToEndOfFile()
        handle = h
    }
    func write(_ record: MetricsRecord) {
        handle.write(Data((record.jsonLine() + "\n").utf8))
    }
}
