import CZMQ
import Foundation

/// Owns a libzmq context (`zmq_ctx_new`).
///
/// A context is thread-safe: any thread may create sockets from it. Every
/// ``ZMQSocket`` keeps its context alive, so the context is terminated
/// (`zmq_ctx_term`) automatically once the last socket and the context object
/// itself are gone. ``close()`` terminates explicitly; like `zmq_ctx_term` it
/// blocks until every socket of the context is closed, so close sockets first
/// (or call ``shutdown()`` so that threads blocked in ZeroMQ calls wake up with
/// ``ZMQError/contextTerminated(operation:)`` and close their sockets).
public final class ZMQContext: @unchecked Sendable {
    // `handle` is guarded by `lock`; it is nil once the context is closed.
    private let lock = NSLock()
    private var handle: UnsafeMutableRawPointer?

    /// Creates a new libzmq context with default settings (one I/O thread).
    public init() throws {
        guard let created = zmq_ctx_new() else { throw ZMQError.last("zmq_ctx_new") }
        handle = created
    }

    deinit { close() }

    /// libzmq's runtime version, e.g. `(4, 3, 4)`.
    public static var libraryVersion: (major: Int, minor: Int, patch: Int) {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return (Int(major), Int(minor), Int(patch))
    }

    /// Whether libzmq was built with the CURVE security mechanism.
    public static var hasCurve: Bool { zmq_has("curve") != 0 }

    /// Creates a raw libzmq socket; used by ``ZMQSocket``.
    func makeRawSocket(type: Int32) throws -> UnsafeMutableRawPointer {
        lock.lock()
        defer { lock.unlock() }
        guard let context = handle else { throw ZMQError.closed(operation: "zmq_socket") }
        guard let socket = zmq_socket(context, type) else { throw ZMQError.last("zmq_socket") }
        return socket
    }

    /// Non-blocking `zmq_ctx_shutdown`: blocking calls on this context's sockets
    /// now fail with ``ZMQError/contextTerminated(operation:)``. The sockets must
    /// still be closed; the context is released by ``close()`` or deinit.
    public func shutdown() {
        lock.lock()
        defer { lock.unlock() }
        if let context = handle { _ = zmq_ctx_shutdown(context) }
    }

    /// Terminates the context (`zmq_ctx_term`). Idempotent. Blocks until all
    /// sockets created from this context are closed.
    public func close() {
        lock.lock()
        let context = handle
        handle = nil
        lock.unlock()
        guard let context else { return }
        // zmq_ctx_term may be interrupted by a signal; it must be retried.
        while zmq_ctx_term(context) != 0 && zmq_errno() == EINTR {}
    }
}
