@_exported import BardWire
import Foundation

/// A peer's routing identity, as the coordinator's socket sees it.
public typealias PeerID = [UInt8]

/// Who sent a message, as the transport authenticated it: the sender's CURVE public key (Z85, ZeroMQ's `User-Id`)
/// and the role `authorized_keys` grants that key. Nil on a plaintext socket, where anyone may be anyone.
public struct Credential: Equatable, Hashable, Sendable {
    public let key: String
    public let role: PeerRole
    public init(key: String, role: PeerRole) { self.key = key; self.role = role }
}

/// One received message.
public struct Envelope: Sendable {
    public let peer: PeerID
    public let frames: [[UInt8]]
    public let credential: Credential?
    public init(peer: PeerID, frames: [[UInt8]], credential: Credential? = nil) {
        self.peer = peer; self.frames = frames; self.credential = credential
    }
}

/// How much of one incoming message a receiver keeps. A message with more frames or more bytes is read to its end
/// frame by frame, never held whole, and dropped (counted in `droppedMessages`).
public struct ReceiveLimits: Equatable, Sendable {
    public var maxFrames: Int
    public var maxBytes: Int
    public init(maxFrames: Int, maxBytes: Int) { self.maxFrames = maxFrames; self.maxBytes = maxBytes }
    /// Before the run's shapes are known: control messages only.
    public static let control = ReceiveLimits(maxFrames: 8, maxBytes: 1 << 20)
}

/// The coordinator's side: one socket (ROUTER), messages tagged with the sending peer.
/// `send` returning true does not mean the peer got it: a ROUTER drops messages to a peer that just vanished,
/// so progress rests on step ids and replies.
public protocol ServerTransport: AnyObject {
    func send(to peer: PeerID, _ frames: [[UInt8]]) -> Bool
    func receive(timeout: Double) throws -> Envelope?
    /// What `receive` keeps of one message; set from the run's shapes.
    var limits: ReceiveLimits { get set }
    /// Messages dropped for exceeding `limits`.
    var droppedMessages: Int { get }
    /// Handshakes denied by authentication (0 on a plaintext socket).
    var deniedHandshakes: Int { get }
    /// False once authentication can no longer be enforced (the ZAP handler died): the coordinator must stop.
    var authenticationHealthy: Bool { get }
}

/// A worker's or fetch client's side: one socket (DEALER) to the coordinator.
public protocol ClientTransport: AnyObject {
    func send(_ frames: [[UInt8]]) -> Bool
    func receive(timeout: Double) throws -> [[UInt8]]?
    /// What `receive` keeps of one message (a worker widens it once it knows the model's size).
    var limits: ReceiveLimits { get set }
}

/// An in-memory hub for tests of the state machines: one server, any number of clients, FIFO queues. A client may
/// carry a credential, as a CURVE key would give it.
public final class InMemoryHub: @unchecked Sendable {
    let lock = NSCondition()
    var serverQueue: [(PeerID, [[UInt8]])] = []
    var clientQueues: [PeerID: [[[UInt8]]]] = [:]
    var credentials: [PeerID: Credential] = [:]
    /// Peers whose messages are dropped (a vanished worker). Set before the clients run, or through `sever`.
    public var severed: Set<PeerID> = []

    /// Cuts a client off from now on (any thread).
    public func sever(_ peer: PeerID) {
        lock.lock(); severed.insert(peer); lock.unlock()
    }
    /// What the server reports as its authentication's health (false: as if the ZAP handler had died).
    public var authenticationHealthy: Bool {
        get { lock.lock(); defer { lock.unlock() }; return healthy }
        set { lock.lock(); healthy = newValue; lock.unlock() }
    }
    var healthy = true

    public init() {}

    public func server() -> ServerTransport { InMemoryServer(hub: self) }
    public func client(id: String, credential: Credential? = nil) -> ClientTransport {
        let peer = Array(id.utf8)
        lock.lock(); clientQueues[peer] = []; credentials[peer] = credential; lock.unlock()
        return InMemoryClient(hub: self, id: peer)
    }

    func pop<T>(_ take: () -> T?, timeout: Double) -> T? {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock(); defer { lock.unlock() }
        while true {
            if let v = take() { return v }
            if !lock.wait(until: deadline) { return take() }
        }
    }
}

/// Drops what exceeds the limits, as the ZeroMQ transport does.
func fits(_ frames: [[UInt8]], _ limits: ReceiveLimits) -> Bool {
    frames.count <= limits.maxFrames && frames.reduce(0, { $0 + $1.count }) <= limits.maxBytes
}

final class InMemoryServer: ServerTransport {
    let hub: InMemoryHub
    var limits = ReceiveLimits.control
    var droppedMessages = 0
    var deniedHandshakes: Int { 0 }
    var authenticationHealthy: Bool { hub.authenticationHealthy }
    init(hub: InMemoryHub) { self.hub = hub }
    func send(to peer: PeerID, _ frames: [[UInt8]]) -> Bool {
        hub.lock.lock(); defer { hub.lock.unlock(); hub.lock.broadcast() }
        guard !hub.severed.contains(peer), hub.clientQueues[peer] != nil else { return false }
        hub.clientQueues[peer]?.append(frames)
        return true
    }
    func receive(timeout: Double) throws -> Envelope? {
        guard let (peer, frames) = hub.pop({ hub.serverQueue.isEmpty ? nil : hub.serverQueue.removeFirst() }, timeout: timeout) else {
            return nil
        }
        guard fits(frames, limits) else { droppedMessages += 1; return nil }
        hub.lock.lock(); let credential = hub.credentials[peer]; hub.lock.unlock()
        return Envelope(peer: peer, frames: frames, credential: credential)
    }
}

final class InMemoryClient: ClientTransport {
    let hub: InMemoryHub, id: PeerID
    var limits = ReceiveLimits.control
    init(hub: InMemoryHub, id: PeerID) { self.hub = hub; self.id = id }
    func send(_ frames: [[UInt8]]) -> Bool {
        hub.lock.lock(); defer { hub.lock.unlock(); hub.lock.broadcast() }
        guard !hub.severed.contains(id) else { return true }  // silently lost, as on a dead link
        hub.serverQueue.append((id, frames))
        return true
    }
    func receive(timeout: Double) throws -> [[UInt8]]? {
        let frames = hub.pop({ () -> [[UInt8]]? in
            guard var q = hub.clientQueues[id], !q.isEmpty else { return nil }
            let m = q.removeFirst(); hub.clientQueues[id] = q; return m
        }, timeout: timeout)
        guard let frames, fits(frames, limits) else { return nil }
        return frames
    }
}
