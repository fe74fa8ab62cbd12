import CBLAS
import Foundation

/// Row-major single-precision matrix products through OpenBLAS, plus the naive reference they are tested against.
public enum BLAS {
    /// C (m x n) = alpha * op(A) * op(B) + beta * C, all row-major.
    /// op(A) is (m x k): A is stored (m x k) with lda >= k, or (k x m) when transA.
    @inline(__always)
    public static func gemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if m == 0 || n == 0 { return }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// y (m) = alpha * A (m x n) * x + beta * y, or A^T x when trans (then y has n entries).
    @inline(__always)
    public static func gemv(trans: Bool = false, m: Int, n: Int, alpha: Float = 1,
                            a: UnsafePointer<Float>, lda: Int, x: UnsafePointer<Float>,
                            beta: Float = 0, y: UnsafeMutablePointer<Float>) {
        cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), alpha, a, Int32(lda),
                    x, 1, beta, y, 1)
    }

    /// B (cols x rows, ldb) = A^T for A (rows x cols, lda), row-major.
    @inline(__always)
    public static func transpose(rows: Int, cols: Int, a: UnsafePointer<Float>, lda: Int,
                                 b: UnsafeMutablePointer<Float>, ldb: Int) {
        if rows == 0 || cols == 0 { return }
        cblas_somatcopy(CblasRowMajor, CblasTrans, Int32(rows), Int32(cols), 1, a, Int32(lda), b, Int32(ldb))
    }

    /// The slow, obviously correct triple loop (accumulating in Double) that `gemm` is checked against.
    public static func naiveGemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                                 alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                                 b: UnsafePointer<Float>, ldb: Int,
                                 beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0
                for p in 0..<k {
                    let av = transA ? a[p * lda + i] : a[i * lda + p]
                    let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                    sum += Double(av) * Double(bv)
                }
                let old = beta == 0 ? 0 : beta * c[i * ldc + j]
                c[i * ldc + j] = alpha * Float(sum) + old
            }
        }
    }

    /// Threads OpenBLAS may use inside one call. Bard's own threads (WindowThreads) each call with 1.
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(max(1, n))) }

    /// Whether OpenBLAS computes a small product straight from its operands, without packing them: its AVX-512
    /// kernels do (0.3.21's SkylakeX, Cooperlake and SapphireRapids) when m n k <= `unpackedProductLimit` and both
    /// operands run along k (B read transposed). A recurrent step's product against W_hh, cut into such pieces, then
    /// skips the packing of W_hh that costs OpenBLAS a fifth of a step's time (docs/scaling.md).
    public static let computesSmallProductsUnpacked = ["SkylakeX", "Cooperlake", "SapphireRapids"].contains(coreName)
    public static let unpackedProductLimit = 1_000_000

    /// The kernel family OpenBLAS picked for this CPU (for logs and benchmark reports).
    public static var coreName: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }
}
