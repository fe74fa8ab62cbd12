import BardNumerics

/// W_hh as a window's step products read it, whichever this machine's OpenBLAS kernels compute faster (`Layout`):
/// - with kernels that pack their operands on every call (Haswell's, which Bard runs on Zen 3 and Zen 4), neither
///   OpenBLAS nor W_hh as it is, but W_hh in strips (`StripProduct`), made once per window, both ways (forward, W_hh^T's
///   strips; backward, W_hh's). On Zen 5 with Haswell's kernels, one thread's 16 columns against LSTM 512 take 0.25
///   ms a forward step against 0.37 through OpenBLAS (from W_hh^T, which it packed faster than W_hh), and 0.24 a
///   backward step against 0.31 (docs/scaling.md);
/// - with kernels that compute small products without packing (`BLAS.computesSmallProductsUnpacked`: AVX-512), W_hh
///   itself read transposed, in pieces of gate columns small enough for them (on Zen 5, 32 columns take 0.41 ms a step
///   against 0.54 through one product, and 16 columns 0.19 against 0.42); backward, W_hh in one product or, with few
///   columns, W_hh^T read transposed in pieces of 16 hidden units (LSTM 512 with 16 columns: 0.26 ms a step against
///   0.30; with 32 a piece is too large to stay unpacked, so threads sharing 32 columns then take 16 each). These beat
///   the strips there (AVX2 against AVX-512: `bard bench` 19,000 chars/s against 24,000 with one thread).
/// Every way gives the same products up to the order of float additions.
public struct HiddenWeight {
    /// How a window's steps read W_hh.
    public enum Layout: Equatable, Sendable {
        /// W_hh as it is: forward in pieces of gate columns (one product where a piece would not stay unpacked),
        /// backward in one product.
        case direct
        /// Forward as `direct`; backward W_hh^T in pieces of 16 hidden units, each thread its own columns.
        case backwardPieces
        /// Both ways from W_hh's strips (`StripProduct`).
        case strips

        /// Whether the window makes W_hh^T at all.
        public var transposes: Bool { self == .backwardPieces }

        /// The fastest on this machine's kernels for `batch` columns shared by `threads`. With backward pieces the
        /// threads split each backward step by columns, each its own share (`RecurrentLayer.backwardThroughTime`):
        /// two threads with 16 columns each take 6.2 ms for a window's 25 backward products on Zen 5, against 7.3-7.6
        /// for all 32 columns split by hidden units.
        public static func fastest(batch: Int, threads: Int = 1, gateRows: Int) -> Layout {
            let unpacked = BLAS.computesSmallProductsUnpacked, t = max(1, threads), rows = (batch + t - 1) / t
            guard unpacked else { return .strips }
            return rows * backwardPiece * gateRows <= BLAS.unpackedProductLimit ? .backwardPieces : .direct
        }

        /// Every layout, for tests: each reads W_hh some other way.
        public static let all: [Layout] = [.direct, .backwardPieces, .strips]
    }

    static let backwardPiece = 16

    /// W_hh, (G*H, H), and W_hh^T, (H, G*H), or W_hh's strips (`packStrips`), as the layout reads them.
    public let whh: UnsafePointer<Float>
    public let whhT: UnsafePointer<Float>?
    public let strips: UnsafePointer<Float>?
    public let layout: Layout
    public let hidden: Int, gateRows: Int

    public init(whh: UnsafePointer<Float>, whhT: UnsafePointer<Float>?, strips: UnsafePointer<Float>? = nil,
                layout: Layout, hidden: Int, gateRows: Int) {
        precondition(whhT != nil || !layout.transposes, "HiddenWeight: the layout reads W_hh^T, and there is none")
        precondition(strips != nil || layout != .strips, "HiddenWeight: the layout reads W_hh's strips, and there are none")
        self.whh = whh; self.whhT = whhT; self.strips = strips; self.layout = layout; self.hidden = hidden
        self.gateRows = gateRows
    }

    /// Floats that W_hh's strips take: the forward ones (of W_hh^T, (H, G*H)), then the backward ones (of W_hh).
    public static func stripsSize(hidden: Int, gateRows: Int) -> Int {
        StripProduct.size(k: hidden, n: gateRows) + StripProduct.size(k: gateRows, n: hidden)
    }

    /// Share `part` of `parts` of W_hh's strips into `strips` (laid out as `stripsSize` says): the forward ones, and
    /// the backward ones when `backward`. Threads may make their parts at once.
    public static func packStrips(whh: UnsafePointer<Float>, hidden: Int, gateRows: Int, into strips: UnsafeMutablePointer<Float>,
                                  part: Int, of parts: Int, backward: Bool) {
        StripProduct.pack(whh, ld: hidden, transposed: true, k: hidden, n: gateRows,
                          strips: Range(part: part, of: parts, in: StripProduct.stripCount(n: gateRows)), into: strips)
        guard backward else { return }
        StripProduct.pack(whh, ld: hidden, transposed: false, k: gateRows, n: hidden,
                          strips: Range(part: part, of: parts, in: StripProduct.stripCount(n: hidden)),
                          into: strips + StripProduct.size(k: hidden, n: gateRows))
    }

    /// Forward: out (rows, ldc) += hPrev (rows, H) W_hh^T, in the gate columns `gates` of G*H only (out points at
    /// column 0).
    @inline(__always)
    public func project(_ hPrev: UnsafePointer<Float>, rows: Int, gates g: Range<Int>, into out: UnsafeMutablePointer<Float>,
                        ldc: Int) {
        if layout == .strips, let strips {
            StripProduct.multiply(m: rows, k: hidden, a: hPrev, lda: hidden, strips: strips, columns: g, accumulate: true,
                                  c: out, ldc: ldc)
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
        if layout == .strips, let strips {
            precondition(beta == 0 || beta == 1, "HiddenWeight: strips add or overwrite (beta 1 or 0)")
            StripProduct.multiply(m: rows, k: gateRows, a: dGates, lda: gateRows,
                                  strips: strips + StripProduct.size(k: hidden, n: gateRows), columns: u,
                                  accumulate: beta == 1, c: dh, ldc: hidden)
            return
        }
        if layout == .backwardPieces, let whhT {
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
