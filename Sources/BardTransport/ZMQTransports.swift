import BardCluster
import Foundation

/// Socket options every Bard socket gets: no linger (a vanished peer must not block shutdown), bounded queues,
/// a frame size cap (a hostile peer cannot make libzmq allocate a larger frame), ZMTP heartbeats to notice dead links.
///
/// The ZMTP timeout ends connections that are gone (a cut link): the worker's socket then reconnects as soon as
/// the link is back. libzmq hears nothing on a connection until a whole frame is in, so a link too slow to carry the
/// largest message (a worker's parameters, 17 MB for the default model, to one of several workers behind one
/// 100 Mbit/s link) within it would be cut mid-frame and lose the step: set `BARD_ZMTP_TIMEOUT_MS` above that
/// transfer time there (scripts/bench-hosts.sh does; issue 11). Dead peers are the application's heartbeats' business
/// (`--heartbeat-timeout`).
func configureCommon(_ s: ZMQSocket, maxFrameBytes: Int, receiveHighWaterMark: Int32) throws {
    guard maxFrameBytes >= 1 else { throw ZMQError.invalidArgument("maxFrameBytes must be >= 1, got \(maxFrameBytes)") }
    try s.setLinger(milliseconds: 0)
    try s.setSendHighWaterMark(64)
    try s.setReceiveHighWaterMark(receiveHighWaterMark)
    try s.setMaxMessageSize(bytes: Int64(maxFrameBytes))
    try s.setHeartbeatInterval(milliseconds: 1000)
    try s.setHeartbeatTimeout(milliseconds: zmtpHeartbeatTimeoutMilliseconds)
}

/// How long a connection may carry no complete frame after a ZMTP PING before libzmq drops it: 3 s, or
/// `BARD_ZMTP_TIMEOUT_MS` (1,000 to 600,000).
let zmtpHeartbeatTimeoutMilliseconds: Int32 = {
    guard let text = ProcessInfo.processInfo.environment["BARD_ZMTP_TIMEOUT_MS"], let ms = Int32(text),
          (1_000...600_000).contains(ms) else { return 3_000 }
    return ms
}()

/// Receives one message within `limits`, waiting up to `timeout` seconds in all: a dropped message is counted and
/// the wait goes on for the next one, so a flood of oversized messages cannot pass for silence or for traffic.
/// A signal ends the wait with nil (the caller checks its stop flag).
func receiveBounded(_ socket: ZMQSocket, timeout: Double, limits: ReceiveLimits,
                    dropped: (_ routingID: [UInt8]?) -> Void) throws -> (frames: [[UInt8]], userID: String?)? {
    let deadline = DispatchTime.now().uptimeNanoseconds &+ UInt64(max(0, min(timeout, 1e6)) * 1e9)
    while true {
        let now = DispatchTime.now().uptimeNanoseconds
        let milliseconds = now >= deadline ? 0 : Int((deadline - now + 999_999) / 1_000_000)
        let outcome: ZMQSocket.BoundedMessage?
        do { outcome = try socket.receive(timeoutMilliseconds: milliseconds, limits: limits) } catch let error as ZMQError {
            if case .interrupted = error { return nil }
            throw error
        }
        switch outcome {
        case nil:
            return nil
        case let .message(frames, userID)?:
            return (frames, userID)
        case let .dropped(routingID, _, _, _)?:
            dropped(routingID)
            if milliseconds == 0 { return nil }
        }
    }
}

/// The coordinator's ROUTER socket. Used from one thread only (the counters of authentication may be read from any).
///
/// With `security`, the socket is a CURVE server and a ZAP handler admits only the keys of `authorized_keys`:
/// anyone else fails the handshake and never reaches the protocol, and every message carries the sender's key and
/// role as its `Envelope.credential`. The server also sets a ZAP domain and asks libzmq to enforce it, so that if
/// the handler is gone, handshakes are denied rather than admitted (where libzmq supports it; either way
/// `authenticationHealthy` turns false).
public final class ZMQServerTransport: ServerTransport {
    let context: ZMQContext
    let socket: ZMQSocket
    /// The ZAP handler (nil on a plaintext socket); exposed for diagnostics. Stopping it while the server lives
    /// makes ``authenticationHealthy`` false.
    public let authenticator: ZAPAuthenticator?
    /// The bound endpoint, with the real port when binding port 0 or `*`.
    public let endpoint: String
    /// Client key (Z85) to role, from `authorized_keys`; empty on a plaintext socket.
    let roles: [String: PeerRole]
    /// Whether libzmq denies handshakes when no ZAP handler is bound (ZMQ_ZAP_ENFORCE_DOMAIN took); false on a
    /// plaintext socket or a libzmq without draft options.
    public let failsClosedWithoutAuthenticator: Bool

