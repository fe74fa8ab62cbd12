import BardCluster
import CZMQ
import Foundation

/// A libzmq socket.
///
/// **Not thread-safe, by design: one socket per thread.** libzmq sockets must not
/// be used from several threads at once; create the socket on the thread that
/// uses it (the type is deliberately not `Sendable`). The socket keeps its
/// ``ZMQContext`` alive and is closed by ``close()`` or on deinit.
///
/// Defaults chosen by this wrapper at creation (everything else is libzmq's default):
/// - `ZMQ_LINGER` = 0: closing a socket drops unsent messages instead of letting
///   `zmq_ctx_term` hang forever on a vanished peer.
/// - Router sockets: `ZMQ_ROUTER_MANDATORY` = 1, so sending to an unknown or
///   disconnected routing id reports ``SendResult/peerUnreachable`` (and a full
///   peer queue reports ``SendResult/wouldBlock``) instead of silently dropping the
///   message. Use ``setRouterMandatory(_:)`` to restore libzmq's drop behaviour.
///
/// Options apply to connections made *after* they are set: configure before
/// ``bind(_:)`` / ``connect(_:)``.
public final class ZMQSocket {
    /// The socket patterns this wrapper supports.
    public enum Kind: Sendable {
        case router, dealer, request, reply

        var zmqType: Int32 {
            switch self {
            case .router: return ZMQ_ROUTER
            case .dealer: return ZMQ_DEALER
            case .request: return ZMQ_REQ
            case .reply: return ZMQ_REP
            }
        }
    }

    /// Outcome of a non-blocking ``send(frames:)``.
    public enum SendResult: Sendable, Equatable {
        /// The whole message was queued.
        case sent
        /// `EAGAIN`: the high-water mark is reached or (dealer with `ZMQ_IMMEDIATE`)
        /// no peer is connected. Nothing was queued; retry later.
        case wouldBlock
        /// `EHOSTUNREACH`: router with `ZMQ_ROUTER_MANDATORY` and no connected peer
        /// has the routing id in frame 0. Nothing was queued. Note that a router only
        /// knows a peer once its handshake has completed, so right after a dealer
        /// connects this is expected; wait for the peer's first message before replying.
        case peerUnreachable
    }

    public let kind: Kind
    private let context: ZMQContext
    private var handle: UnsafeMutableRawPointer?

    /// Creates a socket of `kind` in `context` and applies the defaults listed above.
    public init(context: ZMQContext, kind: Kind) throws {
        self.context = context
        self.kind = kind
        self.handle = try context.makeRawSocket(type: kind.zmqType)
        try setLinger(milliseconds: 0)
        if kind == .router { try setRouterMandatory(true) }
    }

    deinit { close() }

    /// Closes the socket (`zmq_close`). Idempotent.
    public func close() {
        if let socket = handle { _ = zmq_close(socket) }
        handle = nil
    }

    private func live(_ operation: String) throws -> UnsafeMutableRawPointer {
        guard let socket = handle else { throw ZMQError.closed(operation: operation) }
        return socket
    }

    // MARK: - Endpoints

    /// Binds to an endpoint, e.g. `tcp://127.0.0.1:*` (ephemeral port; read it back with ``lastEndpoint``).
    public func bind(_ endpoint: String) throws {
        let socket = try live("zmq_bind(\(endpoint))")
        guard zmq_bind(socket, endpoint) == 0 else { throw ZMQError.last("zmq_bind(\(endpoint))") }
    }

    /// Connects to an endpoint. libzmq connects (and reconnects) asynchronously.
    public func connect(_ endpoint: String) throws {
        let socket = try live("zmq_connect(\(endpoint))")
        guard zmq_connect(socket, endpoint) == 0 else { throw ZMQError.last("zmq_connect(\(endpoint))") }
    }

