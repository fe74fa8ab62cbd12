import BardNumerics

/// W_hh as a window's step products read it, whichever this machine's OpenBLAS kernels compute faster (`Layout`):
/// - forward, W_hh^T, (H, G*H), made once per window (`RecurrentLayer.transposeHidden`), in one product per step:
///   OpenBLAS packs its operand on every call, and packs W_hh^T faster than W_hh (Haswell's kernels: 16 columns take
///   0.68 ms a step instead of 0.83 on Zen 3); or W_hh itself read transposed, in pieces of gate columns small enough
///   for kernels that compute them without packing (`BLAS.computesSmallProductsUnpacked`; on Zen 5, 32 columns take
///   0.41 ms a step against 0.54 from W_hh^T, and 16 columns 0.19 against 0.42);
/// - backward, W_hh in one product; or, with few columns on those kernels, W_hh^T read transposed in pieces of 16
///   hidden units (LSTM 512 with 16 columns: 0.26 ms a step against 0.30; with 32 a piece is too large to stay
///   unpacked, so threads sharing 32 columns then take 16 each).
/// Every way gives the same products up to the order of float additions.
public struct HiddenWeight {
    /// Which of W_hh and W_hh^T a window's steps read.
    public struct Layout: Equatable, Sendable {
        /// Whether the window makes W_hh^T at all.
        public var transposes: Bool { forwardFromTransposed || backwardPieces }
        public let forwardFromTransposed: Bool
        public let backwardPieces: Bool
        public init(forwardFromTransposed: Bool, backwardPieces: Bool) {
            self.forwardFromTransposed = forwardFromTransposed; self.backwardPieces = backwardPieces
        }

        /// The fastest on this machine's kernels for `batch` columns shared by `threads`. With backward pieces the
        /// threads split each backward step by columns, each its own share (`RecurrentLayer.backwardThroughTime`):
        /// two threads with 16 columns each take 6.2 ms for a window's 25 backward products on Zen 5, against 7.3-7.6
        /// for all 32 columns split by hidden units.
        public static func fastest(batch: Int, threads: Int = 1, gateRows: Int) -> Layout {
            let unpacked = BLAS.computesSmallProductsUnpacked, t = max(1, threads), rows = (batch + t - 1) / t
            return Layout(forwardFromTransposed: !unpacked,
                          backwardPieces: unpacked && rows * backwardPiece * gateRows <= BLAS.unpackedProductLimit)
        }

        /// Every layout, for tests: each reads W_hh some other way.
        public static let all = [false, true].flatMap { f in
            [false, true].map { Layout(forwardFromTransposed: f, backwardPieces: $0) }
        }
    }

    static let backwardPiece = 16

    /// W_hh, (G*H, H), and W_hh^T, (H, G*H), when the layout reads it.
    public let whh: UnsafePointer<Float>
    public let whhT: UnsafePointer<Float>?
    public let layout: Layout
    public let hidden: Int, gateRows: Int

    public init(whh: UnsafePointer<Float>, whhT: UnsafePointer<Float>?, layout: Layout, hidden: Int, gateRows: Int) {
        precondition(whhT != nil || !layout.transposes, "HiddenWeight: the layout reads W_hh^T, and there is none")
        self.whh = whh; self.whhT = whhT; self.layout = layout; self.hidden = hidden; self.gateRows = gateRows
    }

    /// Forward: out (rows, ldc) += hPrev (rows, H) W_hh^T, in the gate columns `gates` of G*H only (out points at
    /// column 0).
    @inline(__always)
    public func project(_ hPrev: UnsafePointer<Float>, rows: Int, gates g: Range<Int>, into out: UnsafeMutablePointer<Float>,
                        ldc: Int) {
        if layout.forwardFromTransposed, let whhT {
            BLAS.gemm(m: rows, n: g.count, k: hidden, a: hPrev, lda: hidden, b: whhT + g.lowerBound, ldb: gateRows,
                      beta: 1, c: out + g.lowerBound, ldc: ldc)
            return
        }
        let piece = Self.forwardPiece(rows: rows, hidden: hidden)
        for first in stride(from: g.lowerBound, to: g.upperBound, by: piece) {
            BLAS.gemm(transB: true, m: rows, n: min(piece, g.upperBound - first), k: hidden, a: hPrev, lda: hidden,
                      b: whh + first * hidden, ldb: hidden, beta: 1, c: out + first, ldc: ldc)
        }
    }

    /// Backward: dh (rows, H) = dGates (rows, G*H) W_hh + beta dh, in the hidden units `units` only.
    @inline(__always)
    public func projectBack(_ dGates: UnsafePointer<Float>, rows: Int, units u: Range<Int>,
                            into dh: UnsafeMutablePointer<Float>, beta: Float) {
        if layout.backwardPieces, let whhT {
            for first in stride(from: u.lowerBound, to: u.upperBound, by: Self.backwardPiece) {
                BLAS.gemm(transB: true, m: rows, n: min(Self.backwardPiece, u.upperBound - first), k: gateRows,
                          a: dGates, lda: gateRows, b: whhT + first * gateRows, ldb: gateRows, beta: beta,
                          c: dh + first, ldc: hidden)
            }
            return
        }
        BLAS.gemm(m: rows, n: u.count, k: gateRows, a: dGates, lda: gateRows, b: whh + u.lowerBound, ldb: hidden,
                  beta: beta, c: dh + u.lowerBound, ldc: hidden)
    }

    /// Gate columns per forward product: 32 or 16 (measured the fastest on Zen 5) when such a product is small
    /// enough to be computed unpacked, else all of them in one.
    static func forwardPiece(rows: Int, hidden: Int) -> Int {
        for n in [32, 16] where rows * n * hidden <= BLAS.unpackedProductLimit { return n }
        return Int.max / 2
    }
}
