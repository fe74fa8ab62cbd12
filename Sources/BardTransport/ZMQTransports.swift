import BardCluster
import Foundation

/// Socket options every Bard socket gets: no linger (a vanished peer must not block shutdown), bounded queues,
/// a frame size cap (a hostile peer cannot make us allocate more), ZMTP heartbeats to notice dead links.
func configureCommon(_ s: ZMQSocket) throws {
    try s.setLinger(milliseconds: 0)
    try s.setSendHighWaterMark(64)
    try s.setReceiveHighWaterMark(256)
    try s.setMaxMessageSize(bytes: Int64(Wire.maxFrameBytes))
    try s.setHeartbeatInterval(milliseconds: 1000)
    try s.setHeartbeatTimeout(milliseconds: 3000)
}

/// The coordinator's ROUTER socket. Used from one thread only.
public final class ZMQServerTransport: ServerTransport {
    let context: ZMQContext
    let socket: ZMQSocket
    let authenticator: ZAPAuthenticator?
    public let endpoint: String

    /// With `security`, the socket is a CURVE server and a ZAP handler admits only the listed client keys:
    /// anyone else fails the handshake and never reaches the protocol.
    public init(context: ZMQContext, bind: String, security: ServerSecurity? = nil) throws {
        self.context = context
        // The ZAP handler must be bound before the socket accepts a connection (else libzmq admits everyone).
        authenticator = try security.map { try ZAPAuthenticator(context: context, allowedPublicKeys: $0.allowedClients) }
        socket = try ZMQSocket(context: context, kind: .router)
        try configureCommon(socket)
        if let security { try socket.configureCurveServer(keyPair: security.keyPair) }
        try socket.setRouterMandatory(true)
        try socket.setRouterHandover(true)  // a restarted worker with the same identity takes over its old connection
        try socket.bind(bind)
        endpoint = try socket.lastEndpoint
    }

    public func send(to peer: PeerID, _ frames: [[UInt8]]) -> Bool {
        (try? socket.send(frames: [peer] + frames)) == .sent
    }

    public var limits = ReceiveLimits.control
    public var droppedMessages = 0
    public var authenticationHealthy: Bool { true }
    public var deniedHandshakes: Int { deniedClients }

    public func receive(timeout: Double) throws -> Envelope? {
        do {
            guard let frames = try socket.receive(timeoutMilliseconds: Int(timeout * 1000)), frames.count >= 2 else { return nil }
            return Envelope(peer: frames[0], frames: Array(frames.dropFirst()))
        } catch let error as ZMQError {
            if case .interrupted = error { return nil }  // a signal: the caller checks its stop flag
            throw error
        }
    }

    /// Clients that failed CURVE authentication so far.
    public var deniedClients: Int { authenticator?.deniedCount ?? 0 }

    public func close() {
        socket.close()
        authenticator?.stop()
    }
}

/// A worker's or fetch client's DEALER socket, with an explicit routing identity.
public final class ZMQClientTransport: ClientTransport {
    let context: ZMQContext
    let socket: ZMQSocket

    public init(context: ZMQContext, connect: String, identity: String, security: ClientSecurity? = nil) throws {
        self.context = context
        socket = try ZMQSocket(context: context, kind: .dealer)
        try configureCommon(socket)
        if let security { try socket.configureCurveClient(keyPair: security.keyPair, serverPublicKey: security.serverPublicKey) }
        try socket.setRoutingID(identity)
        try socket.setReconnectInterval(milliseconds: 100)
        try socket.setReconnectIntervalMax(milliseconds: 2000)
        try socket.connect(connect)
    }

    public var limits = ReceiveLimits.control
    public func send(_ frames: [[UInt8]]) -> Bool { (try? socket.send(frames: frames)) == .sent }

    public func receive(timeout: Double) throws -> [[UInt8]]? {
        do { return try socket.receive(timeoutMilliseconds: Int(timeout * 1000)) } catch let error as ZMQError {
            if case .interrupted = error { return nil }
            throw error
        }
    }

    public func close() { socket.close() }
}
