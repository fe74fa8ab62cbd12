import Foundation

/// One training step's metrics: a line of metrics.jsonl, what the monitor shows and what `bard plot` reads. One
/// typed value for the trainer, the coordinator and the monitor; the JSON keys are the snake_case names below.
/// Decoding is defensive: every field may be missing (older files, other tools), and a line that is not a record
/// decodes to nil.
public struct MetricsRecord: Codable, Equatable, Sendable {
    public var step: Int?
    /// 1-based epoch the step belongs to.
    public var epoch: Int?
    /// Training characters seen so far.
    public var chars: Int?
    public var trainLoss: Double?
    public var charsPerS: Double?
    public var lr: Double?
    /// Seconds of training so far (counting those before a resume).
    public var time: Double?
    public var gradNorm: Double?
    public var valLoss: Double?
    public var valPerplexity: Double?
    /// Validation loss of the averaged parameters (`--ema`).
    public var valLossEma: Double?

    // The coordinator's, per step: workers registered, the step's time split, and running totals.
    public var workers: Int?
    public var computeS: Double?
    public var communicationS: Double?
    public var sendS: Double?
    /// Making layer 0's table for the workers on the coordinator's host (its gradients are part of `reduceS`).
    public var tableS: Double?
    public var reduceS: Double?
    public var updateS: Double?
    public var bytesMoved: Int?
    public var evictions: Int?
    public var rejected: Int?
    public var redone: Int?
    public var quarantines: Int?
    public var quarantined: Int?
    public var droppedMessages: Int?
    public var deniedHandshakes: Int?
    public var stepDeadlineS: Double?
    /// Times a sharded run went back to its last checkpoint because a coordinator shard lost its slice.
    public var rollbacks: Int?
    /// The step's bytes, process by process: the lead (coordinator), each coordinator shard and each worker.
    public var traffic: [PeerTraffic]?

    enum CodingKeys: String, CodingKey {
        case step, epoch, chars, lr, time, workers, evictions, rejected, redone, quarantines, quarantined, rollbacks, traffic
        case trainLoss = "train_loss", charsPerS = "chars_per_s", gradNorm = "grad_norm", valLoss = "val_loss"
        case valPerplexity = "val_perplexity", valLossEma = "val_loss_ema", computeS = "compute_s", communicationS = "communication_s", sendS = "send_s"
        case tableS = "table_s", reduceS = "reduce_s", updateS = "update_s", bytesMoved = "bytes_moved", droppedMessages = "dropped_messages"
        case deniedHandshakes = "denied_handshakes", stepDeadlineS = "step_deadline_s"
    }

    public init() {}

    /// The phases of a coordinator's step, by name: the slowest worker's compute, other waiting (communication),
    /// making layer 0's table for the local workers, sending, the reduction and the update between steps.
    public static let phases = ["compute", "communication", "table", "send", "reduce", "update"]

    /// The step's time split by phase (`phases`), for those the record has.
    public var phaseSeconds: [String: Double] {
        var out: [String: Double] = [:]
        for (name, v) in zip(MetricsRecord.phases, [computeS, communicationS, tableS, sendS, reduceS, updateS]) {
            if let v { out[name] = v }
        }
        return out
    }

    /// One line of JSON, keys sorted, missing fields left out; non-finite numbers as null.
    public func jsonLine() -> String {
        var r = self
        for kp in [\MetricsRecord.trainLoss, \.charsPerS, \.lr, \.time, \.gradNorm, \.valLoss, \.valPerplexity, \.valLossEma, \.computeS,
                   \.communicationS, \.sendS, \.tableS, \.reduceS, \.updateS, \.stepDeadlineS] where !(r[keyPath: kp]?.isFinite ?? true) {
            r[keyPath: kp] = nil
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(r) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    /// A line of metrics.jsonl; nil if it is not a JSON object of this shape.
    public static func decode(line: some StringProtocol) -> MetricsRecord? {
        try? JSONDecoder().decode(MetricsRecord.self, from: Data(line.utf8))
    }
}

/// The bytes of messages one process of a cluster sent and received over a step (frames, without ZeroMQ's or TCP's
/// framing): the lead counts its own, workers report theirs with each result and shards with each acknowledged
/// update, their reports included. A process reports what it moved since its last report, so a step that was
/// done again is counted where its redo lands. Over the network interfaces the figures are about 1% higher (TCP
/// and IP headers).
public struct PeerTraffic: Codable, Equatable, Sendable {
    public enum Role: String, Codable, Sendable {
        case lead, shard, worker
        /// A role this version does not know (a newer writer's), kept rather than losing the record.
        case other
    }
    public var name: String
    public var role: Role
    public var sent: Int
    public var received: Int

    public init(name: String, role: Role, sent: Int, received: Int) {
        self.name = name; self.role = role; self.sent = sent; self.received = received
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        role = Role(rawValue: (try? c.decode(String.self, forKey: .role)) ?? "") ?? .other
        sent = try c.decode(Int.self, forKey: .sent)
        received = try c.decode(Int.self, forKey: .received)
    }
}
