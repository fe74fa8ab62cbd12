/// The chapter's column layout for truncated BPTT (the same as pytorch/examples' `batchify`):
///
///     tokens: a b c d e f g h i j k l      (B = 3 columns, rows = 12 / 3 = 4)
///
///              col 0  col 1  col 2
///     row 0      a      e      i          each column is one contiguous stream of the text,
///     row 1      b      f      j          read top to bottom across an epoch;
///     row 2      c      g      k          inputs are rows 0..rows-2, targets rows 1..rows-1,
///     row 3      d      h      l          windows of bptt rows carry hidden state into the next.
///
/// Training uses the chapter's `(rows - 1) / bptt` full windows; evaluation adds the last partial window so every
/// target is counted exactly once.
public struct ColumnStreams: Sendable {
    public let columns: Int
    public let rows: Int
    private let tokens: [Int32]

    public init<C: Collection>(_ tokens: C, columns: Int) where C.Element == Int32 {
        precondition(columns >= 1, "ColumnStreams: columns \(columns) < 1")
        self.columns = columns
        self.rows = tokens.count / columns
        self.tokens = Array(tokens.prefix(rows * columns))
    }

    /// Token at (row, column).
    @inline(__always) public func token(row: Int, column: Int) -> Int32 { tokens[column * rows + row] }

    /// Number of full windows of `bptt` input rows (the chapter's n_bptt).
    public func trainingWindows(bptt: Int) -> Int { rows < 1 ? 0 : (rows - 1) / bptt }

    /// Targets available in total (every row after the first, in every column).
    public var targetCount: Int { max(0, rows - 1) * columns }

    /// Copies rows start ... start+steps (steps + 1 rows: inputs and the targets one row later), time-major,
    /// all columns, into `out` (capacity (steps + 1) * columns).
    public func window(startRow: Int, steps: Int, into out: UnsafeMutablePointer<Int32>) {
        precondition(startRow + steps < rows, "window \(startRow)+\(steps) past \(rows) rows")
        tokens.withUnsafeBufferPointer { t in
            for r in 0...steps {
                for c in 0..<columns { out[r * columns + c] = t[c * rows + startRow + r] }
            }
        }
    }

    public func window(startRow: Int, steps: Int) -> [Int32] {
        var out = [Int32](repeating: 0, count: (steps + 1) * columns)
        out.withUnsafeMutableBufferPointer { if let p = $0.baseAddress { window(startRow: startRow, steps: steps, into: p) } }
        return out
    }
}
