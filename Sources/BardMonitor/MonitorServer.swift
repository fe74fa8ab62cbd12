import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The metrics server's bounds, each against an attack it once fell to: idle connections exhausting the process's
/// file descriptors (1,100 of them under `ulimit -n 1024` killed the listener), and an endless header line
/// (20 CPU-seconds in 20 s). Any client that can reach the port may be hostile.
public struct MonitorLimits: Sendable, Equatable {
    /// Connections served at once; further ones are closed as soon as they are accepted.
    public var maxConnections: Int
    /// Largest request head (request line and headers, up to the blank line); a longer one is answered
    /// `431 Request Header Fields Too Large` and the connection closed.
    public var maxHeadBytes: Int
    /// Seconds a client has, from connecting, to send its request head; then the connection is closed.
    public var headDeadline: Double
    /// Seconds a client has to take the whole response; then the connection is closed.
    public var responseDeadline: Double

    /// The defaults: 64 connections, 8 KiB heads, 5 s to send the head, 10 s to take the response.
    public init(maxConnections: Int = 64, maxHeadBytes: Int = 8192, headDeadline: Double = 5, responseDeadline: Double = 10) {
        self.maxConnections = maxConnections; self.maxHeadBytes = maxHeadBytes
        self.headDeadline = headDeadline; self.responseDeadline = responseDeadline
    }
}

/// Serves a `RunMonitor` over HTTP/1.1: Prometheus text at /metrics, the dashboard at /, its data at /api/status and
/// /curve.svg. One thread with `poll`, beside the (blocking) training loop; one request per connection.
///
/// Why not FlyingFox's `HTTPServer` (0.27.1): its only knob is a deadline on the *handler*; it reads the request head
/// byte by byte with no size limit and no deadline, accepts without a cap, and its accept loop ends for good on the
/// first accept error (EMFILE), silently. Its connection type is internal, so none of this can be bounded from
/// outside. Four GET routes with small bodies need little of HTTP, so the server is written here against `poll`.
public final class MonitorServer: @unchecked Sendable {
    /// The port bound (the real one when asked for port 0).
    public let port: UInt16
    /// The IPv4 address bound: `0.0.0.0` for all interfaces (`--metrics :PORT`), else the one given.
    public let host: String
    /// The bounds in force.
    public let limits: MonitorLimits
    /// What it serves; publish cluster numbers here (`monitor.publish(.deniedHandshakes, ...)`).
    public let monitor: RunMonitor
    let engine: Engine
    let thread: Thread
    let finished = DispatchSemaphore(value: 0)

