/// C = A B (or C += A B) for a few rows of A (a recurrent step's batch columns) against a B made once and read many
/// times (W_hh, read by every step of a window), kept in strips of 16 columns that a product reads straight, with no
/// packing per call. OpenBLAS's AVX2 kernels (Haswell's, which Bard runs on Zen 3 and Zen 4) pack B again on every
/// call: for a one-thread worker's 16 columns against LSTM 512's W_hh that costs a third of each step's product
/// (docs/scaling.md). The strips are the packing, done once per window.
///
/// Strip s holds columns 16s ..< 16s+16 of B, row after row: (k, 16), zero past column n. Each block of up to 6 rows
/// of C against one strip is 12 vectors of 8 floats summed over k in registers (the numeric modules are compiled for
/// AVX2 and FMA: Package.swift; a BARD_PORTABLE build computes the same, slower).
public enum StripProduct {
    public static let width = 16

    /// Strips of (k x n) B.
    public static func stripCount(n: Int) -> Int { (n + width - 1) / width }

    /// Floats that the strips of (k x n) B take.
    public static func size(k: Int, n: Int) -> Int { stripCount(n: n) * width * k }

    /// Strips `strips` of B (k x n) into `into` (laid out for all of B): B is `w` (k x n, row stride ld), or with
    /// `transposed` B = w^T, w being (n x k). Threads may pack disjoint strips at once.
    public static func pack(_ w: UnsafePointer<Float>, ld: Int, transposed: Bool, k: Int, n: Int, strips: Range<Int>,
                            into out: UnsafeMutablePointer<Float>) {
        for s in strips {
            let first = s * width, count = min(width, n - first), strip = out + s * k * width
            if transposed {
                for c in 0..<width {
                    guard c < count else {
                        for p in 0..<k { strip[p * width + c] = 0 }
                        continue
                    }
                    let row = w + (first + c) * ld
                    for p in 0..<k { strip[p * width + c] = row[p] }
                }
            } else {
                for p in 0..<k {
                    let dst = strip + p * width, src = w + p * ld + first
                    for c in 0..<count { dst[c] = src[c] }
                    for c in count..<width { dst[c] = 0 }
                }
            }
        }
    }

    /// C (m x n, ldc) columns `columns` = A (m x k, lda) B, or += with `accumulate`; B in strips (`pack`). Only those
    /// columns of C are read or written.
    public static func multiply(m: Int, k: Int, a: UnsafePointer<Float>, lda: Int, strips b: UnsafePointer<Float>,
                                columns: Range<Int>, accumulate: Bool, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, !columns.isEmpty else { return }
        for s in columns.lowerBound / width ... (columns.upperBound - 1) / width {
            let strip = b + s * k * width, first = s * width
            let valid = max(columns.lowerBound, first) ..< min(columns.upperBound, first + width)
            var row = 0
            while row < m {
                let rows = min(6, m - row)
                let a0 = a + row * lda, c0 = c + row * ldc
                switch rows {
                case 6: block(6, a0, lda: lda, strip: strip, k: k, c: c0, ldc: ldc, first: first, valid: valid, accumulate: accumulate)
                case 5: block(5, a0, lda: lda, strip: strip, k: k, c: c0, ldc: ldc, first: first, valid: valid, accumulate: accumulate)
                case 4: block(4, a0, lda: lda, strip: strip, k: k, c: c0, ldc: ldc, first: first, valid: valid, accumulate: accumulate)
                case 3: block(3, a0, lda: lda, strip: strip, k: k, c: c0, ldc: ldc, first: first, valid: valid, accumulate: accumulate)
                case 2: block(2, a0, lda: lda, strip: strip, k: k, c: c0, ldc: ldc, first: first, valid: valid, accumulate: accumulate)
                default: block(1, a0, lda: lda, strip: strip, k: k, c: c0, ldc: ldc, first: first, valid: valid, accumulate: accumulate)
                }
                row += rows
            }
        }
    }

    private typealias V = SIMD8<Float>

    /// s += x b: fused where the build has the instruction (BARD_FMA: Package.swift; every arm64), else a multiply
    /// and an add, since a fused one would be a library call per lane.
    @inline(__always) private static func madd(_ s: inout V, _ x: V, _ b: V) {
        #if BARD_FMA || arch(arm64)
        s.addProduct(x, b)
        #else
        s += x * b
        #endif
    }

    @inline(__always) private static func load(_ p: UnsafePointer<Float>) -> V {
        UnsafeRawPointer(p).loadUnaligned(as: V.self)
    }

    /// `r` rows (1...6, a constant where it is inlined) of C against one strip: C's columns `valid` of those in
    /// first ..< first+16.
    @inline(__always)
    private static func block(_ r: Int, _ a: UnsafePointer<Float>, lda: Int, strip: UnsafePointer<Float>, k: Int,
                              c: UnsafeMutablePointer<Float>, ldc: Int, first: Int, valid: Range<Int>, accumulate: Bool) {
        var s00 = V(), s01 = V(), s10 = V(), s11 = V(), s20 = V(), s21 = V()
        var s30 = V(), s31 = V(), s40 = V(), s41 = V(), s50 = V(), s51 = V()
        let a1 = a + lda, a2 = a + 2 * lda, a3 = a + 3 * lda, a4 = a + 4 * lda, a5 = a + 5 * lda
        var bp = strip
        for p in 0..<k {
            let b0 = load(bp), b1 = load(bp + 8)
            var x = V(repeating: a[p]); madd(&s00, x, b0); madd(&s01, x, b1)
            if r > 1 { x = V(repeating: a1[p]); madd(&s10, x, b0); madd(&s11, x, b1) }
            if r > 2 { x = V(repeating: a2[p]); madd(&s20, x, b0); madd(&s21, x, b1) }
            if r > 3 { x = V(repeating: a3[p]); madd(&s30, x, b0); madd(&s31, x, b1) }
            if r > 4 { x = V(repeating: a4[p]); madd(&s40, x, b0); madd(&s41, x, b1) }
            if r > 5 { x = V(repeating: a5[p]); madd(&s50, x, b0); madd(&s51, x, b1) }
            bp += width
        }
        store(s00, s01, c, first: first, valid: valid, accumulate: accumulate)
        if r > 1 { store(s10, s11, c + ldc, first: first, valid: valid, accumulate: accumulate) }
        if r > 2 { store(s20, s21, c + 2 * ldc, first: first, valid: valid, accumulate: accumulate) }
        if r > 3 { store(s30, s31, c + 3 * ldc, first: first, valid: valid, accumulate: accumulate) }
        if r > 4 { store(s40, s41, c + 4 * ldc, first: first, valid: valid, accumulate: accumulate) }
        if r > 5 { store(s50, s51, c + 5 * ldc, first: first, valid: valid, accumulate: accumulate) }
    }

    /// One row's 16 sums (lo, hi) into its columns `valid` of first ..< first+16.
    @inline(__always)
    private static func store(_ lo: V, _ hi: V, _ row: UnsafeMutablePointer<Float>, first: Int, valid: Range<Int>,
                              accumulate: Bool) {
        if valid.count == width {
            let raw = UnsafeMutableRawPointer(row + first)
            raw.storeBytes(of: accumulate ? lo + load(row + first) : lo, as: V.self)
            raw.storeBytes(of: accumulate ? hi + load(row + first + 8) : hi, toByteOffset: 32, as: V.self)
            return
        }
        for j in valid {
            let o = j - first, v = o < 8 ? lo[o] : hi[o - 8]
            row[j] = accumulate ? row[j] + v : v
        }
    }
}