    /// What `receive` keeps of one message; set it from the run's shapes.
    public var limits: ReceiveLimits
    /// Messages dropped: over `limits`, or (with CURVE) without a known sender key.
    public private(set) var droppedMessages = 0
    /// Handshakes the ZAP handler denied (0 on a plaintext socket). CURVE clients with a wrong server key and
    /// plaintext clients fail before ZAP and are not counted.
    public var deniedHandshakes: Int { authenticator?.deniedCount ?? 0 }
    /// False once the ZAP handler has stopped (it failed, or was stopped under a live server): the coordinator
    /// must stop. Always true on a plaintext socket.
    public var authenticationHealthy: Bool { authenticator?.isServing ?? true }

    /// The ZAP domain the server asks for, so that a missing handler means denial.
    static let zapDomain = "bard"
    /// Messages queued per peer before libzmq stops reading from it: the protocol has a few in flight per worker
    /// (a result, heartbeats), and each may be as large as `limits` allows.
    static let receiveHighWaterMark: Int32 = 32

    /// Binds `bind`.
    /// - Parameters:
    ///   - security: CURVE keys and the admitted clients with their roles; nil for plaintext.
    ///   - maxFrameBytes: the largest legitimate frame (`ZMQ_MAXMSGSIZE`, set before binding): a peer sending a
    ///     larger one is disconnected by libzmq before it is buffered.
    ///   - limits: what `receive` keeps of one message until changed.
    ///   - onDenial: called on the ZAP handler's thread for every denied handshake; must return quickly.
    /// `handover`: a new connection with a routing id in use takes it over (a coordinator shard's socket: a worker's
    /// new link to it, after a re-planned run, has its old link's id, and libzmq would otherwise ignore it for good).
    public init(context: ZMQContext, bind: String, security: ServerSecurity? = nil, maxFrameBytes: Int = Wire.maxFrameBytes,
                limits: ReceiveLimits = .control, handover: Bool = false,
                onDenial: (@Sendable (HandshakeDenial) -> Void)? = nil) throws {
        self.context = context
        self.limits = limits
        roles = security?.clients ?? [:]
        // The ZAP handler must be bound before the socket accepts a connection (else libzmq admits everyone).
        authenticator = try security.map {
            try ZAPAuthenticator(context: context, allowedPublicKeys: $0.allowedClients, domain: ZMQServerTransport.zapDomain,
                                 onDenial: onDenial)
        }
        socket = try ZMQSocket(context: context, kind: .router)
        try configureCommon(socket, maxFrameBytes: maxFrameBytes, receiveHighWaterMark: ZMQServerTransport.receiveHighWaterMark)
        var enforced = false
        if let security {
            try socket.configureCurveServer(keyPair: security.keyPair)
            try socket.setZAPDomain(ZMQServerTransport.zapDomain)
            // A draft option: without it a dead handler admits everyone, which `authenticationHealthy` reports.
            enforced = (try? socket.setZAPEnforceDomain(true)) != nil
        }
        failsClosedWithoutAuthenticator = enforced
        try socket.setRouterMandatory(true)
        // Off for the coordinator: no connection may take over another's identity. Workers use a fresh routing id
        // per process, and the coordinator decides by name and key who is who (Membership).
        try socket.setRouterHandover(handover)
        try socket.bind(bind)
        endpoint = try socket.lastEndpoint
    }

    /// Sends `frames` to `peer`; false if it could not be queued (unknown peer, full queue).
    public func send(to peer: PeerID, _ frames: [[UInt8]]) -> Bool {
        (try? socket.send(frames: [peer] + frames)) == .sent
    }

