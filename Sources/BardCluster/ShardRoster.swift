import BardModel

/// The lead's list of its coordinator shards (sharded coordinators, issue 11): who joined under which name, key and
/// endpoint, which slice each owns, and when each was last heard. Takes joins and the current time; does no I/O and
/// reads no clock. The run starts with `wanted` shards, slices assigned in join order once all are in. A shard lost
/// mid-run is removed and the slices planned again over those that remain; one that joins mid-run (a replacement)
/// waits without a slice until the next plan.
public struct ShardRoster: Sendable {
    public struct Shard: Sendable {
        public var peer: PeerID
        public let name: String
        public var endpoint: String
        public var serverKey: String
        /// The CURVE key it joined with (nil on a plaintext run).
        public let key: String?
        public var lastHeard: Double
        /// Its slice, once the run's slices are planned.
        public var slice: Range<Int>?
        /// Whether it holds its slice's state as the lead last handed it (false after a re-join: it restarted).
        public var seeded = false
    }

    public enum Join: Equatable, Sendable {
        case joined
        /// A shard of this name (and key) joined again, from `previous` (the same connection or a new one).
        /// `lostState`: it held a slice it has now lost (a new process, on a new connection); a shard that says
        /// `join` on the same connection (until its seeding arrives, or after the lead was busy for a while) has
        /// lost nothing.
        case rejoined(previous: PeerID, lostState: Bool)
        case refused(RefusalCode, String)
    }

    public let wanted: Int
    public private(set) var shards: [Shard] = []
    /// Seconds of silence after which a shard is lost.
    public var heartbeatTimeout = 3.0

    public init(wanted: Int) { self.wanted = wanted }

    public var isComplete: Bool { shards.count == wanted }
    /// The shards that own slices (every one of them acknowledged its seeding), at least one.
    public var isSeeded: Bool {
        let owners = shards.filter { $0.slice != nil }
        return !owners.isEmpty && owners.allSatisfy(\.seeded)
    }
    /// The shards that own a slice now.
    public var owners: Int { shards.filter { $0.slice != nil }.count }
    /// Shards that joined after the slices were planned (replacements), waiting for the next plan.
    public var waiting: [Shard] { shards.filter { $0.slice == nil } }

    public func index(of peer: PeerID) -> Int? { shards.firstIndex { $0.peer == peer } }

    /// A `join`: only a key with the shard role, a valid name, the key that first took the name, and room.
    public mutating func join(peer: PeerID, name: String, endpoint: String, serverKey: String, credential: Credential?,
                              now: Double) -> Join {
        if let c = credential, c.role != .shard {
            return .refused(.wrongRole, "this key's role (\(c.role.rawValue)) may not join as a coordinator shard")
        }
        guard Membership.isValidName(name) else { return .refused(.badName, "a shard name must be 1-64 printable ASCII characters") }
        if let i = shards.firstIndex(where: { $0.name == name }) {
            guard shards[i].key == credential?.key else {
                return .refused(.nameTaken, "the shard name \(name) is held by another key")
            }
            let previous = shards[i].peer
            let lost = previous != peer
            shards[i].peer = peer; shards[i].endpoint = endpoint; shards[i].serverKey = serverKey
            shards[i].lastHeard = now
            if lost { shards[i].seeded = false }
            return .rejoined(previous: previous, lostState: lost)
        }
        if let i = index(of: peer) {
            // The same connection under another name: it is another shard now, unless it holds a slice, which it
            // would silently take out of the run.
            guard shards[i].slice == nil else {
                return .refused(.badName, "a coordinator shard that owns a slice cannot change its name (\(shards[i].name) to \(name))")
            }
            shards.remove(at: i)
        }
        guard shards.count < wanted else {
            return .refused(.full, "this run has its \(wanted) coordinator shard\(wanted == 1 ? "" : "s")")
        }
        shards.append(Shard(peer: peer, name: name, endpoint: endpoint, serverKey: serverKey, key: credential?.key,
                            lastHeard: now))
        return .joined
    }

    public mutating func heard(_ peer: PeerID, now: Double) {
        if let i = index(of: peer) { shards[i].lastHeard = max(shards[i].lastHeard, now) }
    }

    /// A message on a shard's connection must carry the key it joined with.
    public func isAuthentic(_ peer: PeerID, credential: Credential?) -> Bool {
        guard let i = index(of: peer) else { return true }
        return shards[i].key == credential?.key
    }

    /// The lead did not listen for `gap` seconds (validating, writing a checkpoint): the shards' silence then is its
    /// own, not theirs.
    public mutating func excuse(gap: Double, now: Double) {
        for i in shards.indices { shards[i].lastHeard = min(now, shards[i].lastHeard + gap) }
    }

    /// Shards not heard from for the heartbeat timeout.
    public func silent(now: Double) -> [Shard] { shards.filter { now - $0.lastHeard > heartbeatTimeout } }

    /// When the first shard falls silent, if none is yet.
    public var nextSilence: Double? { shards.map { $0.lastHeard + heartbeatTimeout }.min() }

    public mutating func remove(_ peer: PeerID) -> Shard? {
        guard let i = index(of: peer) else { return nil }
        return shards.remove(at: i)
    }

    /// Plans the slices of `parameterCount` parameters over the shards there are, in join order; each is then
    /// unseeded until it acknowledges its new slice. Returns whether any shard's slice changed.
    @discardableResult
    public mutating func assignSlices(parameterCount: Int) throws -> Bool {
        let slices = try ParameterSlices.plan(parameterCount: parameterCount, shards: shards.count)
        var changed = false
        for i in shards.indices {
            changed = changed || shards[i].slice != slices[i]
            shards[i].slice = slices[i]
            shards[i].seeded = false
        }
        return changed
    }

    public mutating func seeded(_ peer: PeerID) {
        if let i = index(of: peer) { shards[i].seeded = true }
    }

    /// Where workers find the shards and their slices, in slice order.
    public var map: [ShardEndpoint] {
        shards.compactMap { s in s.slice.map { ShardEndpoint(endpoint: s.endpoint, serverKey: s.serverKey, slice: $0) } }
    }

    /// The shards with their slices, in slice order, for a step's `ShardRound`.
    public var round: [(peer: PeerID, slice: Range<Int>)] { shards.compactMap { s in s.slice.map { (s.peer, $0) } } }
}
