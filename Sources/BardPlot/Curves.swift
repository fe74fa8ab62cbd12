import BardMetrics
import Foundation

/// A run's loss curves against characters seen.
public struct RunCurves: Sendable {
    public var name: String
    public var train: [(x: Double, y: Double)] = []
    public var validation: [(x: Double, y: Double)] = []
    /// Characters of one epoch (from the first epoch end), to place reference curves recorded per epoch.
    public var charsPerEpoch: Double?

    public init(name: String) { self.name = name }

    /// Adds one metrics record (a line of metrics.jsonl, or a live step).
    public mutating func add(_ record: MetricsRecord) {
        guard let chars = record.chars.map(Double.init) else { return }
        if let t = record.trainLoss { train.append((chars, t)) }
        if let v = record.valLoss {
            validation.append((chars, v))
            if charsPerEpoch == nil, let e = record.epoch, e > 0 { charsPerEpoch = chars / Double(e) }
        }
    }

    /// Reads a metrics.jsonl file; the run is named after its directory.
    public static func load(path: String) throws -> RunCurves {
        guard let data = FileManager.default.contents(atPath: path) else { throw PlotError("\(path): no such file or not readable") }
        let dirName = URL(fileURLWithPath: path).deletingLastPathComponent().lastPathComponent
        var run = RunCurves(name: dirName.isEmpty ? path : dirName)
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n").enumerated() where !line.isEmpty {
            guard (try? JSONSerialization.jsonObject(with: Data(line.utf8))) is [String: Any] else {
                throw PlotError("\(path):\(n + 1): not a JSON object")
            }
            // An object of another shape (another tool's line) is passed over, as a record without the fields is.
            if let record = MetricsRecord.decode(line: line) { run.add(record) }
        }
        guard !run.train.isEmpty else { throw PlotError("\(path): no records with chars and train_loss (is this a Bard metrics.jsonl?)") }
        return run
    }

    /// The train curve averaged into at most `buckets` points (thousands of noisy steps would hide the trend).
    public func smoothedTrain(buckets: Int = 400) -> [(x: Double, y: Double)] {
        guard train.count > buckets else { return train }
        let size = Double(train.count) / Double(buckets)
        return (0..<buckets).map { b in
            let lo = Int(Double(b) * size), hi = max(lo + 1, Int(Double(b + 1) * size))
            let slice = train[lo..<min(hi, train.count)]
            return (slice.map(\.x).reduce(0, +) / Double(slice.count), slice.map(\.y).reduce(0, +) / Double(slice.count))
        }
    }
}

/// Reference validation curves recorded per epoch (../shared/reference/pytorch_curves_h100.jsonl: cfg, epoch, val).
public struct ReferenceCurves: Sendable {
    public var curves: [(name: String, epochs: [(epoch: Double, val: Double)])] = []

    public init(curves: [(name: String, epochs: [(epoch: Double, val: Double)])]) { self.curves = curves }

    public static func load(path: String, only: [String] = []) throws -> ReferenceCurves {
        guard let data = FileManager.default.contents(atPath: path) else { throw PlotError("\(path): no such file or not readable") }
        var order: [String] = []
        var byName: [String: [(Double, Double)]] = [:]
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n").enumerated() where !line.isEmpty {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let epoch = (obj["epoch"] as? NSNumber)?.doubleValue, let val = (obj["val"] as? NSNumber)?.doubleValue else {
                throw PlotError("\(path):\(n + 1): expected a JSON object with epoch and val")
            }
            let name = obj["cfg"] as? String ?? "reference"
            if !only.isEmpty && !only.contains(name) { continue }
            if byName[name] == nil { order.append(name) }
            byName[name, default: []].append((epoch, val))
        }
        guard !order.isEmpty else {
            throw PlotError(only.isEmpty ? "\(path): no reference records" : "\(path): no records for \(only.joined(separator: ", "))")
        }
        return ReferenceCurves(curves: order.map { ($0, byName[$0]!.map { (epoch: $0.0, val: $0.1) }) })
    }
}

public struct PlotError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// The chart `bard plot` writes and the dashboard shows: per run a thin train line and a validation line with
/// markers in one colour, references dashed.
/// `referenceUpTo` cuts the reference curves a little past the runs' progress (the live dashboard), so a young run
/// is not squeezed against the axis by a reference that trained for many more epochs.
public func lossChart(runs: [RunCurves], reference: ReferenceCurves?, charsPerEpoch: Double?, title: String,
                      referenceFollowsRuns: Bool = false) -> LineChart {
    var series: [Series] = []
    for (i, run) in runs.enumerated() {
        let prefix = runs.count > 1 ? run.name + " " : ""
        series.append(Series(name: prefix + "train", points: run.smoothedTrain(), style: .thin, colour: i))
        if !run.validation.isEmpty {
            series.append(Series(name: prefix + "validation", points: run.validation, style: .solid, colour: i, markers: true))
        }
    }
    if let reference, let perEpoch = charsPerEpoch ?? runs.lazy.compactMap(\.charsPerEpoch).first {
        let reached = runs.flatMap(\.train).map(\.x).max() ?? 0
        let limit = referenceFollowsRuns ? max(reached * 1.25, perEpoch) : .infinity
        for (k, c) in reference.curves.enumerated() {
            series.append(Series(name: c.name + " (ref)", points: c.epochs.map { ($0.epoch * perEpoch, $0.val) }.filter { $0.0 <= limit },
                                 style: .dashed, colour: runs.count + k, markers: referenceFollowsRuns))
        }
    }
    return LineChart(title: title, xLabel: "characters seen", yLabel: "loss (nats/char)", series: series, yCap: 3.5)
}
