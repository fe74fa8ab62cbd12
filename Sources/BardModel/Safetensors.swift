import BardNumerics
import Foundation

/// A named float32 tensor.
public struct Tensor: Sendable {
    public let name: String
    public let shape: [Int]
    public let values: [Float]
    public init(name: String, shape: [Int], values: [Float]) { self.name = name; self.shape = shape; self.values = values }
}

/// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON (tensor name -> dtype, shape,
/// data_offsets; "__metadata__" -> string map), then the raw little-endian data. Bard writes only F32 and adds
/// "bard.data_sha256" to the metadata, which `decode` verifies when present.
public enum Safetensors {
    public static let checksumKey = "bard.data_sha256"
    static let maxHeader = 100 << 20

    public static func encode(_ tensors: [Tensor], metadata: [String: String]) -> [UInt8] {
        var data: [UInt8] = []
        data.reserveCapacity(tensors.reduce(0) { $0 + $1.values.count * 4 })
        var header: [String: Any] = [:]
        for t in tensors {
            let start = data.count
            t.values.withUnsafeBytes { data.append(contentsOf: $0) }  // x86-64 and arm64 are little-endian
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [start, data.count]] as [String: Any]
        }
        var meta = metadata
        meta[checksumKey] = Digest.sha256Hex(data)
        header["__metadata__"] = meta
        var json = (try? JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])).map { [UInt8]($0) } ?? []
        while (json.count + 8) % 8 != 0 { json.append(0x20) }  // pad with spaces so data starts 8-byte aligned
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count + data.count)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        out.append(contentsOf: data)
        return out
    }

    /// Decodes and validates every field before use; a truncated or corrupt file is a one-line error naming `name`.
    public static func decode(_ bytes: [UInt8], name: String) throws -> (tensors: [Tensor], metadata: [String: String]) {
        func bad(_ why: String) -> BardError { .badCheckpoint("\(name): \(why)") }
        guard bytes.count >= 8 else { throw bad("truncated (\(bytes.count) bytes, not a safetensors file)") }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard n <= UInt64(maxHeader) else { throw bad("header length \(n) is implausible (corrupt file?)") }
        guard 8 + Int(n) <= bytes.count else { throw bad("truncated (header needs \(n) bytes, file has \(bytes.count - 8))") }
        let headerBytes = Data(bytes[8..<(8 + Int(n))])
        guard let header = (try? JSONSerialization.jsonObject(with: headerBytes)) as? [String: Any] else {
            throw bad("header is not a JSON object (corrupt file?)")
        }
        let dataStart = 8 + Int(n), dataCount = bytes.count - dataStart
        var metadata: [String: String] = [:]
        if let m = header["__metadata__"] {
            guard let mm = m as? [String: String] else { throw bad("__metadata__ must map strings to strings") }
            metadata = mm
        }
        var tensors: [Tensor] = []
        var maxEnd = 0
        for (key, value) in header where key != "__metadata__" {
            guard let entry = value as? [String: Any], let dtype = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int], offsets.count == 2
            else { throw bad("tensor \(key) has a malformed header entry") }
            guard dtype == "F32" else { throw bad("tensor \(key) has dtype \(dtype); Bard reads F32 only") }
            guard shape.allSatisfy({ $0 >= 0 && $0 < 1 << 31 }) else { throw bad("tensor \(key) has shape \(shape)") }
            let (start, end) = (offsets[0], offsets[1])
            guard start >= 0, end >= start, end <= dataCount else {
                throw bad("tensor \(key) lies outside the data (offsets \(start)..<\(end), data has \(dataCount) bytes): truncated?")
            }
            // The element count must match the byte range; compute it without overflow (a hostile shape can wrap).
            var count = 1
            for d in shape {
                let (product, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow, product <= (end - start) / 4 else { throw bad("tensor \(key): shape \(shape) does not fit its \(end - start) bytes") }
                count = product
            }
            guard end - start == count * 4 else { throw bad("tensor \(key): \(end - start) bytes for shape \(shape)") }
            var values = [Float](repeating: 0, count: count)
            values.withUnsafeMutableBytes { dst in
                bytes.withUnsafeBytes { src in
                    if let d = dst.baseAddress, let s = src.baseAddress { d.copyMemory(from: s + dataStart + start, byteCount: end - start) }
                }
            }
            maxEnd = max(maxEnd, end)
            tensors.append(Tensor(name: key, shape: shape, values: values))
        }
        if maxEnd != dataCount { throw bad("\(dataCount - maxEnd) bytes of data belong to no tensor (corrupt file?)") }
        if let expected = metadata[checksumKey] {
            let actual = Digest.sha256Hex(bytes[dataStart...])
            guard actual == expected else { throw bad("checksum mismatch: the data is corrupt (expected \(expected.prefix(12))..., got \(actual.prefix(12))...)") }
        }
        return (tensors.sorted { $0.name < $1.name }, metadata)
    }

    public static func read(path: String) throws -> (tensors: [Tensor], metadata: [String: String]) {
        guard FileManager.default.fileExists(atPath: path) else { throw BardError.badCheckpoint("\(path): no such file") }
        guard let data = FileManager.default.contents(atPath: path) else { throw BardError.badCheckpoint("\(path): cannot read") }
        return try decode([UInt8](data), name: path)
    }

    public static func write(_ tensors: [Tensor], metadata: [String: String], to path: String) throws {
        try AtomicFile.write(encode(tensors, metadata: metadata), to: path)
    }
}
