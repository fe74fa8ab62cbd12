import Foundation

/// Elementwise activations used by the recurrent cells. Written as plain loops over raw pointers so the compiler
/// vectorises them; the derivatives are expressed through the outputs (sigma' = s(1-s), tanh' = 1-t^2).
public enum Kernels {
    @inline(__always) public static func sigmoid(_ x: Float) -> Float { 1 / (1 + expf(-x)) }
    /// tanh through expf: glibc's tanhf (via expm1f) cost more than all other pointwise work together.
    /// Absolute error about 1e-7; saturates cleanly to +-1 (exp overflow gives 1 - 0).
    @inline(__always) public static func tanh(_ x: Float) -> Float { 1 - 2 / (1 + expf(2 * x)) }

    /// e^x within about 2 ulp (Cephes' expf: x = n ln2 + r, a polynomial for e^r, 2^n from the exponent bits), with no
    /// call and no branch, so that the loops below vectorise; glibc's expf is a call per value. x is clamped to
    /// [-87.3, 88.3], where e^x stays a normal float: tanh saturates to exactly +-1 and sigmoid to exactly 1 there,
    /// and sigmoid to 1e-38 on the negative side. NaN in gives NaN out.
    @inline(__always) static func vectorExp(_ x: Float) -> Float {
        let x = Swift.min(Swift.max(x, -87.3), 88.3)
        // round(x / ln2) by the 1.5 * 2^23 trick: t's low mantissa bits hold n, which becomes 2^n's exponent below
        // without a float-to-integer conversion (undefined for NaN).
        let t = x * 1.442_695_04 + 12_582_912
        let n = t - 12_582_912
        let r = x - n * 0.693_359_375 + n * 2.121_944_4e-4
        var p: Float = 1.987_569_15e-4
        p = p * r + 1.398_199_95e-3
        p = p * r + 8.333_451_9e-3
        p = p * r + 4.166_579_59e-2
        p = p * r + 0.166_666_655
        p = p * r + 0.500_000_012
        return (p * (r * r) + r + 1) * Float(bitPattern: (t.bitPattern &+ 127) &<< 23)
    }

    /// x[i] = sigmoid(x[i]), vectorised.
    public static func sigmoidInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { x[i] = 1 / (1 + vectorExp(-x[i])) }
    }

    /// y[i] = tanh(x[i]) (y may be x), vectorised.
    public static func tanh(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { y[i] = 1 - 2 / (1 + vectorExp(2 * x[i])) }
    }

    /// y[i] += b[i % n] for a (rows x n) row-major matrix.
    public static func addRowVector(_ y: UnsafeMutablePointer<Float>, rows: Int, n: Int, _ b: UnsafePointer<Float>) {
        for r in 0..<rows {
            let row = y + r * n
            for j in 0..<n { row[j] += b[j] }
        }
    }

    /// Whether no value is NaN or infinite (exponent bits all ones). Branch-free over the bits, so that it vectorises:
    /// it runs on every gradient and parameter message (2.2 M values for LSTM 512).
    public static func allFinite(_ x: UnsafePointer<Float>, count: Int) -> Bool {
        x.withMemoryRebound(to: UInt32.self, capacity: count) { bits in
            var special: UInt32 = 0
            for i in 0..<count { special |= (bits[i] & 0x7F80_0000) == 0x7F80_0000 ? 1 : 0 }
            return special == 0
        }
    }

    /// y[i] += x[i] for i in 0..<count.
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { y[i] += x[i] }
    }

    /// `add` and `allFinite(x)` in one pass over x: for memory written by another process, which must be checked
    /// before it counts, at the cost of one read.
    public static func addCheckingFinite(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) -> Bool {
        storeCheckingFinite(x, into: y, count: count, adding: true)
    }

    /// y[i] = x[i], and whether every x[i] is finite, in one pass: `addCheckingFinite` for the first term of a sum.
    public static func copyCheckingFinite(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) -> Bool {
        storeCheckingFinite(x, into: y, count: count, adding: false)
    }

    /// Branch-free over the bits, as `allFinite`, so that it vectorises; inlined, each caller gets its own loop.
    @inline(__always)
    private static func storeCheckingFinite(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int,
                                            adding: Bool) -> Bool {
        x.withMemoryRebound(to: UInt32.self, capacity: count) { bits in
            var special: UInt32 = 0
            for i in 0..<count {
                let b = bits[i]
                special |= (b & 0x7F80_0000) == 0x7F80_0000 ? 1 : 0
                y[i] = adding ? y[i] + Float(bitPattern: b) : Float(bitPattern: b)
            }
            return special == 0
        }
    }

    /// x[i] *= scale, and the sum of the squares of the results in Double (four partial sums, added pairwise): the
    /// mean of a gradient sum and its part of the squared norm, in one pass.
    public static func scaleSumOfSquares(_ x: UnsafeMutablePointer<Float>, count: Int, scale: Float) -> Double {
        var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
        var i = 0
        while i + 4 <= count {
            x[i] *= scale; x[i + 1] *= scale; x[i + 2] *= scale; x[i + 3] *= scale
            let a = Double(x[i]), b = Double(x[i + 1]), c = Double(x[i + 2]), d = Double(x[i + 3])
            s0 += a * a; s1 += b * b; s2 += c * c; s3 += d * d
            i += 4
        }
        while i < count { x[i] *= scale; let a = Double(x[i]); s0 += a * a; i += 1 }
        return (s0 + s1) + (s2 + s3)
    }

    /// b[j] += sum over rows of y[r, j].
    public static func addColumnSums(_ y: UnsafePointer<Float>, rows: Int, n: Int, stride: Int? = nil,
                                     into b: UnsafeMutablePointer<Float>) {
        let stride = stride ?? n
        for r in 0..<rows {
            let row = y + r * stride
            for j in 0..<n { b[j] += row[j] }
        }
    }
}