    /// Stops listening on an endpoint previously bound (use the concrete ``lastEndpoint``, not `*`).
    public func unbind(_ endpoint: String) throws {
        let socket = try live("zmq_unbind(\(endpoint))")
        guard zmq_unbind(socket, endpoint) == 0 else { throw ZMQError.last("zmq_unbind(\(endpoint))") }
    }

    /// Drops a connection made with ``connect(_:)``.
    public func disconnect(_ endpoint: String) throws {
        let socket = try live("zmq_disconnect(\(endpoint))")
        guard zmq_disconnect(socket, endpoint) == 0 else { throw ZMQError.last("zmq_disconnect(\(endpoint))") }
    }

    /// `ZMQ_LAST_ENDPOINT`: the endpoint of the last bind/connect, with the real port
    /// after binding `tcp://host:*`.
    public var lastEndpoint: String {
        get throws {
            let socket = try live("zmq_getsockopt(ZMQ_LAST_ENDPOINT)")
            var buffer = [UInt8](repeating: 0, count: 1024)
            var length = buffer.count
            let rc = buffer.withUnsafeMutableBytes { zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, $0.baseAddress, &length) }
            guard rc == 0 else { throw ZMQError.last("zmq_getsockopt(ZMQ_LAST_ENDPOINT)") }
            return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    // MARK: - Options

    private func set(_ option: Int32, _ name: String, int value: Int32) throws {
        var value = value
        try set(option, name, pointer: &value, length: MemoryLayout<Int32>.size)
    }

    private func set(_ option: Int32, _ name: String, int64 value: Int64) throws {
        var value = value
        try set(option, name, pointer: &value, length: MemoryLayout<Int64>.size)
    }

    private func set(_ option: Int32, _ name: String, bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try set(option, name, pointer: $0.baseAddress, length: $0.count) }
    }

    private func set(_ option: Int32, _ name: String, pointer: UnsafeRawPointer?, length: Int) throws {
        let socket = try live("zmq_setsockopt(\(name))")
        guard zmq_setsockopt(socket, option, pointer, length) == 0 else {
            throw ZMQError.last("zmq_setsockopt(\(name))")
        }
    }

    /// `ZMQ_LINGER`: how long unsent messages are kept after close (-1 = forever, 0 = drop; wrapper default 0).
    public func setLinger(milliseconds: Int32) throws {
        try set(ZMQ_LINGER, "ZMQ_LINGER", int: milliseconds)
    }

    /// `ZMQ_SNDHWM`: max queued outgoing messages per peer (0 = unlimited; libzmq default 1000).
    public func setSendHighWaterMark(_ messages: Int32) throws {
        try set(ZMQ_SNDHWM, "ZMQ_SNDHWM", int: messages)
    }

    /// `ZMQ_RCVHWM`: max queued incoming messages per peer (0 = unlimited; libzmq default 1000).
    public func setReceiveHighWaterMark(_ messages: Int32) throws {
        try set(ZMQ_RCVHWM, "ZMQ_RCVHWM", int: messages)
    }

    /// `ZMQ_MAXMSGSIZE`: largest accepted inbound *frame* in bytes (-1 = unlimited).
    /// The limit is per frame, not per multipart message (libzmq 4.3.4). A peer that sends
    /// a larger frame is disconnected; the message is never delivered.
    public func setMaxMessageSize(bytes: Int64) throws {
        try set(ZMQ_MAXMSGSIZE, "ZMQ_MAXMSGSIZE", int64: bytes)
    }

    /// `ZMQ_ROUTING_ID`: the identity a router peer sees as frame 0 (1...255 bytes, first byte non-zero).
    public func setRoutingID(_ id: [UInt8]) throws {
        guard (1...255).contains(id.count), id[0] != 0 else {
            throw ZMQError.invalidArgument("routing id must be 1...255 bytes and must not start with a zero byte")
        }
        try set(ZMQ_ROUTING_ID, "ZMQ_ROUTING_ID", bytes: id)
    }

