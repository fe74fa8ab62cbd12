import CZMQ
import Foundation

/// One handshake the ZAP handler refused, as ZAP describes it.
public struct HandshakeDenial: Sendable, Equatable, CustomStringConvertible {
    /// `400` (not allowed) or `500` (malformed request or an internal error).
    public let status: Int
    /// Why, in a few words ("public key not allowed").
    public let reason: String
    /// The security mechanism the client used (`CURVE`, `NULL`, `PLAIN`), as ZAP names it.
    public let mechanism: String
    /// The client's CURVE public key (Z85), nil for other mechanisms or a malformed request.
    public let key: String?
    /// The client's IP address as libzmq gives it to ZAP (empty if it gave none).
    public let address: String

    /// Creates a denial record.
    public init(status: Int, reason: String, mechanism: String, key: String?, address: String) {
        self.status = status; self.reason = reason; self.mechanism = mechanism; self.key = key; self.address = address
    }

    /// One line for a log: `denied CURVE handshake from 10.0.0.7 (key abc...): public key not allowed`.
    public var description: String {
        let from = address.isEmpty ? "" : " from \(address)"
        let who = key.map { " (key \($0))" } ?? ""
        return "denied \(mechanism.isEmpty ? "a" : mechanism) handshake\(from)\(who): \(reason)"
    }
}

/// A ZAP (RFC 27) handler that admits CURVE clients whose public key is allowed.
///
/// It binds a reply socket to ``endpoint`` (`inproc://zeromq.zap.01`) in the given
/// context during `init` and answers requests on its own thread: status `200` for a
/// CURVE client with an allowed key (user id = its Z85 key), `400` for everything else
/// (unknown key, other mechanisms, other domain when `domain` is set), `500` for
/// malformed requests or an internal error. Every refusal is counted and, if given,
/// reported to `onDenial`.
///
/// **Lifetime matters.** libzmq only consults ZAP if a handler is bound when a
/// connection handshakes; with no handler, CURVE servers admit *every* client that
/// knows the server key, unless the server socket has a ZAP domain and
/// ``ZMQSocket/setZAPEnforceDomain(_:)``. Start the authenticator before CURVE server
/// sockets accept connections and stop it only after they are closed. If its thread
/// ends any other way, ``isServing`` turns false and ``failure`` says why: the owner
/// must then stop accepting work.
///
/// How a denial looks (libzmq 4.3.4): the client's handshake fails with
/// `ZMQ_EVENT_HANDSHAKE_FAILED_AUTH` (status 400), the connection is dropped and the
/// client does **not** reconnect; its sends keep reporting ``ZMQSocket/SendResult/sent``
/// while the messages sit in its queue forever. A client without CURVE fails earlier
/// with a mechanism mismatch (`HANDSHAKE_FAILED_PROTOCOL`) and never reaches ZAP, so it
/// is not counted in ``deniedCount``.
///
/// Thread-safe: counters and the allowed set may be used from any thread.
public final class ZAPAuthenticator: Sendable {
    /// The fixed inproc endpoint libzmq sends ZAP requests to.
    public static let endpoint = "inproc://zeromq.zap.01"

    private let state: State
    // Initialised inline, so a throwing init (before `state` is set) never runs deinit/stop().
    private let finished = DispatchSemaphore(value: 0)

    /// Binds the ZAP endpoint in `context` and starts the handler thread.
    /// - Parameters:
    ///   - allowedPublicKeys: Z85 public keys of clients to admit.
    ///   - domain: if set, requests for any other ZAP domain are denied.
    ///   - pollIntervalMilliseconds: how often the thread checks for ``stop()``.
    ///   - onDenial: called on the handler's thread for every refused handshake, after the count is raised. A
    ///     handshake waits for it, so it must return quickly (rate-limit logging on the caller's side).
    public init(context: ZMQContext, allowedPublicKeys: [String], domain: String? = nil,
                pollIntervalMilliseconds: Int = 100, onDenial: (@Sendable (HandshakeDenial) -> Void)? = nil) throws {
        let allowed = try allowedPublicKeys.map { try Z85.decodeKey($0, label: "allowed public key") }
        // Bind before `state` is initialised: if this throws (e.g. another handler is
        // already bound in this context) the object is never complete and deinit does not run.
        let socket = try ZMQSocket(context: context, kind: .reply)
        try socket.bind(ZAPAuthenticator.endpoint)
        state = State(allowed: Set(allowed), domain: domain, onDenial: onDenial)
        // The socket moves to the handler thread and is used only there from now on
        // (a hand-over with a memory barrier, as libzmq allows).
        let handoff = SocketHandoff(socket)
        let state = self.state
        let finished = self.finished
        let thread = Thread {
            if let socket = handoff.take() {
                state.serve(socket, pollIntervalMilliseconds: pollIntervalMilliseconds)
                // Closing unbinds the endpoint: from now on handshakes find no handler (denied with an enforced
                // domain, admitted without one, which `isServing` reports).
                socket.close()
            }
            state.markStopped()
            finished.signal()
        }
        thread.name = "bard.zap"
        thread.start()
    }

    deinit { stop() }

    /// Number of requests answered with `200`.
    public var admittedCount: Int { state.counts().admitted }
    /// Number of requests answered with `400` or `500`.
    public var deniedCount: Int { state.counts().denied }

    /// True while the handler thread answers requests; false once it has ended, whether by ``stop()`` or by a
    /// failure of its socket. A CURVE server is only authenticated while this is true.
    public var isServing: Bool { state.health().serving }

    /// Why the handler thread ended on its own (its socket failed), nil while it serves or after ``stop()``.
    public var failure: String? { state.health().failure }

