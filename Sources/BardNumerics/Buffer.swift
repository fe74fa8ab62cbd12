/// A fixed-size, zero-initialised, contiguous Float buffer with reference semantics.
///
/// Layers work on raw pointers into these buffers (no copy-on-write, no bounds checks on the hot path);
/// the buffer owns the memory and frees it on deinit.
public final class FloatBuffer: @unchecked Sendable {
    public let count: Int
    public let pointer: UnsafeMutablePointer<Float>
    /// False for a view of memory someone else owns (a shared-memory region): not freed here.
    let owned: Bool
    /// What keeps a view's memory alive, when the view must outlive everything else that holds it.
    let keeper: AnyObject?

    public init(count: Int) {
        precondition(count >= 0, "FloatBuffer count \(count) < 0")
        self.count = count
        // 64-byte alignment keeps BLAS and vector loads on cache-line boundaries.
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
        owned = true; keeper = nil
    }

    /// A view of `count` floats at `pointer`, which must outlive the buffer (a mapped shared-memory region) unless
    /// `keeper`, held as long as the view, keeps it.
    public init(viewing pointer: UnsafeMutablePointer<Float>, count: Int, keeping keeper: AnyObject? = nil) {
        precondition(count >= 0, "FloatBuffer count \(count) < 0")
        self.count = count; self.pointer = pointer; owned = false; self.keeper = keeper
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { pointer.update(from: base, count: values.count) }
        }
    }

    deinit { if owned { pointer.deallocate() } }

    public subscript(i: Int) -> Float {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }

    public var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    public func zero() { pointer.update(repeating: 0, count: count) }

    /// zero() spread over threads by blocks.
    public func zero(threads: Int) {
        Blocks.forEach(count, threads: threads) { _, r in (pointer + r.lowerBound).update(repeating: 0, count: r.count) }
    }

    public func copy(from other: FloatBuffer) {
        precondition(other.count == count, "copy: \(other.count) != \(count)")
        pointer.update(from: other.pointer, count: count)
    }

    public func copy() -> FloatBuffer {
        let b = FloatBuffer(count: count)
        b.copy(from: self)
        return b
    }

    /// self += other
    public func add(_ other: FloatBuffer) {
        precondition(other.count == count, "add: \(other.count) != \(count)")
        for i in 0..<count { pointer[i] += other.pointer[i] }
    }

    public func scale(by s: Float) {
        for i in 0..<count { pointer[i] *= s }
    }

    /// Sum of squares in Double, for norms that must neither lose precision over millions of terms nor overflow:
    /// each value is widened before it is squared, since a Float square or partial sum is infinite above 1.8e19.
    /// Four accumulators, so the additions do not wait on each other (a strict Double sum does not vectorise).
    public func sumOfSquares() -> Double {
        var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
        var i = 0
        while i + 4 <= count {
            let a = Double(pointer[i]), b = Double(pointer[i + 1]), c = Double(pointer[i + 2]), d = Double(pointer[i + 3])
            s0 += a * a; s1 += b * b; s2 += c * c; s3 += d * d
            i += 4
        }
        while i < count { let a = Double(pointer[i]); s0 += a * a; i += 1 }
        return (s0 + s1) + (s2 + s3)
    }

    public var allFinite: Bool { Kernels.allFinite(pointer, count: count) }
}