    /// The next message within `limits`, waiting up to `timeout` seconds; nil on timeout or a signal.
    public func receive(timeout: Double) throws -> Envelope? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            guard let (frames, userID) = try receiveBounded(socket, timeout: deadline.timeIntervalSinceNow, limits: limits,
                                                            dropped: { _ in droppedMessages += 1 }) else { return nil }
            // A router message is the routing id and at least one frame.
            if frames.count >= 2 {
                guard authenticator != nil else { return Envelope(peer: frames[0], frames: Array(frames.dropFirst())) }
                // With CURVE every connection passed ZAP, which names the key; a message without a known key
                // cannot be attributed, so it is not delivered.
                if let userID, let role = roles[userID] {
                    return Envelope(peer: frames[0], frames: Array(frames.dropFirst()), credential: Credential(key: userID, role: role))
                }
                droppedMessages += 1
            }
            if deadline.timeIntervalSinceNow <= 0 { return nil }
        }
    }

    /// Closes the socket, then stops the ZAP handler.
    public func close() {
        socket.close()
        authenticator?.stop()
    }
}

/// A worker's or fetch client's DEALER socket, with an explicit routing identity. Used from one thread only.
public final class ZMQClientTransport: ClientTransport {
    let context: ZMQContext
    let socket: ZMQSocket

    /// What `receive` keeps of one message; a worker widens it once it knows the model's size.
    public var limits: ReceiveLimits
    /// Messages dropped for exceeding `limits`.
    public private(set) var droppedMessages = 0

    /// Messages queued from the coordinator before libzmq stops reading: it sends one step or chunk at a time,
    /// and heartbeats.
    static let receiveHighWaterMark: Int32 = 64

    /// Connects to `connect` as `identity`.
    /// - Parameters:
    ///   - security: CURVE keys (this client's pair and the coordinator's public key); nil for plaintext.
    ///   - maxFrameBytes: the largest legitimate frame (`ZMQ_MAXMSGSIZE`, set before connecting).
    ///   - limits: what `receive` keeps of one message until changed.
    public init(context: ZMQContext, connect: String, identity: String, security: ClientSecurity? = nil,
                maxFrameBytes: Int = Wire.maxFrameBytes, limits: ReceiveLimits = .control) throws {
        self.context = context
        self.limits = limits
        socket = try ZMQSocket(context: context, kind: .dealer)
        try configureCommon(socket, maxFrameBytes: maxFrameBytes, receiveHighWaterMark: ZMQClientTransport.receiveHighWaterMark)
        if let security { try socket.configureCurveClient(keyPair: security.keyPair, serverPublicKey: security.serverPublicKey) }
        try socket.setRoutingID(identity)
        try socket.setReconnectInterval(milliseconds: 100)
        try socket.setReconnectIntervalMax(milliseconds: 2000)
        try socket.connect(connect)
    }

    /// Sends `frames` to the coordinator; false if it could not be queued.
    public func send(_ frames: [[UInt8]]) -> Bool { (try? socket.send(frames: frames)) == .sent }

    /// The next message within `limits`, waiting up to `timeout` seconds; nil on timeout or a signal.
    public func receive(timeout: Double) throws -> [[UInt8]]? {
        try receiveBounded(socket, timeout: timeout, limits: limits, dropped: { _ in droppedMessages += 1 })?.frames
    }

    /// Closes the socket.
    public func close() { socket.close() }
}

/// A transport whose socket can be waited on together with others' (`waitForInput`).
public protocol ZMQPollable: AnyObject {
    var pollSocket: ZMQSocket { get }
}

extension ZMQServerTransport: ZMQPollable { public var pollSocket: ZMQSocket { socket } }
extension ZMQClientTransport: ZMQPollable { public var pollSocket: ZMQSocket { socket } }

/// Waits up to `timeout` seconds until any of `transports` has a message, without reading it; whether one has (false
/// after a signal too). For a thread that serves several sockets and has nothing else to do meanwhile.
public func waitForInput(_ transports: [ZMQPollable], timeout: Double) throws -> Bool {
    try ZMQSocket.waitForInput(transports.map(\.pollSocket), timeoutMilliseconds: Int((max(0, min(timeout, 1e6)) * 1000).rounded(.up)))
}