    /// Binds and starts serving.
    /// - Parameters:
    ///   - address: `HOST:PORT` with an IPv4 host (or `localhost`), or `:PORT` for all interfaces; port 0 picks one.
    ///   - limits: connection cap, head size and deadlines.
    ///   - log: one line per event worth an operator's attention (a listener restarted, descriptors exhausted);
    ///     called on the server's thread.
    public init(address: String, monitor: RunMonitor, limits: MonitorLimits = MonitorLimits(),
                log: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data("\($0)\n".utf8)) }) throws {
        guard let colon = address.lastIndex(of: ":"), let p = UInt16(address[address.index(after: colon)...]) else {
            throw MonitorError("--metrics \(address): expected HOST:PORT, e.g. 127.0.0.1:9464 (or :PORT for all interfaces)")
        }
        let given = String(address[..<colon])
        let host = given.isEmpty ? "0.0.0.0" : given == "localhost" ? "127.0.0.1" : given
        var ip = in_addr()
        guard inet_pton(AF_INET, host, &ip) == 1 else {
            throw MonitorError("--metrics \(address): \(given) is not an IPv4 address")
        }
        guard limits.maxConnections >= 1, limits.maxHeadBytes >= 64, limits.headDeadline > 0, limits.responseDeadline > 0 else {
            throw MonitorError("metrics server limits must be positive (at least 1 connection and 64-byte heads)")
        }
        var socketAddress = sockaddr_in()
        socketAddress.sin_family = sa_family_t(AF_INET)
        socketAddress.sin_port = p.bigEndian
        socketAddress.sin_addr = ip
        let listener: Int32
        do { listener = try Engine.listen(on: &socketAddress) } catch let e as MonitorError {
            throw MonitorError("--metrics \(address): cannot listen (\(e.description))")
        }
        self.host = host
        self.port = UInt16(bigEndian: socketAddress.sin_port)
        self.limits = limits
        self.monitor = monitor
        let engine = try Engine(listener: listener, address: socketAddress, limits: limits, log: log,
                                respond: { MonitorServer.route($0, monitor: monitor) })
        self.engine = engine
        let finished = self.finished
        thread = Thread {
            engine.run()
            finished.signal()
        }
        thread.name = "bard.metrics"
        thread.start()
    }

    /// `HOST:PORT` as bound, e.g. `0.0.0.0:9464`.
    public var boundAddress: String { "\(host):\(port)" }
    /// Whether the server listens on every interface (`0.0.0.0`).
    public var listensOnAllInterfaces: Bool { host == "0.0.0.0" }
    /// A URL that reaches the server from this host (loopback when it listens on all interfaces).
    public var url: String { "http://\(listensOnAllInterfaces ? "127.0.0.1" : host):\(port)/" }
    /// Times the listening socket failed and was opened again.
    public var listenerRestarts: Int { engine.counters().restarts }
    /// Connections closed at once because `limits.maxConnections` were open (or descriptors ran out).
    public var refusedConnections: Int { engine.counters().refused }

    /// Stops serving and closes every socket. Idempotent.
    public func stop() {
        guard engine.requestStop() else { return }
        _ = finished.wait(timeout: .now() + 5)
    }

    deinit { stop() }

    /// The response to one request target (`GET`), or nil for 404.
    static func route(_ path: String, monitor: RunMonitor) -> (type: String, body: [UInt8])? {
        switch path {
        case "/metrics": return ("text/plain; version=0.0.4; charset=utf-8", monitor.prometheusText())
        case "/api/status": return ("application/json", [UInt8](monitor.statusJSON()))
        case "/curve.svg": return ("image/svg+xml", Array(monitor.curveSVG().utf8))
        case "/": return ("text/html; charset=utf-8", Array(dashboardHTML.utf8))
        default: return nil
        }
    }
}

/// A metrics server that could not start; one line.
public struct MonitorError: Error, CustomStringConvertible {
    /// The message, naming the flag's value where there is one.
    public let description: String
    init(_ d: String) { description = d }
}

#if os(Linux)
private let sendFlags = Int32(MSG_NOSIGNAL)  // a peer that hung up must not raise SIGPIPE
private let streamType = Int32(SOCK_STREAM.rawValue)
#else
private let sendFlags: Int32 = 0  // SO_NOSIGPIPE is set on each socket instead
private let streamType = SOCK_STREAM
#endif

private func posixClose(_ fd: Int32) { _ = close(fd) }

private func nowNanoseconds() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

private func nanoseconds(_ seconds: Double) -> UInt64 { UInt64(max(0, min(seconds, 1e6)) * 1e9) }

/// The poll loop. Its state is the server thread's alone, except the stop flag and the counters (under `lock`).
final class Engine: @unchecked Sendable {
    final class Connection {
        enum Phase { case head, respond, linger }
        let fd: Int32
        var phase = Phase.head
        var head: [UInt8] = []
        var out: [UInt8] = []
        var sent = 0
        var deadline: UInt64
        /// Bytes read and thrown away while lingering.
        var drained = 0
        var done = false
        init(fd: Int32, deadline: UInt64) { self.fd = fd; self.deadline = deadline }
    }

    let lock = NSLock()
    var stopping = false
    var restarts = 0
    var refused = 0

