import CZMQ

/// Errors thrown by the BardTransport wrappers.
///
/// Every case renders as a single line (see ``description``); libzmq failures
/// carry the `errno` value and the `zmq_strerror` text.
public enum ZMQError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A libzmq call failed. `code` is the errno value, `message` its `zmq_strerror` text.
    case call(operation: String, code: Int32, message: String)
    /// `EINTR`: a signal interrupted a blocking wait (e.g. `zmq_poll`). Nothing was
    /// received or sent; check your shutdown flag and retry if appropriate.
    case interrupted(operation: String)
    /// `ETERM`: the owning context was shut down or terminated. Close the socket.
    case contextTerminated(operation: String)
    /// The socket or context was already closed through this wrapper.
    case closed(operation: String)
    /// An argument was rejected before it reached libzmq.
    case invalidArgument(String)
    /// A CURVE key file could not be read, written, or parsed.
    case keyFile(path: String, reason: String)

    public var description: String {
        switch self {
        case let .call(operation, code, message):
            return "\(operation) failed: \(message) (errno \(code))"
        case let .interrupted(operation):
            return "\(operation) interrupted by a signal (EINTR)"
        case let .contextTerminated(operation):
            return "\(operation) failed: ZeroMQ context was terminated (ETERM)"
        case let .closed(operation):
            return "\(operation) failed: socket or context already closed"
        case let .invalidArgument(reason):
            return "invalid argument: \(reason)"
        case let .keyFile(path, reason):
            return "key file \(path): \(reason)"
        }
    }

    /// Text for an errno value as libzmq describes it (covers both libc and libzmq codes).
    static func text(_ code: Int32) -> String {
        guard let cString = zmq_strerror(code) else { return "unknown error" }
        return String(cString: cString)
    }

    /// Builds the error for a failed libzmq call from `zmq_errno()` (or the given code).
    static func last(_ operation: String, code: Int32 = zmq_errno()) -> ZMQError {
        switch code {
        case EINTR: return .interrupted(operation: operation)
        case ETERM: return .contextTerminated(operation: operation)
        default: return .call(operation: operation, code: code, message: text(code))
        }
    }
}
