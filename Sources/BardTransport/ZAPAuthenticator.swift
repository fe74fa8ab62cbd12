import CZMQ
import Foundation

/// A ZAP (RFC 27) handler that admits CURVE clients whose public key is allowed.
///
/// It binds a reply socket to ``endpoint`` (`inproc://zeromq.zap.01`) in the given
/// context during `init` and answers requests on its own thread: status `200` for a
/// CURVE client with an allowed key (user id = its Z85 key), `400` for everything else
/// (unknown key, other mechanisms, other domain when `domain` is set), `500` for
/// malformed requests.
///
/// **Lifetime matters.** libzmq only consults ZAP if a handler is bound when a
/// connection handshakes; with no handler, CURVE servers admit *every* client that
/// knows the server key. Start the authenticator before CURVE server sockets accept
/// connections and stop it only after they are closed.
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
    public init(context: ZMQContext, allowedPublicKeys: [String], domain: String? = nil,
                pollIntervalMilliseconds: Int = 100) throws {
        let allowed = try allowedPublicKeys.map { try Z85.decodeKey($0, label: "allowed public key") }
        // Bind before `state` is initialised: if this throws (e.g. another handler is
        // already bound in this context) the object is never complete and deinit does not run.
        let socket = try ZMQSocket(context: context, kind: .reply)
        try socket.bind(ZAPAuthenticator.endpoint)
        state = State(allowed: Set(allowed), domain: domain)
        // The socket moves to the handler thread and is used only there from now on
        // (a hand-over with a memory barrier, as libzmq allows).
        let handoff = SocketHandoff(socket)
        let state = self.state
        let finished = self.finished
        let thread = Thread {
            if let socket = handoff.take() {
                state.serve(socket, pollIntervalMilliseconds: pollIntervalMilliseconds)
                socket.close()
            }
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

    init(allowed: Set<[UInt8]>, domain: String?) {
        self.allowed = allowed
        self.domain = domain
    }

    func counts() -> (admitted: Int, denied: Int) {
        lock.lock()
        defer { lock.unlock() }
        return (admitted, denied)
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

    /// The handler loop: receive a request, send the reply, until stopped or the context ends.
    func serve(_ socket: ZMQSocket, pollIntervalMilliseconds: Int) {
        while !shouldStop {
            let request: [[UInt8]]
            do {
                guard let frames = try socket.receive(timeoutMilliseconds: pollIntervalMilliseconds) else { continue }
                request = frames
            } catch ZMQError.interrupted {
                continue
            } catch {
                return // context terminated or socket unusable
            }
            let reply = self.reply(to: request)
            // A reply socket must answer before it can receive again; inproc rarely pushes back.
            while true {
                guard let result = try? socket.send(frames: reply) else { return }
                if result == .sent { break }
                if shouldStop { return }
                usleep(1000)
            }
        }
    }

    /// Builds the RFC 27 reply for one request.
    func reply(to frames: [[UInt8]]) -> [[UInt8]] {
        let requestID = frames.count > 1 ? frames[1] : []
        func answer(_ status: String, _ text: String, userID: String = "") -> [[UInt8]] {
            [Array("1.0".utf8), requestID, Array(status.utf8), Array(text.utf8), Array(userID.utf8), []]
        }
        lock.lock()
        defer { lock.unlock() }
        // version, request id, domain, address, identity, mechanism, credentials...
        guard frames.count >= 6, frames[0] == Array("1.0".utf8) else {
            denied += 1
            return answer("500", "malformed ZAP request")
        }
        if let domain, frames[2] != Array(domain.utf8) {
            denied += 1
            return answer("400", "domain not allowed")
        }
        guard frames[5] == Array("CURVE".utf8), frames.count == 7, frames[6].count == 32 else {
            denied += 1
            return answer("400", "only CURVE clients are admitted")
        }
        guard allowed.contains(frames[6]) else {
            denied += 1
            return answer("400", "public key not allowed")
        }
        admitted += 1
        return answer("200", "OK", userID: Z85.encodeKey(frames[6]) ?? "")
    }
}