    var listener: Int32
    var address: sockaddr_in
    let limits: MonitorLimits
    let log: @Sendable (String) -> Void
    let respond: (String) -> (type: String, body: [UInt8])?
    var connections: [Connection] = []
    /// A pipe whose read end wakes `poll` when `requestStop` writes to it.
    let wakeRead: Int32, wakeWrite: Int32
    /// A descriptor held in reserve: when accept fails for want of descriptors, it is given up for one accept so the
    /// pending connection can be closed, else it would keep the listener readable and `poll` spinning.
    var spare: Int32 = -1
    var relistenAt: UInt64 = 0
    var relistenDelay = 0.1
    var pausedUntil: UInt64 = 0
    var lastExhaustionLog: UInt64 = 0
    var scratch = [UInt8](repeating: 0, count: 4096)

    /// After a response is sent: how long and how much of the client's leftovers to read before closing, so that
    /// closing with unread input (which sends a reset) does not destroy the response on its way.
    static let lingerSeconds = 1.0
    static let lingerBytes = 64 << 10

    init(listener: Int32, address: sockaddr_in, limits: MonitorLimits, log: @escaping @Sendable (String) -> Void,
         respond: @escaping (String) -> (type: String, body: [UInt8])?) throws {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else {
            posixClose(listener)
            throw MonitorError("cannot create a pipe: \(String(cString: strerror(errno)))")
        }
        for fd in ends { Engine.configure(fd) }
        wakeRead = ends[0]; wakeWrite = ends[1]
        self.listener = listener; self.address = address; self.limits = limits; self.log = log; self.respond = respond
        spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
    }

    func counters() -> (restarts: Int, refused: Int) {
        lock.lock(); defer { lock.unlock() }
        return (restarts, refused)
    }

    private func count(restart: Bool = false, refusal: Bool = false) {
        lock.lock(); defer { lock.unlock() }
        if restart { restarts += 1 }
        if refusal { refused += 1 }
    }

    /// True for the first caller; wakes the loop, which then closes everything.
    func requestStop() -> Bool {
        lock.lock()
        let first = !stopping
        stopping = true
        lock.unlock()
        if first { var b: UInt8 = 1; _ = write(wakeWrite, &b, 1) }
        return first
    }

    private var shouldStop: Bool { lock.lock(); defer { lock.unlock() }; return stopping }

    /// Non-blocking and close-on-exec (a child process must not inherit the port or the connections).
    static func configure(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        #if !os(Linux)
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
        #endif
    }

