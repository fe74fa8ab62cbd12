import BardModel
import Foundation

/// Serves the newest checkpoint file to `bard fetch` in chunks, with the whole file's size and sha256. Reads the file
/// again only when it changed on disk.
public final class CheckpointServer {
    public static let chunkBytes = 1 << 20
    /// The checkpoint file to serve; nil: none yet.
    public var path: String?
    /// Training is over: `fetch --wait` gets the file now.
    public var finished = false
    var cached: (step: Int, mtime: Date, bytes: [UInt8], sha: String)?

    public init(path: String? = nil) { self.path = path }

    /// The answer to `fetch(offset, final)`: a chunk, or an empty one when there is no file yet or the final one is
    /// asked for before the end.
    public func chunk(offset: Int, wantFinal: Bool) -> Chunk {
        guard let file = load() else { return Chunk(step: 0, final: false, totalBytes: 0, offset: 0, sha256: "", bytes: []) }
        let ready = !wantFinal || finished
        let start = ready ? min(offset, file.bytes.count) : 0
        let end = ready ? min(start + CheckpointServer.chunkBytes, file.bytes.count) : 0
        return Chunk(step: file.step, final: finished, totalBytes: file.bytes.count, offset: start, sha256: file.sha,
                     bytes: Array(file.bytes[start..<end]))
    }

    func load() -> (step: Int, bytes: [UInt8], sha: String)? {
        guard let path, let attrs = try? FileManager.default.attributesOfItem(atPath: path),
              let mtime = attrs[.modificationDate] as? Date else { return nil }
        if let c = cached, c.mtime == mtime { return (c.step, c.bytes, c.sha) }
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let bytes = [UInt8](data)
        guard let (_, meta) = try? Safetensors.decode(bytes, name: path) else { return nil }
        let step = Int(meta["step"] ?? "") ?? 0
        let sha = Digest.sha256Hex(bytes)
        cached = (step, mtime, bytes, sha)
        return (step, bytes, sha)
    }
}