    /// Adds a Z85 public key to the allowed set (affects later handshakes).
    public func allow(publicKey: String) throws {
        let raw = try Z85.decodeKey(publicKey, label: "allowed public key")
        state.update { $0.insert(raw) }
    }

    /// Removes a Z85 public key from the allowed set (existing connections stay up).
    public func revoke(publicKey: String) throws {
        let raw = try Z85.decodeKey(publicKey, label: "revoked public key")
        state.update { $0.remove(raw) }
    }

    /// Stops the handler thread and closes its socket (unbinding the ZAP endpoint).
    /// Idempotent; returns once the thread has finished.
    public func stop() {
        if state.requestStop() { finished.wait() }
    }
}

/// Moves a socket to another thread exactly once.
private final class SocketHandoff: @unchecked Sendable {
    private let lock = NSLock()
    private var socket: ZMQSocket?
    init(_ socket: ZMQSocket) { self.socket = socket }
    func take() -> ZMQSocket? {
        lock.lock()
        defer { lock.unlock() }
        let taken = socket
        socket = nil
        return taken
    }
}

/// Lock-protected state shared between the authenticator and its thread.
private final class State: @unchecked Sendable {
    private let lock = NSLock()
    private var allowed: Set<[UInt8]>
    private let domain: String?
    private var admitted = 0
    private var denied = 0
    private var stopRequested = false
    private var serving = true
    private var failure: String?
    private let onDenial: (@Sendable (HandshakeDenial) -> Void)?

    init(allowed: Set<[UInt8]>, domain: String?, onDenial: (@Sendable (HandshakeDenial) -> Void)?) {
        self.allowed = allowed
        self.domain = domain
        self.onDenial = onDenial
    }

    func counts() -> (admitted: Int, denied: Int) {
        lock.lock()
        defer { lock.unlock() }
        return (admitted, denied)
    }

    func health() -> (serving: Bool, failure: String?) {
        lock.lock()
        defer { lock.unlock() }
        return (serving, failure)
    }

    /// The handler thread has ended.
    func markStopped() {
        lock.lock()
        defer { lock.unlock() }
        serving = false
    }

    /// The handler thread is about to end on its own.
    private func fail(_ why: String) {
        lock.lock()
        defer { lock.unlock() }
        if !stopRequested && failure == nil { failure = why }
    }

    func update(_ body: (inout Set<[UInt8]>) -> Void) {
        lock.lock()
        defer { lock.unlock() }
        body(&allowed)
    }

    /// True for the first caller only.
    func requestStop() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if stopRequested { return false }
        stopRequested = true
        return true
    }

    private var shouldStop: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopRequested
    }

    /// The handler loop: receive a request, send the reply, until stopped or the socket fails (then `failure`
    /// says why). Requests it cannot judge are answered `500`, never left unanswered or admitted.
    func serve(_ socket: ZMQSocket, pollIntervalMilliseconds: Int) {
        while !shouldStop {
            let request: [[UInt8]]
            do {
                guard let frames = try socket.receive(timeoutMilliseconds: pollIntervalMilliseconds) else { continue }
                request = frames
            } catch ZMQError.interrupted {
                continue
            } catch {
                return fail("the ZAP handler's socket failed: \(error)")
            }
            let (reply, denial) = self.reply(to: request)
            if let denial { onDenial?(denial) }
            // A reply socket must answer before it can receive again; inproc rarely pushes back.
            while true {
                let result: ZMQSocket.SendResult
                do { result = try socket.send(frames: reply) } catch {
                    return fail("the ZAP handler could not answer: \(error)")
                }
                if result == .sent { break }
                if shouldStop { return }
                usleep(1000)
            }
        }
    }

    /// Builds the RFC 27 reply for one request, and the denial to report if it refuses.
    func reply(to frames: [[UInt8]]) -> (reply: [[UInt8]], denial: HandshakeDenial?) {
        let requestID = frames.count > 1 ? frames[1] : []
        // version, request id, domain, address, identity, mechanism, credentials...
        let address = frames.count > 3 ? String(decoding: frames[3].prefix(256), as: UTF8.self) : ""
        let mechanism = frames.count > 5 ? String(decoding: frames[5].prefix(32), as: UTF8.self) : ""
        let key = mechanism == "CURVE" && frames.count == 7 ? Z85.encodeKey(frames[6]) : nil
        lock.lock()
        defer { lock.unlock() }
        func answer(_ status: Int, _ text: String, userID: String = "") -> (reply: [[UInt8]], denial: HandshakeDenial?) {
            let reply = [Array("1.0".utf8), requestID, Array(String(status).utf8), Array(text.utf8), Array(userID.utf8), []]
            guard status != 200 else {
                admitted += 1
                return (reply, nil)
            }
            denied += 1
            return (reply, HandshakeDenial(status: status, reason: text, mechanism: mechanism, key: key, address: address))
        }
        guard frames.count >= 6, frames[0] == Array("1.0".utf8) else { return answer(500, "malformed ZAP request") }
        if let domain, frames[2] != Array(domain.utf8) { return answer(400, "domain not allowed") }
        guard mechanism == "CURVE", frames.count == 7, frames[6].count == 32 else {
            return answer(400, "only CURVE clients are admitted")
        }
        guard allowed.contains(frames[6]) else { return answer(400, "public key not allowed") }
        // The User-Id is how the server learns who sent each message: without it, refuse rather than admit blind.
        guard let key else { return answer(500, "internal error: cannot encode the client key") }
        return answer(200, "OK", userID: key)
    }
}
