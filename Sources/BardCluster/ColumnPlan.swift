import BardModel
import BardNumerics

/// Which columns each worker computes, and the slices of a window and of the carried state that go with them. (The
/// code calls a worker's columns its shard, as data-parallel training does; the coordinator shards of issue 11 own
/// slices of the parameters instead: `ParameterSlices`.)
public enum ColumnPlan {
    /// Contiguous shards, as equal as possible (they differ by at most one column), in the given order.
    public static func shards(columns: Int, workers: Int) -> [Range<Int>] {
        let n = min(workers, columns)
        return (0..<n).map { i in (columns * i / n)..<(columns * (i + 1) / n) }
    }

    /// The shards of `columns` over `peers`, in their order; peers beyond the column count get none.
    public static func assign(columns: Int, to peers: [PeerID]) -> [(peer: PeerID, columns: Range<Int>)] {
        Array(zip(peers, shards(columns: columns, workers: peers.count))).map { (peer: $0.0, columns: $0.1) }
    }

    /// (steps + 1) x shard tokens, time-major, cut out of a window of `totalColumns` columns.
    public static func tokens(_ window: UnsafePointer<Int32>, steps: Int, totalColumns: Int, shard: Range<Int>) -> [Int32] {
        var out: [Int32] = []
        out.reserveCapacity((steps + 1) * shard.count)
        for t in 0...steps { for c in shard { out.append(window[t * totalColumns + c]) } }
        return out
    }

    /// The shard's rows of a (layers, columns, hidden) state buffer; empty for an empty buffer (no cell state).
    public static func rows(_ buffer: FloatBuffer, state: RecurrentState, shard: Range<Int>) -> [Float] {
        guard buffer.count > 0 else { return [] }
        var out: [Float] = []
        out.reserveCapacity(state.layers * shard.count * state.hidden)
        for l in 0..<state.layers {
            let start = buffer.pointer + (l * state.columns + shard.lowerBound) * state.hidden
            out.append(contentsOf: UnsafeBufferPointer(start: start, count: shard.count * state.hidden))
        }
        return out
    }

    /// Writes a shard's rows back into a (layers, columns, hidden) state buffer.
    public static func write(_ rows: [Float], into buffer: FloatBuffer, state: RecurrentState, shard: Range<Int>) {
        guard buffer.count > 0 else { return }
        let n = shard.count * state.hidden
        rows.withUnsafeBufferPointer { src in
            guard let s = src.baseAddress else { return }
            for l in 0..<state.layers {
                (buffer.pointer + (l * state.columns + shard.lowerBound) * state.hidden).update(from: s + l * n, count: n)
            }
        }
    }
}
