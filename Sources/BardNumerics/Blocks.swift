/// Work over a flat buffer in fixed blocks spread over threads. The blocks do not depend on the thread count, so a
/// result made of per-block parts combined in block order (a norm, say) is the same bits with 1 thread or 64.
public enum Blocks {
    /// Elements per block: 128 KiB of Floats, large enough that a thread's handover costs nothing, small enough
    /// that 8 MB of parameters make 64 blocks to share out.
    public static let size = 1 << 15

    public static func count(_ n: Int) -> Int { (n + size - 1) / size }

    public static func range(_ block: Int, of n: Int) -> Range<Int> { block * size ..< min(n, (block + 1) * size) }

    /// Runs `body(block, range)` for every block of `0..<n`, each thread taking a contiguous run of blocks
    /// (`ThreadTeam.parallel`).
    public static func forEach(_ n: Int, threads: Int, _ body: (Int, Range<Int>) -> Void) {
        let blocks = count(n)
        let t = max(1, min(threads, blocks))
        if t == 1 {
            for b in 0..<blocks { body(b, range(b, of: n)) }
            return
        }
        ThreadTeam.parallel(t) { i in
            for b in blocks * i / t ..< blocks * (i + 1) / t { body(b, range(b, of: n)) }
        }
    }

    /// The sum over blocks of `part(block, range)`, added in block order whatever the thread count.
    public static func sum(_ n: Int, threads: Int, _ part: (Int, Range<Int>) -> Double) -> Double {
        parts(n, threads: threads, part).reduce(0, +)
    }

    /// `part(block, range)` of every block, in block order. Added in that order (`reduce(0, +)`), the parts of the
    /// consecutive block-aligned slices of a buffer give the bits of `sum` over the whole buffer.
    public static func parts(_ n: Int, threads: Int, _ part: (Int, Range<Int>) -> Double) -> [Double] {
        var parts = [Double](repeating: 0, count: count(n))
        parts.withUnsafeMutableBufferPointer { p in
            guard let base = p.baseAddress else { return }
            forEach(n, threads: threads) { b, r in base[b] = part(b, r) }
        }
        return parts
    }
}

extension Range where Bound == Int {
    /// Part `i` of `n` contiguous parts of `0..<count` whose sizes differ by at most one (threads' shares of rows).
    public init(part i: Int, of n: Int, in count: Int) {
        self = count * i / n ..< count * (i + 1) / n
    }

    /// The same with every boundary inside `0..<count` a multiple of `multiple` (the strips of `StripProduct`, which
    /// two threads would otherwise both compute where their shares meet).
    public init(part i: Int, of n: Int, in count: Int, multipleOf multiple: Int) {
        let units = (count + multiple - 1) / multiple
        self = Swift.min(count, units * i / n * multiple) ..< Swift.min(count, units * (i + 1) / n * multiple)
    }
}
