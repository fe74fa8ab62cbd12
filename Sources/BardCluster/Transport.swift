import Foundation

/// A peer's routing identity, as the coordinator's socket sees it.
public typealias PeerID = [UInt8]

/// The coordinator's side: one socket (ROUTER), messages tagged with the sending peer.
/// `send` returning true does not mean the peer got it: a ROUTER drops messages to a peer that just vanished,
/// so progress rests on step ids and replies.
public protocol ServerTransport: AnyObject {
    func send(to peer: PeerID, _ frames: [[UInt8]]) -> Bool
    func receive(timeout: Double) throws -> (peer: PeerID, frames: [[UInt8]])?
}

/// A worker's or fetch client's side: one socket (DEALER) to the coordinator.
public protocol ClientTransport: AnyObject {
    func send(_ frames: [[UInt8]]) -> Bool
    func receive(timeout: Double) throws -> [[UInt8]]?
}

/// An in-memory hub for tests of the state machines: one server, any number of clients, FIFO queues.
public final class InMemoryHub: @unchecked Sendable {
    let lock = NSCondition()
    var serverQueue: [(PeerID, [[UInt8]])] = []
    var clientQueues: [PeerID: [[[UInt8]]]] = [:]
    /// Peers whose messages are dropped (a vanished worker).
    public var severed: Set<PeerID> = []

    public init() {}

    public func server() -> ServerTransport { InMemoryServer(hub: self) }
    public func client(id: String) -> ClientTransport {
        let peer = Array(id.utf8)
        lock.lock(); clientQueues[peer] = []; lock.unlock()
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

final class InMemoryServer: ServerTransport {
    let hub: InMemoryHub
    init(hub: InMemoryHub) { self.hub = hub }
    func send(to peer: PeerID, _ frames: [[UInt8]]) -> Bool {
        hub.lock.lock(); defer { hub.lock.unlock(); hub.lock.broadcast() }
        guard !hub.severed.contains(peer), hub.clientQueues[peer] != nil else { return false }
        hub.clientQueues[peer]?.append(frames)
        return true
    }
    func receive(timeout: Double) throws -> (peer: PeerID, frames: [[UInt8]])? {
        hub.pop({ hub.serverQueue.isEmpty ? nil : hub.serverQueue.removeFirst() }, timeout: timeout).map { (peer: $0.0, frames: $0.1) }
    }
}

final class InMemoryClient: ClientTransport {
    let hub: InMemoryHub, id: PeerID
    init(hub: InMemoryHub, id: PeerID) { self.hub = hub; self.id = id }
    func send(_ frames: [[UInt8]]) -> Bool {
        hub.lock.lock(); defer { hub.lock.unlock(); hub.lock.broadcast() }
        guard !hub.severed.contains(id) else { return true }  // silently lost, as on a dead link
        hub.serverQueue.append((id, frames))
        return true
    }
    func receive(timeout: Double) throws -> [[UInt8]]? {
        hub.pop({ () -> [[UInt8]]? in
            guard var q = hub.clientQueues[id], !q.isEmpty else { return nil }
            let m = q.removeFirst(); hub.clientQueues[id] = q; return m
        }, timeout: timeout)
    }
}
