import Foundation

/// A registered worker, as the coordinator knows it.
public struct Member: Sendable {
    /// The name it registered with (from its hello), unique among members.
    public let name: String
    /// Its current connection; a restarted process with the same name and key replaces it.
    public internal(set) var peer: PeerID
    /// The CURVE key it registered with; every later message on its connection must carry the same one.
    public let key: String?
    public internal(set) var lastHeard: Double
    /// The parameter version the worker holds (`.max`: none).
    public internal(set) var parameterVersion: UInt64 = .max
    public internal(set) var columns: Range<Int>?
    public internal(set) var steps = 0
    /// Missed step deadlines; each quarantine lasts twice as long as the one before.
    public internal(set) var strikes = 0
    public internal(set) var quarantinedUntil = -Double.infinity

    public func isQuarantined(at now: Double) -> Bool { now < quarantinedUntil }
}

public struct MembershipPolicy: Sendable {
    /// A worker not heard from for this long is evicted (at exactly this many seconds).
    public var heartbeatTimeout = 3.0
    /// Most workers admitted at once; further hellos are refused with `full`.
    public var maxWorkers = 256
    /// The first quarantine's length; each further strike doubles it, up to `quarantineMax`.
    public var quarantineBase = 5.0
    public var quarantineMax = 300.0
    /// Longest name, in bytes (printable ASCII only).
    public static let maxNameBytes = 64
    public init() {}
}

/// What a hello did.
public enum Registration: Equatable, Sendable {
    case joined
    /// The same name and key on `previous` (the same connection, or a dead one): a restarted worker process.
    case restarted(previous: PeerID)
    case refused(RefusalCode, String)
}

/// Who the workers are: registration bound to name and key, heartbeats, eviction of the silent, quarantine of the
/// slow. Takes events and the current time; does no I/O and reads no clock.
public struct Membership: Sendable {
    public var policy: MembershipPolicy
    /// In order of joining: the shard plan follows it.
    public private(set) var members: [Member] = []

    public init(policy: MembershipPolicy = MembershipPolicy()) { self.policy = policy }

    public func index(of peer: PeerID) -> Int? { members.firstIndex { $0.peer == peer } }
    public func member(_ peer: PeerID) -> Member? { index(of: peer).map { members[$0] } }

    /// 1 to 64 bytes of printable ASCII: what a log line and a dashboard can show as it is.
    public static func isValidName(_ name: String) -> Bool {
        let u = Array(name.utf8)
        return !u.isEmpty && u.count <= MembershipPolicy.maxNameBytes && u.allSatisfy { $0 >= 0x21 && $0 <= 0x7E }
    }

    /// A hello: a worker joins, a restarted one takes its place back, or it is refused (bad name, wrong role, a name
    /// another key holds, no room).
    public mutating func register(peer: PeerID, name: String, credential: Credential?, now: Double) -> Registration {
        guard Membership.isValidName(name) else {
            return .refused(.badName, "a worker name is 1-\(MembershipPolicy.maxNameBytes) printable ASCII characters without spaces")
        }
        if let credential, credential.role != .worker {
            return .refused(.wrongRole, "this key's role is \(credential.role.rawValue) in authorized_keys; only worker keys may register as workers")
        }
        if let i = members.firstIndex(where: { $0.name == name }) {
            guard members[i].key == credential?.key else {
                return .refused(.nameTaken, "the name \(name) is registered by another key")
            }
            let previous = members[i].peer
            if previous != peer, let other = index(of: peer) { members.remove(at: other) }
            let j = members.firstIndex { $0.name == name } ?? i
            members[j].peer = peer
            members[j].lastHeard = now
            members[j].parameterVersion = .max
            return .restarted(previous: previous)
        }
        if let other = index(of: peer) {
            // The same connection under another name: the old registration is void.
            guard members[other].key == credential?.key else { return .refused(.nameTaken, "this connection is registered by another key") }
            members.remove(at: other)
        }
        guard members.count < policy.maxWorkers else {
            return .refused(.full, "the coordinator admits at most \(policy.maxWorkers) workers (--max-workers)")
        }
        members.append(Member(name: name, peer: peer, key: credential?.key, lastHeard: now))
        return .joined
    }

    /// Whether a message on `peer`'s connection may speak for the member registered there: the same key, or nobody
    /// registered there at all.
    public func isAuthentic(_ peer: PeerID, credential: Credential?) -> Bool {
        guard let m = member(peer) else { return true }
        return m.key == credential?.key
    }

    public mutating func heard(_ peer: PeerID, now: Double) {
        if let i = index(of: peer) { members[i].lastHeard = max(members[i].lastHeard, now) }
    }

    @discardableResult
    public mutating func remove(_ peer: PeerID) -> Member? {
        guard let i = index(of: peer) else { return nil }
        return members.remove(at: i)
    }

    /// Members silent for the heartbeat timeout or longer.
    public func silent(now: Double) -> [Member] {
        members.filter { now - $0.lastHeard >= policy.heartbeatTimeout }
    }

    /// When the next member would become silent, if nothing is heard from it.
    public var nextSilence: Double? { members.map { $0.lastHeard + policy.heartbeatTimeout }.min() }

    /// The coordinator was away from its socket for `gap` seconds (validation, a checkpoint): nobody could be heard
    /// meanwhile, so that time does not count as anyone's silence.
    public mutating func excuse(gap: Double, now: Double) {
        for i in members.indices { members[i].lastHeard = min(now, members[i].lastHeard + gap) }
    }

    /// A member missed a step deadline or lied: it gets no columns for a while, twice as long as the last time.
    /// Returns the quarantine's length in seconds.
    @discardableResult
    public mutating func quarantine(_ peer: PeerID, now: Double) -> Double {
        guard let i = index(of: peer) else { return 0 }
        members[i].strikes += 1
        let seconds = min(policy.quarantineMax, policy.quarantineBase * pow(2, Double(members[i].strikes - 1)))
        members[i].quarantinedUntil = now + seconds
        members[i].columns = nil
        return seconds
    }

    /// Members that may take columns now, in order of joining.
    public func active(now: Double) -> [Member] { members.filter { !$0.isQuarantined(at: now) } }

    /// Members in quarantine now.
    public func quarantined(now: Double) -> [Member] { members.filter { $0.isQuarantined(at: now) } }

    /// When the next quarantine ends, if any is in force.
    public func nextRelease(now: Double) -> Double? {
        members.map(\.quarantinedUntil).filter { $0 > now }.min()
    }

    /// A step request went to `peer` with these columns, and the parameters of `version` with it or before.
    public mutating func assigned(_ peer: PeerID, columns: Range<Int>, parameterVersion: UInt64) {
        guard let i = index(of: peer) else { return }
        members[i].columns = columns
        members[i].parameterVersion = parameterVersion
    }

    /// Its parameters are gone (it restarted, or said it lacks them).
    public mutating func forgetParameters(_ peer: PeerID) {
        if let i = index(of: peer) { members[i].parameterVersion = .max }
    }

    public mutating func completedStep(_ peer: PeerID) {
        if let i = index(of: peer) { members[i].steps += 1 }
    }
}
