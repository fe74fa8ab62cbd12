import BardModel
import BardNumerics

/// Which contiguous range of the flat parameter vector each coordinator shard owns (sharded coordinators, issue 11).
///
/// Slices are cut on the boundaries of `Blocks`, as equal as possible (they differ by at most one block of 32 K
/// parameters), so that each shard's part of the gradient's squared norm is made of the very blocks a single process
/// sums, and the lead, adding the shards' block parts in order, gets the same bits: clipping, and so the whole
/// update, is then exactly one process's.
public enum ParameterSlices {
    /// The slices of `parameterCount` parameters over `shards` shards, in order; throws when the model has fewer
    /// blocks than shards (a shard would own nothing).
    public static func plan(parameterCount n: Int, shards k: Int) throws -> [Range<Int>] {
        let blocks = Blocks.count(n)
        guard k >= 1, k <= blocks else {
            throw BardError.badInput("\(k) coordinator shards need a model of at least \(k) blocks of \(Blocks.size) parameters; this one has \(n) parameters (\(blocks) block\(blocks == 1 ? "" : "s")): use --shards \(max(1, blocks)) or fewer")
        }
        return (0..<k).map { i in
            min(n, blocks * i / k * Blocks.size) ..< min(n, blocks * (i + 1) / k * Blocks.size)
        }
    }
}
