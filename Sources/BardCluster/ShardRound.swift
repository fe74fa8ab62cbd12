import BardNumerics

/// The lead's side of one sharded step attempt (issue 11): which shards still owe their blocks' parts of the squared
/// gradient norm (`summed`), the global norm once all are in, and then which still owe the acknowledgement of the update
/// (`applied`). Takes replies; does no I/O and reads no clock. As with `StepRound`, an attempt that loses a shard is
/// abandoned whole.
public struct ShardRound: Sendable {
    public let stepID: UInt64
    /// The shards in slice order, with their slices.
    let shards: [(peer: PeerID, slice: Range<Int>)]
    var parts: [[Double]?]
    var acknowledged: [Bool]
    /// Whether every shard's update wrote finite parameters and moments.
    public private(set) var paramsFinite = true
    public private(set) var momentsFinite = true
    /// The version the update is to make, once ordered.
    public private(set) var version: UInt64?

    public enum Reply: Equatable, Sendable {
        case accepted
        case rejected(String)
    }

    public init(stepID: UInt64, shards: [(peer: PeerID, slice: Range<Int>)]) {
        self.stepID = stepID; self.shards = shards
        parts = Array(repeating: nil, count: shards.count)
        acknowledged = Array(repeating: false, count: shards.count)
    }

    func index(of peer: PeerID) -> Int? { shards.firstIndex { $0.peer == peer } }

    /// A shard's parts: one per block of its slice, once, for this step.
    public mutating func summed(stepID: UInt64, parts p: [Double], from peer: PeerID) -> Reply {
        guard stepID == self.stepID else { return .rejected("norm parts for step \(stepID), the current one is \(self.stepID)") }
        guard let i = index(of: peer) else { return .rejected("norm parts from a shard not in this step") }
        guard parts[i] == nil else { return .rejected("norm parts sent twice for step \(stepID)") }
        guard p.count == Blocks.count(shards[i].slice.count) else {
            return .rejected("\(p.count) norm parts for a slice of \(Blocks.count(shards[i].slice.count)) blocks")
        }
        parts[i] = p
        return .accepted
    }

    public var isSummed: Bool { parts.allSatisfy { $0 != nil } }

    /// The global gradient norm: every shard's parts added in slice order, so the bits of one process's norm.
    public var norm: Double? {
        guard isSummed else { return nil }
        return parts.reduce(into: [Double]()) { $0 += $1 ?? [] }.reduce(0, +).squareRoot()
    }

    /// The update was ordered, making `version`.
    public mutating func ordered(version v: UInt64) { version = v }

    /// A shard's acknowledgement of the update: once, for this step and version.
    public mutating func applied(stepID: UInt64, version v: UInt64, paramsFinite pf: Bool, momentsFinite mf: Bool,
                                 from peer: PeerID) -> Reply {
        guard stepID == self.stepID, let version, v == version else {
            return .rejected("an acknowledgement of step \(stepID) version \(v), the update in progress is step \(self.stepID) version \(version.map(String.init) ?? "none")")
        }
        guard let i = index(of: peer) else { return .rejected("an acknowledgement from a shard not in this step") }
        guard !acknowledged[i] else { return .rejected("an acknowledgement sent twice for step \(stepID)") }
        acknowledged[i] = true
        paramsFinite = paramsFinite && pf
        momentsFinite = momentsFinite && mf
        return .accepted
    }

    public var isApplied: Bool { version != nil && acknowledged.allSatisfy { $0 } }

    /// Shards that still owe something: their parts before the update is ordered, their acknowledgement after.
    public var owing: [PeerID] {
        shards.indices.filter { version == nil ? parts[$0] == nil : !acknowledged[$0] }.map { shards[$0].peer }
    }
}