    /// `ZMQ_ROUTING_ID` from a UTF-8 string.
    public func setRoutingID(_ id: String) throws {
        try setRoutingID(Array(id.utf8))
    }

    /// `ZMQ_ROUTER_MANDATORY` (router only; wrapper default `true`, see the type documentation).
    public func setRouterMandatory(_ enabled: Bool) throws {
        try set(ZMQ_ROUTER_MANDATORY, "ZMQ_ROUTER_MANDATORY", int: enabled ? 1 : 0)
    }

    /// `ZMQ_ROUTER_HANDOVER` (router only): a new connection reusing a routing id takes it
    /// over from the old one (default: the newcomer is refused while the old connection lives).
    public func setRouterHandover(_ enabled: Bool) throws {
        try set(ZMQ_ROUTER_HANDOVER, "ZMQ_ROUTER_HANDOVER", int: enabled ? 1 : 0)
    }

    /// `ZMQ_HEARTBEAT_IVL`: send a ZMTP PING every interval (0 = off, the default).
    /// Heartbeats need ZMTP 3.1 on both ends and only affect connections made afterwards.
    public func setHeartbeatInterval(milliseconds: Int32) throws {
        try set(ZMQ_HEARTBEAT_IVL, "ZMQ_HEARTBEAT_IVL", int: milliseconds)
    }

    /// `ZMQ_HEARTBEAT_TIMEOUT`: drop the connection if nothing arrives this long after a PING
    /// (default: the heartbeat interval).
    public func setHeartbeatTimeout(milliseconds: Int32) throws {
        try set(ZMQ_HEARTBEAT_TIMEOUT, "ZMQ_HEARTBEAT_TIMEOUT", int: milliseconds)
    }

    /// `ZMQ_HEARTBEAT_TTL`: asks the *peer* to drop the connection if it hears nothing for this long.
    /// libzmq keeps it in deciseconds (truncating), so 1...99 ms would silently mean "no TTL"
    /// and is rejected here; valid values are 0 or 100...6_553_599.
    public func setHeartbeatTTL(milliseconds: Int32) throws {
        guard milliseconds == 0 || (100...6_553_599).contains(milliseconds) else {
            throw ZMQError.invalidArgument("ZMQ_HEARTBEAT_TTL must be 0 or 100...6553599 ms (libzmq stores deciseconds), got \(milliseconds)")
        }
        try set(ZMQ_HEARTBEAT_TTL, "ZMQ_HEARTBEAT_TTL", int: milliseconds)
    }

    /// `ZMQ_RECONNECT_IVL`: wait before reconnecting (-1 = never reconnect; libzmq default 100 ms).
    public func setReconnectInterval(milliseconds: Int32) throws {
        try set(ZMQ_RECONNECT_IVL, "ZMQ_RECONNECT_IVL", int: milliseconds)
    }

    /// `ZMQ_RECONNECT_IVL_MAX`: upper bound for exponential reconnect back-off (0 = no back-off).
    public func setReconnectIntervalMax(milliseconds: Int32) throws {
        try set(ZMQ_RECONNECT_IVL_MAX, "ZMQ_RECONNECT_IVL_MAX", int: milliseconds)
    }

    /// `ZMQ_IMMEDIATE`: queue outgoing messages only on completed connections
    /// (sends return ``SendResult/wouldBlock`` while no peer is connected).
    public func setImmediate(_ enabled: Bool) throws {
        try set(ZMQ_IMMEDIATE, "ZMQ_IMMEDIATE", int: enabled ? 1 : 0)
    }

    /// `ZMQ_CURVE_SERVER`: act as the CURVE server side of the handshake (needs ``setCurveSecretKey(_:)``).
    public func setCurveServer(_ enabled: Bool) throws {
        try set(ZMQ_CURVE_SERVER, "ZMQ_CURVE_SERVER", int: enabled ? 1 : 0)
    }

