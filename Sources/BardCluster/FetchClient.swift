import BardModel
import Foundation

/// `bard fetch`: downloads the coordinator's latest (or, with `wait`, final) checkpoint in chunks, checks the
/// announced sha256 and writes it atomically.
public func fetchCheckpoint(transport: ClientTransport, to path: String, wait: Bool, timeout: Double,
                            log: (String) -> Void) throws -> (step: Int, bytes: Int) {
    let deadline = Date().addingTimeInterval(timeout)
    var lastNote = Date.distantPast
    while true {
        var bytes: [UInt8] = []
        var expected: Chunk?
        while true {
            guard Date() < deadline else { throw BardError.io("no complete checkpoint from the coordinator within \(Int(timeout)) s (is it running and reachable, and do --keys match its own?)") }
            _ = transport.send(Message.fetch(offset: bytes.count, final: wait).encode())
            guard let frames = try transport.receive(timeout: 2) else { continue }
            guard case .chunk(let c) = try Message.decode(frames) else { continue }
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
