import Crypto

public enum Digest {
    /// Lower-case hex sha256 of some bytes.
    public static func sha256Hex<B: Sequence>(_ bytes: B) -> String where B.Element == UInt8 {
        Crypto.SHA256.hash(data: Array(bytes)).map { hex2($0) }.joined()
    }

    /// Lower-case hex sha256 of `bytes` with the bytes in `masked` hashed as ASCII '0's instead (for a checksum stored
    /// inside the bytes it covers). Hashes in place: a checkpoint is tens of megabytes.
    public static func sha256Hex(_ bytes: [UInt8], masking masked: Range<Int>) -> String {
        precondition(masked.lowerBound >= 0 && masked.upperBound <= bytes.count, "mask \(masked) outside \(bytes.count) bytes")
        var hasher = Crypto.SHA256()
        bytes.withUnsafeBytes { all in
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: all[..<masked.lowerBound]))
            hasher.update(data: [UInt8](repeating: UInt8(ascii: "0"), count: masked.count))
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: all[masked.upperBound...]))
        }
        return hasher.finalize().map { hex2($0) }.joined()
    }
}

@inline(__always) private func hex2(_ b: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(b >> 4)], digits[Int(b & 15)]])
}
