import BardMetrics
import BardPlot
import Foundation
import Prometheus

/// A worker as the dashboard lists it.
public struct WorkerRow: Sendable, Codable {
    public let name: String
    public let columns: String
    public let steps: Int
    public let secondsSinceHeard: Double
    public init(name: String, columns: String, steps: Int, secondsSinceHeard: Double) {
        self.name = name; self.columns = columns; self.steps = steps; self.secondsSinceHeard = secondsSinceHeard
    }
}

/// Numbers the coordinator publishes from its transport and bookkeeping, outside the per-step records, each under a
/// fixed Prometheus name. All are present (0) from the start, so an alert need not wait for the first event.
public enum ClusterMetric: String, CaseIterable, Sendable {
    /// `bard_denied_handshakes_total` (counter): CURVE handshakes the ZAP handler denied (keys not in authorized_keys).
    case deniedHandshakes = "bard_denied_handshakes_total"
    /// `bard_dropped_messages_total` (counter): messages dropped unread for exceeding the receive limits.
    case droppedMessages = "bard_dropped_messages_total"
    /// `bard_quarantined_workers` (gauge): workers currently quarantined for misbehaving.
    case quarantinedWorkers = "bard_quarantined_workers"

    /// Whether the value is a running total (a counter) rather than a level (a gauge).
    public var isCounter: Bool { self != .quarantinedWorkers }

    var help: String {
        switch self {
        case .deniedHandshakes: return "CURVE handshakes denied by the ZAP handler (client keys not in authorized_keys)."
        case .droppedMessages: return "Messages dropped unread for exceeding the receive limits (too many frames or bytes)."
        case .quarantinedWorkers: return "Workers currently quarantined for misbehaving."
        }
    }
}

/// What the trainer reports, kept for the metrics endpoint and the dashboard. Written from the training thread,
/// read from the HTTP server's tasks: everything goes through the lock.
public final class RunMonitor: @unchecked Sendable {
    let lock = NSLock()
    let registry = PrometheusCollectorRegistry()
    var curves = RunCurves(name: "this run")
    var latest = MetricsRecord()
    var workers: [WorkerRow] = []
    var sample = ""
    var evictionLog: [String] = []
    let reference: ReferenceCurves?
    /// The run's length in steps; a run with a budget plans it again after every step.
    var totalSteps: Int
    let title: String
    var counted: [String: Double] = [:]

    let steps, evictions, rejected, bytes, rollbacks: Counter
    /// `bard_peer_bytes_total{role, peer, direction}`: made as processes first report.
    var peerBytes: [String: Counter] = [:]
    static let maxPeerSeries = 1024
    let trainLoss, charsPerSecond, workersAlive, stepGauge, epochGauge: Gauge
    /// Made at the first validation: before it there is no value (0 would look like a perfect model).
    var valLoss: Gauge?
    let phase: [String: Gauge]

    let charsPerEpoch: Double?
    let clusterCounters: [ClusterMetric: Counter]
    let clusterGauges: [ClusterMetric: Gauge]
    /// Last published running total of each counter.
    var published: [ClusterMetric: Double] = [:]

    public init(title: String, totalSteps: Int, charsPerEpoch: Double? = nil, reference: ReferenceCurves? = nil) {
        self.title = title; self.totalSteps = totalSteps; self.reference = reference; self.charsPerEpoch = charsPerEpoch
        steps = registry.makeCounter(name: "bard_steps_total", help: "Optimiser steps completed by this process.")
        evictions = registry.makeCounter(name: "bard_evictions_total", help: "Workers evicted (silent past the heartbeat timeout or the step timeout).")
        rejected = registry.makeCounter(name: "bard_rejected_messages_total", help: "Messages rejected: undecodable, unexpected or of the wrong shape.")
        bytes = registry.makeCounter(name: "bard_bytes_moved_total", help: "Bytes of cluster messages sent and received by the coordinator.")
        rollbacks = registry.makeCounter(name: "bard_rollbacks_total", help: "Times a sharded run went back to its last checkpoint because a coordinator shard lost its slice.")
        trainLoss = registry.makeGauge(name: "bard_train_loss", help: "Mean cross-entropy of the last training window (nats/char).")
        charsPerSecond = registry.makeGauge(name: "bard_chars_per_second", help: "Training throughput in characters per second.")
        workersAlive = registry.makeGauge(name: "bard_workers_alive", help: "Workers registered and not evicted.")
        stepGauge = registry.makeGauge(name: "bard_step", help: "Current optimiser step (continues across resumes).")
        epochGauge = registry.makeGauge(name: "bard_epoch", help: "Current epoch (1-based).")
        var phase: [String: Gauge] = [:]
        for p in MetricsRecord.phases {
            phase[p] = registry.makeGauge(name: "bard_step_seconds", labels: [("phase", p)],
                                          help: "Seconds of the last step: slowest worker's compute, other waiting (communication), making layer 0's table for local workers, sending, reduction, and the coordinator's update between steps.")
        }
        self.phase = phase
        var counters: [ClusterMetric: Counter] = [:], gauges: [ClusterMetric: Gauge] = [:]
        for m in ClusterMetric.allCases {
            if m.isCounter { counters[m] = registry.makeCounter(name: m.rawValue, help: m.help) } else {
                gauges[m] = registry.makeGauge(name: m.rawValue, help: m.help)
            }
        }
        clusterCounters = counters; clusterGauges = gauges
    }

