import BardNumerics

/// W_hh as a step's recurrent product reads it, whichever this machine's OpenBLAS kernels compute faster:
/// - W_hh^T, (H, G*H), made once per window (`RecurrentLayer.transposeHidden`), in one product per step: OpenBLAS
///   packs it on every call, and packs W_hh^T faster than W_hh (Haswell's kernels: 16 columns take 0.68 ms a step
///   instead of 0.83 on Zen 3);
/// - or W_hh itself, (G*H, H), read transposed in pieces of a few gate columns small enough for kernels that compute
///   them without packing (`BLAS.computesSmallProductsUnpacked`; on Zen 5, 32 columns take 0.41 ms a step against
///   0.54 from W_hh^T, and 16 columns 0.19 against 0.42).
/// Both give the same product up to the order of float additions.
public struct HiddenWeight {
    /// W_hh^T when `transposed`, else W_hh.
    public let pointer: UnsafePointer<Float>
    public let transposed: Bool
    public let hidden: Int, gateRows: Int

    public init(pointer: UnsafePointer<Float>, transposed: Bool, hidden: Int, gateRows: Int) {
        self.pointer = pointer; self.transposed = transposed; self.hidden = hidden; self.gateRows = gateRows
    }

    /// out (rows, ldc) += hPrev (rows, H) W_hh^T, in the gate columns `gates` of G*H only (out points at column 0).
    @inline(__always)
    public func project(_ hPrev: UnsafePointer<Float>, rows: Int, gates g: Range<Int>, into out: UnsafeMutablePointer<Float>,
                        ldc: Int) {
        if transposed {
            BLAS.gemm(m: rows, n: g.count, k: hidden, a: hPrev, lda: hidden, b: pointer + g.lowerBound, ldb: gateRows,
                      beta: 1, c: out + g.lowerBound, ldc: ldc)
            return
        }
        let piece = Self.piece(rows: rows, hidden: hidden)
        for first in stride(from: g.lowerBound, to: g.upperBound, by: piece) {
            let n = min(piece, g.upperBound - first)
            BLAS.gemm(transB: true, m: rows, n: n, k: hidden, a: hPrev, lda: hidden, b: pointer + first * hidden,
                      ldb: hidden, beta: 1, c: out + first, ldc: ldc)
        }
    }

    /// Gate columns per product: 32 or 16 (measured the fastest on Zen 5) when such a product is small enough to be
    /// computed unpacked, else all of them in one.
    static func piece(rows: Int, hidden: Int) -> Int {
        for n in [32, 16] where rows * n * hidden <= BLAS.unpackedProductLimit { return n }
        return Int.max / 2
    }
}
