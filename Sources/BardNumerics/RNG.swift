import Foundation

/// xoshiro256** seeded through SplitMix64: small, fast, and its whole state (four words) is saved in checkpoints
/// so a resumed run draws exactly the numbers an uninterrupted run would.
public struct RNG: Codable, Equatable, Sendable {
    public var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

    public init(seed: UInt64) {
        var sm = seed
        s0 = RNG.splitMix(&sm); s1 = RNG.splitMix(&sm); s2 = RNG.splitMix(&sm); s3 = RNG.splitMix(&sm)
    }

    @inline(__always)
    static func splitMix(_ x: inout UInt64) -> UInt64 {
        x &+= 0x9E37_79B9_7F4A_7C15
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    @inline(__always)
    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
        s2 ^= t
        s3 = (s3 << 45) | (s3 >> 19)
        return result
    }

    /// Uniform in [0, 1) with 53 random bits.
    @inline(__always)
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Uniform in [lo, hi).
    public mutating func uniform(_ lo: Float, _ hi: Float) -> Float { lo + (hi - lo) * Float(uniform()) }

    /// Standard normal by Box-Muller (one value per call: simple, and init is not a hot path).
    public mutating func normal() -> Double {
        var u1 = uniform()
        while u1 <= 0 { u1 = uniform() }
        let u2 = uniform()
        return (-2 * Foundation.log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }
}

/// A counter-based random stream: the value at a position depends only on (key, position), never on what was drawn
/// before. Dropout masks use it so that a column gets the same mask whichever worker (or thread) computes it.
public struct CounterRandom: Sendable {
    public let key: UInt64
    public init(key: UInt64) { self.key = key }

    /// Mixes several coordinates into one key (e.g. seed, step, dropout site).
    public static func key(_ parts: UInt64...) -> UInt64 {
        var x: UInt64 = 0x6A09_E667_F3BC_C908
        for p in parts { x = RNG.splitMix(&x) ^ p }
        return RNG.splitMix(&x)
    }

    /// Uniform in [0, 1) at a position.
    @inline(__always)
    public func uniform(at position: UInt64) -> Float {
        var x = key ^ (position &* 0xD1B5_4A32_D192_ED03)
        return Float(RNG.splitMix(&x) >> 40) * 0x1.0p-24
    }
}