    /// Publishes a cluster number: for a counter its running total (the metric rises by the increase; a total that
    /// went down, from a restarted source, counts afresh from 0), for a gauge its current value. Any thread.
    public func publish(_ metric: ClusterMetric, _ value: Double) {
        lock.lock(); defer { lock.unlock() }
        publishLocked(metric, value)
    }

    func publishLocked(_ metric: ClusterMetric, _ value: Double) {
        guard value.isFinite, value >= 0 else { return }
        if let gauge = clusterGauges[metric] { return gauge.set(value) }
        guard let counter = clusterCounters[metric] else { return }
        let last = published[metric] ?? 0
        let increase = value >= last ? value - last : value
        if increase > 0 { counter.increment(by: Int64(increase.rounded())) }
        published[metric] = value
    }

    /// One step's metrics record (the trainer's `onRecord`), the coordinator's workers after it, and the run's
    /// length as now planned.
    public func record(_ record: MetricsRecord, workers: [WorkerRow]? = nil, totalSteps: Int? = nil) {
        lock.lock(); defer { lock.unlock() }
        if let totalSteps { self.totalSteps = totalSteps }
        curves.add(record)
        latest = record
        if let workers { self.workers = workers }
        steps.increment()
        if let v = record.trainLoss { trainLoss.set(v) }
        if let v = record.valLoss {
            if valLoss == nil { valLoss = registry.makeGauge(name: "bard_validation_loss", help: "Last validation loss (nats/char).") }
            valLoss?.set(v)
        }
        if let v = record.charsPerS { charsPerSecond.set(v) }
        if let v = record.step { stepGauge.set(Double(v)) }
        if let v = record.epoch { epochGauge.set(Double(v)) }
        workersAlive.set(Double(workers?.count ?? record.workers ?? 0))
        let seconds = record.phaseSeconds
        for (p, g) in phase { if let v = seconds[p] { g.set(v) } }
        // The coordinator reports running totals; counters take the increase.
        for (key, counter, value) in [("evictions", evictions, record.evictions), ("rejected", rejected, record.rejected),
                                      ("bytes_moved", bytes, record.bytesMoved), ("rollbacks", rollbacks, record.rollbacks)] {
            guard let total = value else { continue }
            let increase = Double(total) - (counted[key] ?? 0)
            if increase > 0 { counter.increment(by: Int64(increase)) }
            counted[key] = max(Double(total), counted[key] ?? 0)
        }
        // Each process's bytes of the step: the lead's own, and what shards and workers reported.
        for t in record.traffic ?? [] {
            for (direction, value) in [("sent", t.sent), ("received", t.received)] where value > 0 {
                // Restarted workers take new names: past 1,024 series the newcomers are counted together.
                var peer = t.name
                if peerBytes["\(t.role.rawValue)\u{0}\(peer)\u{0}\(direction)"] == nil && peerBytes.count >= RunMonitor.maxPeerSeries {
                    peer = "others"
                }
                let key = "\(t.role.rawValue)\u{0}\(peer)\u{0}\(direction)"
                let counter = peerBytes[key] ?? registry.makeCounter(
                    name: "bard_peer_bytes_total", labels: [("role", t.role.rawValue), ("peer", peer), ("direction", direction)],
                    help: "Bytes of messages each process of the cluster sent and received (the lead's own count; shards and workers report theirs).")
                peerBytes[key] = counter
                counter.increment(by: Int64(value))
            }
        }
        // The coordinator's transport and quarantine numbers come in the same record.
        for (metric, value) in [(ClusterMetric.deniedHandshakes, record.deniedHandshakes),
                                (.droppedMessages, record.droppedMessages), (.quarantinedWorkers, record.quarantined)] {
            if let value { publishLocked(metric, Double(value)) }
        }
    }

    public func setSample(_ text: String) {
        lock.lock(); sample = text; lock.unlock()
    }

    public func prometheusText() -> [UInt8] {
        registry.emitToBuffer()
    }

    struct Status: Encodable {
        let title: String
        let step: Int
        let totalSteps: Int
        let epoch: Int
        let trainLoss: Double?
        let valLoss: Double?
        let charsPerSecond: Double?
        let evictions: Int
        let rejected: Int
        let redone: Int
        let bytesMoved: Double
        let stepSeconds: [String: Double]
        let workers: [WorkerRow]
        let sample: String
    }

    public func statusJSON() -> Data {
        lock.lock(); defer { lock.unlock() }
        let r = latest
        let status = Status(title: title, step: r.step ?? 0, totalSteps: totalSteps, epoch: r.epoch ?? 0,
                            trainLoss: r.trainLoss, valLoss: curves.validation.last?.y, charsPerSecond: r.charsPerS,
                            evictions: r.evictions ?? 0, rejected: r.rejected ?? 0, redone: r.redone ?? 0,
                            bytesMoved: Double(r.bytesMoved ?? 0), stepSeconds: r.phaseSeconds, workers: workers, sample: sample)
        return (try? JSONEncoder().encode(status)) ?? Data("{}".utf8)
    }

    public func curveSVG() -> String {
        lock.lock(); let run = curves; lock.unlock()
        return lossChart(runs: [run], reference: reference, charsPerEpoch: charsPerEpoch, title: title, referenceFollowsRuns: true).svg()
    }
}
