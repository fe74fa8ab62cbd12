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
/// data_offsets; "__metadata__" -> string map), then the raw little-endian data. Bard writes only F32.
///
/// Checksum. Every file Bard writes has `bard.file_sha256` in its metadata: the lower-case hex sha256 of the whole
/// file as written (the 8 length bytes, the header JSON with its padding, all data bytes), computed with the 64
/// characters of this value itself replaced by 64 ASCII '0's. Bard writes the header as compact JSON, so the value is
/// the 64 bytes after the one occurrence of `"bard.file_sha256":"` in the header; that byte string cannot occur inside
/// a JSON string (where every `"` is escaped), so it marks the metadata key and nothing else. To verify: find it,
/// hash the file with those 64 bytes as '0's, compare. The hash is only a metadata string: safetensors and PyTorch
/// load the files as any other.
///
/// Files of Bard's previous format carry `bard.data_sha256` (the data bytes only, so an edited metadata value such
/// as the learning rate went unnoticed) or no checksum at all; they still load, with a one-line warning through
/// `warningHandler`.
public enum Safetensors {
    public static let checksumKey = "bard.file_sha256"
    /// The previous format's checksum: sha256 of the data bytes only.
    public static let dataChecksumKey = "bard.data_sha256"
    static let maxHeader = 100 << 20
    static let checksumMarker = Array("\"\(checksumKey)\":\"".utf8)

    /// Where `decode`'s warnings go (a file of the previous format, or with no checksum): standard error unless
    /// replaced, e.g. by a program's logger or a test that collects them. Set it before loading files, not meanwhile.
    nonisolated(unsafe) public static var warningHandler: (String) -> Void = { message in
        FileHandle.standardError.write(Data("bard: warning: \(message)\n".utf8))
    }

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
        meta[dataChecksumKey] = nil  // metadata copied from an older file: the whole-file hash replaces it
        meta[checksumKey] = String(repeating: "0", count: 64)
        header["__metadata__"] = meta
        var json = (try? JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])).map { [UInt8]($0) } ?? []
        while (json.count + 8) % 8 != 0 { json.append(0x20) }  // pad with spaces so data starts 8-byte aligned
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count + data.count)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        out.append(contentsOf: data)
        let sealed = seal(&out)
        precondition(sealed, "the checksum field is not in the header JSON as written (Foundation's JSON output changed?)")
        return out
    }

    /// Re-stamps `bard.file_sha256` after the bytes were changed (for tests and the fuzzer, which edit files on
    /// purpose). Returns false, changing nothing, when the header does not hold exactly one such field.
    @discardableResult
    public static func seal(_ bytes: inout [UInt8]) -> Bool {
        guard let headerEnd = headerEnd(bytes) else { return false }
        let fields = checksumFields(bytes, headerEnd: headerEnd)
        guard fields.count == 1, let field = fields.first else { return false }
        let hex = Digest.sha256Hex(bytes, masking: field)
        bytes.replaceSubrange(field, with: Array(hex.utf8))
        return true
    }

    /// 8 + N when the length prefix is there and fits the bytes.
    static func headerEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 8 else { return nil }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard n <= UInt64(maxHeader), 8 + Int(n) <= bytes.count else { return nil }
        return 8 + Int(n)
    }

    /// The byte ranges of the 64-character values that follow `"bard.file_sha256":"` and end in `"` in the header.
    static func checksumFields(_ bytes: [UInt8], headerEnd: Int) -> [Range<Int>] {
        let marker = checksumMarker
        var found: [Range<Int>] = []
        var i = 8
        while i + marker.count + 65 <= headerEnd {
            if bytes[i] == marker[0] && bytes[i..<(i + marker.count)].elementsEqual(marker) {
                let value = (i + marker.count)..<(i + marker.count + 64)
                if bytes[value.upperBound] == UInt8(ascii: "\"") { found.append(value) }
                i += marker.count
            } else {
                i += 1
            }
        }
        return found
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
        // The checksum first, so that an edited or corrupt file is reported as such rather than by whichever
        // structural check its damage happens to trip.
        let warning = try verifyChecksum(bytes, headerEnd: dataStart, metadata: metadata, bad: bad)
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
        if let warning { warningHandler("\(name): \(warning)") }
        return (tensors.sorted { $0.name < $1.name }, metadata)
    }

    /// Checks the whole-file checksum, or the previous format's data checksum; returns the warning for a file of the
    /// previous format or with no checksum.
    static func verifyChecksum(_ bytes: [UInt8], headerEnd: Int, metadata: [String: String],
                               bad: (String) -> BardError) throws -> String? {
        if let expected = metadata[checksumKey] {
            guard expected.utf8.count == 64, expected.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
                throw bad("\(checksumKey) is not 64 lower-case hex digits (corrupt file?)")
            }
            let fields = checksumFields(bytes, headerEnd: headerEnd)
            guard fields.count == 1, let field = fields.first, bytes[field].elementsEqual(expected.utf8) else {
                throw bad("\(checksumKey) is not in the header as Bard writes it (the file was rewritten by another tool?)")
            }
            let actual = Digest.sha256Hex(bytes, masking: field)
            guard actual == expected else {
                throw bad("checksum mismatch: the file is corrupt or was edited (\(checksumKey) \(expected.prefix(12))..., contents \(actual.prefix(12))...)")
            }
            return nil
        }
        if let expected = metadata[dataChecksumKey] {
            let actual = Digest.sha256Hex(bytes[headerEnd...])
            guard actual == expected else {
                throw bad("checksum mismatch: the data is corrupt (\(dataChecksumKey) \(expected.prefix(12))..., contents \(actual.prefix(12))...)")
            }
            return "written by an older Bard: its checksum covers the tensor data only, not the metadata; saving it again adds a whole-file checksum"
        }
        return "no checksum, so its contents cannot be verified"
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
