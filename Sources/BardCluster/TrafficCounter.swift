import Foundation

/// The bytes of messages a process sent and received since it last reported them (a worker with each `result`, a
/// shard with each `applied`), over all its sockets. Counted where messages are sent and received; any thread.
public final class TrafficCounter: @unchecked Sendable {
    let lock = NSLock()
    var sent = 0, received = 0

    public init() {}

    public func sent(_ frames: [[UInt8]]) {
        let n = frames.reduce(0) { $0 + $1.count }
        lock.lock(); sent += n; lock.unlock()
    }

    public func received(_ frames: [[UInt8]]) {
        let n = frames.reduce(0) { $0 + $1.count }
        lock.lock(); received += n; lock.unlock()
    }

    /// Stamps what was counted since the last report into `frames` (a `result` or `applied` about to be sent, whose
    /// own bytes the stamp adds) and starts counting afresh; other messages are counted as sent.
    public func report(in frames: inout [[UInt8]]) {
        lock.lock(); defer { lock.unlock() }
        if Message.stampTraffic(&frames, Traffic(sent: UInt64(sent), received: UInt64(received))) {
            sent = 0; received = 0
        } else {
            sent += frames.reduce(0) { $0 + $1.count }
        }
    }
}
