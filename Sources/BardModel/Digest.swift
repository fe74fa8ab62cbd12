import Crypto

public enum Digest {
    /// Lower-case hex sha256 of some bytes.
    public static func sha256Hex<B: Sequence>(_ bytes: B) -> String where B.Element == UInt8 {
        Crypto.SHA256.hash(data: Array(bytes)).map { hex2($0) }.joined()
    }
}

@inline(__always) private func hex2(_ b: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(b >> 4)], digits[Int(b & 15)]])
}