    /// A listening socket on `address`; on return `address` holds the port actually bound.
    static func listen(on address: inout sockaddr_in) throws -> Int32 {
        let fd = socket(AF_INET, streamType, 0)
        guard fd >= 0 else { throw MonitorError(String(cString: strerror(errno))) }
        configure(fd)
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard bound == 0, posixListen(fd, 128) == 0 else {
            let text = String(cString: strerror(errno))
            posixClose(fd)
            throw MonitorError(text)
        }
        var actual = sockaddr_in()
        var actualLength = length
        if withUnsafeMutablePointer(to: &actual, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &actualLength) } }) == 0 {
            address.sin_port = actual.sin_port
        }
        return fd
    }

    var addressText: String {
        var a = address.sin_addr
        var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        _ = inet_ntop(AF_INET, &a, &text, socklen_t(text.count))
        return "\(String(cString: text)):\(UInt16(bigEndian: address.sin_port))"
    }

    // MARK: - The loop

    func run() {
        while !shouldStop {
            let now = nowNanoseconds()
            if listener < 0 && now >= relistenAt { relisten() }
            var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            let accepting = listener >= 0 && now >= pausedUntil
            // poll ignores negative descriptors.
            fds.append(pollfd(fd: accepting ? listener : -1, events: Int16(POLLIN), revents: 0))
            for c in connections {
                fds.append(pollfd(fd: c.fd, events: Int16(c.phase == .respond ? POLLOUT : POLLIN), revents: 0))
            }
            var wake = connections.map(\.deadline).min() ?? UInt64.max
            if listener < 0 { wake = min(wake, relistenAt) }
            if listener >= 0 && !accepting { wake = min(wake, pausedUntil) }
            let milliseconds = wake == .max ? 1000 : Int32(min(1000, (wake > now ? wake - now : 0) / 1_000_000 + 1))
            let rc = poll(&fds, nfds_t(fds.count), milliseconds)
            if rc < 0 {
                if errno != EINTR { usleep(10_000) }  // EINVAL/ENOMEM are not expected; do not spin
                continue
            }
            if fds[0].revents != 0 { _ = read(wakeRead, &scratch, scratch.count) }
            if accepting {
                let events = Int32(fds[1].revents)
                if events & (POLLERR | POLLNVAL | POLLHUP) != 0 {
                    restartListener(because: "poll reported \(events & POLLNVAL != 0 ? "an invalid descriptor" : "an error")")
                } else if events & POLLIN != 0 {
                    acceptPending()
                }
            }
            let polled = connections
            for (i, c) in polled.enumerated() where 2 + i < fds.count {
                let events = Int32(fds[2 + i].revents)
                if events == 0 { continue }
                switch c.phase {
                case .head: readHead(c)
                case .respond: if events & (POLLERR | POLLHUP | POLLNVAL) != 0 && events & POLLOUT == 0 { c.done = true } else { writeResponse(c) }
                case .linger: drain(c)
                }
            }
            let later = nowNanoseconds()
            for c in connections where !c.done && later >= c.deadline {
                if c.phase == .head { sendBestEffort(c.fd, Engine.status(408, "Request Timeout")) }
                c.done = true
            }
            connections.removeAll { c in
                if c.done { posixClose(c.fd) }
                return c.done
            }
        }
        for c in connections { posixClose(c.fd) }
        connections = []
        if listener >= 0 { posixClose(listener) }
        listener = -1
        if spare >= 0 { posixClose(spare) }
        posixClose(wakeRead); posixClose(wakeWrite)
    }

    /// Accepts everything pending (a bounded batch per pass), closing what passes the cap.
    func acceptPending() {
        for _ in 0..<256 {
            let fd = accept(listener, nil, nil)
            if fd >= 0 {
                Engine.configure(fd)
                if connections.count >= limits.maxConnections {
                    // Counted before the close, so that whoever sees the connection closed sees it counted.
                    count(refusal: true)
                    sendBestEffort(fd, Engine.status(503, "Service Unavailable"))
                    posixClose(fd)
                } else {
                    connections.append(Connection(fd: fd, deadline: nowNanoseconds() + nanoseconds(limits.headDeadline)))
                }
                continue
            }
            let code = errno
            switch code {
            case EAGAIN, EWOULDBLOCK:
                return
            case EINTR, ECONNABORTED, EPROTO, EPERM, ENETDOWN, ENETUNREACH, EHOSTDOWN, EHOSTUNREACH, EOPNOTSUPP, ETIMEDOUT:
                continue  // that connection's trouble (Linux reports pending network errors through accept), not ours
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                let now = nowNanoseconds()
                if now >= lastExhaustionLog + nanoseconds(10) {
                    log("metrics server: cannot accept a connection (\(String(cString: strerror(code)))); closing new connections until descriptors are free")
                    lastExhaustionLog = now
                }
                if spare >= 0 {
                    posixClose(spare)
                    let fd = accept(listener, nil, nil)
                    if fd >= 0 { count(refusal: true); posixClose(fd) }
                    spare = open("/dev/null", O_RDONLY | O_CLOEXEC)
                } else {
                    pausedUntil = now + nanoseconds(0.1)
                }
                return
            default:
                return restartListener(because: "accept failed: \(String(cString: strerror(code)))")
            }
        }
    }

    /// Closes the broken listening socket; the loop opens a new one on the same address at once, then with backoff.
    func restartListener(because why: String) {
        log("metrics server: the listener on \(addressText) failed (\(why)); restarting it")
        posixClose(listener)
        listener = -1
        relistenAt = 0
        relistenDelay = 0.1
        count(restart: true)
    }

    func relisten() {
        do {
            var again = address
            listener = try Engine.listen(on: &again)
            log("metrics server: listening again on \(addressText)")
        } catch {
            log("metrics server: cannot listen on \(addressText) again (\(error)); retrying in \(relistenDelay) s")
            relistenAt = nowNanoseconds() + nanoseconds(relistenDelay)
            relistenDelay = min(30, relistenDelay * 2)
        }
    }

    // MARK: - One connection

    func readHead(_ c: Connection) {
        let room = limits.maxHeadBytes + 1 - c.head.count  // one byte past the limit tells "too long" from "just fits"
        let n = scratch.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, min($0.count, room), 0) }
        if n == 0 { c.done = true; return }
        if n < 0 {
            if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR { c.done = true }
            return
        }
        let searchFrom = max(0, c.head.count - 3)
        c.head.append(contentsOf: scratch[0..<n])
        if let end = Engine.headEnd(c.head, from: searchFrom) {
            start(c, Engine.answer(c.head[..<end], respond: respond))
        } else if c.head.count > limits.maxHeadBytes {
            start(c, Engine.status(431, "Request Header Fields Too Large"))
        }
    }

    /// Index just past the blank line ending a request head (`\r\n\r\n` or bare `\n\n`), if it is there.
    static func headEnd(_ bytes: [UInt8], from start: Int) -> Int? {
        var i = start
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\n") {
                if i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "\n") { return i + 2 }
                if i + 2 < bytes.count && bytes[i + 1] == UInt8(ascii: "\r") && bytes[i + 2] == UInt8(ascii: "\n") { return i + 3 }
            }
            i += 1
        }
        return nil
    }

    func start(_ c: Connection, _ response: [UInt8]) {
        c.head = []
        c.out = response
        c.sent = 0
        c.phase = .respond
        c.deadline = nowNanoseconds() + nanoseconds(limits.responseDeadline)
        writeResponse(c)
    }

    func writeResponse(_ c: Connection) {
        while c.sent < c.out.count {
            let n = c.out[c.sent...].withUnsafeBytes { send(c.fd, $0.baseAddress, $0.count, sendFlags) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK { c.done = true }
                return
            }
            c.sent += n
        }
        c.out = []
        _ = shutdown(c.fd, Int32(SHUT_WR))
        c.phase = .linger
        c.deadline = nowNanoseconds() + nanoseconds(Engine.lingerSeconds)
    }

    func drain(_ c: Connection) {
        let n = scratch.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
        if n > 0 { c.drained += n }
        if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) || c.drained > Engine.lingerBytes {
            c.done = true
        }
    }

    /// One try to send a short refusal; whatever does not fit is dropped with the connection.
    func sendBestEffort(_ fd: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, sendFlags | Int32(MSG_DONTWAIT)) }
    }

    // MARK: - HTTP

    /// A complete response with no body worth reading.
    static func status(_ code: Int, _ reason: String, extra: String = "") -> [UInt8] {
        let body = "\(code) \(reason)\n"
        return Array("HTTP/1.1 \(code) \(reason)\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\n\(extra)Connection: close\r\n\r\n\(body)".utf8)
    }

    /// The response to a request head: GET or HEAD of a known path, else the fitting error.
    static func answer(_ head: ArraySlice<UInt8>, respond: (String) -> (type: String, body: [UInt8])?) -> [UInt8] {
        let line = head.prefix { $0 != UInt8(ascii: "\n") }
        let parts = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            .split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else { return status(400, "Bad Request") }
        let method = parts[0]
        guard method == "GET" || method == "HEAD" else { return status(405, "Method Not Allowed", extra: "Allow: GET, HEAD\r\n") }
        let path = String(parts[1].prefix { $0 != "?" && $0 != "#" })
        guard let (type, body) = respond(path) else { return status(404, "Not Found") }
        let header = "HTTP/1.1 200 OK\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        return Array(header.utf8) + (method == "HEAD" ? [] : body)
    }
}

#if canImport(Glibc)
private func posixListen(_ fd: Int32, _ backlog: Int32) -> Int32 { Glibc.listen(fd, backlog) }
#else
private func posixListen(_ fd: Int32, _ backlog: Int32) -> Int32 { Darwin.listen(fd, backlog) }
#endif
