import BardModel
import Foundation

/// `bard fetch`: downloads the coordinator's latest (or, with `wait`, final) checkpoint in chunks, checks the
/// announced sha256 and writes it atomically.
public func fetchCheckpoint(transport: ClientTransport, to path: String, wait: Bool, timeout: Double,
                            maxCheckpointBytes: Int = 16 << 30, log: (String) -> Void) throws -> (step: Int, bytes: Int) {
    // Chunks of 1 MiB and a header.
    transport.limits = ReceiveLimits(maxFrames: 2, maxBytes: CheckpointServer.chunkBytes + 4096)
    let deadline = Date().addingTimeInterval(timeout)
    var lastNote = Date.distantPast
    while true {
        var bytes: [UInt8] = []
        var expected: Chunk?
        while true {
            guard Date() < deadline else { throw BardError.io("no complete checkpoint from the coordinator within \(Int(timeout)) s (is it running and reachable, and do --keys match its own?)") }
            _ = transport.send(Message.fetch(offset: bytes.count, final: wait).encode())
            guard let frames = try transport.receive(timeout: 2), let message = try? Message.decode(frames) else { continue }
            if case .refuse(let code, let reason) = message, code.isFinal || code == .wrongRole {
                throw BardError.refused("the coordinator refused this fetch: \(LogText.escape(reason))")
            }
            guard case .chunk(let c) = message else { continue }
            guard c.totalBytes <= maxCheckpointBytes else {
                throw BardError.badInput("the coordinator announced a checkpoint of \(c.totalBytes) bytes, more than \(maxCheckpointBytes)")
            }
            if c.totalBytes == 0 || (wait && !c.final) {
                if Date().timeIntervalSince(lastNote) > 30 {
                    log(c.totalBytes == 0 ? "no checkpoint yet; waiting" : "training still running (checkpoint at step \(c.step)); waiting for the final one")
                    lastNote = Date()
                }
                Thread.sleep(forTimeInterval: 1)
                bytes = []; expected = nil
                continue
            }
            if let e = expected, e.sha256 != c.sha256 { bytes = []; expected = nil; continue }  // a newer checkpoint: restart
            guard c.offset == bytes.count else { continue }
            expected = c
            bytes += c.bytes
            if bytes.count == c.totalBytes { break }
        }
        guard let e = expected else { continue }
        guard Digest.sha256Hex(bytes) == e.sha256 else {
            log("checksum mismatch; downloading again")
            continue
        }
        _ = try Safetensors.decode(bytes, name: "fetched checkpoint")
        try AtomicFile.write(bytes, to: path)
        return (e.step, bytes.count)
    }
}