    /// `ZMQ_CURVE_PUBLICKEY` from a 40-character Z85 string.
    public func setCurvePublicKey(_ z85: String) throws {
        try set(ZMQ_CURVE_PUBLICKEY, "ZMQ_CURVE_PUBLICKEY", bytes: Z85.decodeKey(z85, label: "CURVE public key"))
    }

    /// `ZMQ_CURVE_SECRETKEY` from a 40-character Z85 string.
    public func setCurveSecretKey(_ z85: String) throws {
        try set(ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", bytes: Z85.decodeKey(z85, label: "CURVE secret key"))
    }

    /// `ZMQ_CURVE_SERVERKEY` (client side): the server's 40-character Z85 public key.
    public func setCurveServerKey(_ z85: String) throws {
        try set(ZMQ_CURVE_SERVERKEY, "ZMQ_CURVE_SERVERKEY", bytes: Z85.decodeKey(z85, label: "CURVE server key"))
    }

    /// Makes this socket a CURVE server using `keyPair`'s secret key.
    public func configureCurveServer(keyPair: CurveKeyPair) throws {
        try setCurveServer(true)
        try setCurveSecretKey(keyPair.secretKey)
    }

    /// Makes this socket a CURVE client with `keyPair`, trusting the server with `serverPublicKey` (Z85).
    public func configureCurveClient(keyPair: CurveKeyPair, serverPublicKey: String) throws {
        try setCurveServerKey(serverPublicKey)
        try setCurvePublicKey(keyPair.publicKey)
        try setCurveSecretKey(keyPair.secretKey)
    }

    /// `ZMQ_ZAP_ENFORCE_DOMAIN` (option 93; a draft option, but built into Debian's libzmq 4.3 and most others):
    /// with a ZAP domain set, a server denies every handshake while no ZAP handler is bound, where libzmq otherwise
    /// admits any client that knows the server key. Throws (EINVAL) on a libzmq built without draft options.
    public func setZAPEnforceDomain(_ enabled: Bool) throws {
        // The header declares the constant only under ZMQ_BUILD_DRAFT_API; the library may still honour it.
        try set(93, "ZMQ_ZAP_ENFORCE_DOMAIN", int: enabled ? 1 : 0)
    }

    /// `ZMQ_ZAP_DOMAIN`: domain sent in ZAP requests. CURVE servers consult ZAP whether or not
    /// this is set; for the NULL mechanism ZAP is only consulted when it is non-empty.
    public func setZAPDomain(_ domain: String) throws {
        try set(ZMQ_ZAP_DOMAIN, "ZMQ_ZAP_DOMAIN", bytes: Array(domain.utf8))
    }

    // MARK: - Messaging

    /// Sends `frames` as one multipart message without blocking (`ZMQ_DONTWAIT`).
    ///
    /// For a router, frame 0 is the destination routing id. A multipart message is
    /// atomic: either all frames are queued or (when the first frame is refused)
    /// none, reported as ``SendResult/wouldBlock`` / ``SendResult/peerUnreachable``.
    /// Other failures throw; a failure after the first frame leaves the socket in an
    /// undefined state and it should be closed.
    @discardableResult
    public func send(frames: [[UInt8]]) throws -> SendResult {
        guard !frames.isEmpty else { throw ZMQError.invalidArgument("a message needs at least one frame") }
        let socket = try live("zmq_send")
        for (index, frame) in frames.enumerated() {
            let flags = ZMQ_DONTWAIT | (index == frames.count - 1 ? 0 : ZMQ_SNDMORE)
            while true {
                let rc = frame.withUnsafeBytes { zmq_send(socket, $0.baseAddress, $0.count, flags) }
                if rc >= 0 { break }
                let code = zmq_errno()
                // A non-blocking send that failed queued nothing, so EINTR is safe to retry.
                if code == EINTR { continue }
                if index == 0 && code == EAGAIN { return .wouldBlock }
                if index == 0 && code == EHOSTUNREACH { return .peerUnreachable }
                throw ZMQError.last("zmq_send(frame \(index) of \(frames.count))", code: code)
            }
        }
        return .sent
    }

    /// Waits up to `timeoutMilliseconds` (negative = forever, 0 = just check) for a message
    /// and returns all of its frames, or nil on timeout.
    ///
    /// Keeps the whole message however large: for trusted peers only (the ZAP handler's inproc socket, tests).
    /// Anything a remote peer sends goes through ``receive(timeoutMilliseconds:limits:)``.
    ///
    /// The wait is a `zmq_poll`; a signal arriving during it throws
    /// ``ZMQError/interrupted(operation:)`` so the caller can react (e.g. check a stop flag).
    public func receive(timeoutMilliseconds: Int) throws -> [[UInt8]]? {
        try wait(timeoutMilliseconds: timeoutMilliseconds, then: readMessage)
    }

    /// The outcome of ``receive(timeoutMilliseconds:limits:)``.
    public enum BoundedMessage: Equatable, Sendable {
        /// A message within the limits, every frame kept; on a router `frames[0]` is the sender's routing id.
        /// `userID` is the connection's ZAP `User-Id` (a CURVE client's Z85 public key), nil without ZAP.
        case message(frames: [[UInt8]], userID: String?)
        /// A message over the limits, read to its end and not kept. `frames` and `bytes` count the whole message
        /// (saturating), the routing id excluded; `routingID` is the sender's on a router, else nil.
        case dropped(routingID: [UInt8]?, userID: String?, frames: Int, bytes: Int)
    }

    /// Like ``receive(timeoutMilliseconds:)``, but reads the message frame by frame and keeps at most `limits`:
    /// once the frame count or the total size would pass them, the frames kept so far are released, the rest are
    /// read and closed without being copied, and the message is reported as ``BoundedMessage/dropped``.
    ///
    /// On a router the first frame is the routing id libzmq adds; it is kept and not counted.
    ///
    /// This bounds what *this process copies*. libzmq itself makes a multipart message readable only once all of
    /// its frames have arrived, so it may hold a whole message (each frame bounded by ``setMaxMessageSize(bytes:)``,
    /// the number of frames by nothing) before this sees the first frame; only authentication (CURVE with ZAP)
    /// keeps strangers from sending one.
    public func receive(timeoutMilliseconds: Int, limits: ReceiveLimits) throws -> BoundedMessage? {
        try wait(timeoutMilliseconds: timeoutMilliseconds) { try readBoundedMessage($0, limits: limits) }
    }

    /// Waits up to `timeoutMilliseconds` (negative = forever) until any of `sockets` has a message, without reading
    /// it: one `zmq_poll` over all of them. Returns whether one has; a signal ends the wait early with false.
    public static func waitForInput(_ sockets: [ZMQSocket], timeoutMilliseconds: Int) throws -> Bool {
        var items = try sockets.map { zmq_pollitem_t(socket: try $0.live("zmq_poll"), fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
        let rc = zmq_poll(&items, Int32(items.count), timeoutMilliseconds)
        if rc < 0 {
            let error = ZMQError.last("zmq_poll")
            if case .interrupted = error { return false }
            throw error
        }
        return rc > 0
    }

    /// Polls for input up to `timeoutMilliseconds`, then lets `read` take one message without blocking.
    private func wait<T>(timeoutMilliseconds: Int, then read: (UnsafeMutableRawPointer) throws -> T?) throws -> T? {
        let socket = try live("zmq_poll")
        let start = DispatchTime.now().uptimeNanoseconds
        var budget: UInt64?
        if timeoutMilliseconds >= 0 {
            let (nanoseconds, overflow) = UInt64(timeoutMilliseconds).multipliedReportingOverflow(by: 1_000_000)
            budget = overflow ? nil : nanoseconds
        }
        while true {
            var remaining = -1
            if let budget {
                let elapsed = DispatchTime.now().uptimeNanoseconds &- start
                remaining = elapsed >= budget ? 0 : Int((budget - elapsed + 999_999) / 1_000_000)
            }
            var item = zmq_pollitem_t(socket: socket, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
            let rc = zmq_poll(&item, 1, remaining)
            if rc < 0 { throw ZMQError.last("zmq_poll") }
            if rc > 0, item.revents & Int16(ZMQ_POLLIN) != 0, let message = try read(socket) {
                return message
            }
            // Timed out, or a spurious wake-up (readiness without a message).
            if remaining == 0 { return nil }
        }
    }

    /// Reads every frame of one message without blocking; nil if none is pending.
    private func readMessage(_ socket: UnsafeMutableRawPointer) throws -> [[UInt8]]? {
        let unlimited = ReceiveLimits(maxFrames: .max, maxBytes: .max)
        guard case .message(let frames, _) = try readBoundedMessage(socket, limits: unlimited) else { return nil }
        return frames
    }

    /// Reads one message frame by frame without blocking, keeping at most `limits`; nil if none is pending.
    private func readBoundedMessage(_ socket: UnsafeMutableRawPointer, limits: ReceiveLimits) throws -> BoundedMessage? {
        let routed = kind == .router
        var routingID: [UInt8]?
        var kept: [[UInt8]] = []
        var userID: String?
        var index = 0
        // The whole message, routing id excluded; `bytes` saturates (a drained message is never copied, so its
        // announced size is only reported).
        var frames = 0, bytes = 0
        var over = false
        while true {
            var message = zmq_msg_t()
            guard zmq_msg_init(&message) == 0 else { throw ZMQError.last("zmq_msg_init") }
            defer { zmq_msg_close(&message) }
            if zmq_msg_recv(&message, socket, ZMQ_DONTWAIT) < 0 {
                let code = zmq_errno()
                if code == EINTR { continue }
                // Parts of a multipart message arrive together, so EAGAIN only happens before the first.
                if code == EAGAIN && index == 0 { return nil }
                throw ZMQError.last("zmq_msg_recv", code: code)
            }
            // libzmq attaches the connection's metadata to every frame (the routing id frame included); the first
            // frame that has a User-Id names the sender.
            if userID == nil { userID = ZMQSocket.userID(of: &message) }
            let size = zmq_msg_size(&message)
            let more = zmq_msg_more(&message) != 0
            if routed && index == 0 {
                routingID = ZMQSocket.bytes(of: &message)
            } else {
                frames += 1
                let (sum, overflow) = bytes.addingReportingOverflow(size)
                bytes = overflow ? .max : sum
                // Checked before copying: what is kept never passes the limits.
                if !over && (frames > limits.maxFrames || bytes > limits.maxBytes) {
                    over = true
                    kept = []
                }
                if !over { kept.append(ZMQSocket.bytes(of: &message)) }
            }
            index += 1
            if !more { break }
        }
        if over { return .dropped(routingID: routingID, userID: userID, frames: frames, bytes: bytes) }
        return .message(frames: (routingID.map { [$0] } ?? []) + kept, userID: userID)
    }

    /// A copy of a frame's bytes.
    private static func bytes(of message: inout zmq_msg_t) -> [UInt8] {
        let size = zmq_msg_size(&message)
        guard size > 0, let data = zmq_msg_data(&message) else { return [] }
        return Array(UnsafeRawBufferPointer(start: data, count: size))
    }

    /// The frame's `User-Id` property (set from the ZAP handler's reply), nil if there is none.
    private static func userID(of message: inout zmq_msg_t) -> String? {
        guard let value = zmq_msg_gets(&message, "User-Id") else { return nil }
        let text = String(cString: value)
        return text.isEmpty ? nil : text
    }
}

/// Sockets must stay on one thread at a time; see ``ZMQSocket``.
@available(*, unavailable)
extension ZMQSocket: Sendable {}
