/// A fixed-size, zero-initialised, contiguous Float buffer with reference semantics.
///
/// Layers work on raw pointers into these buffers (no copy-on-write, no bounds checks on the hot path);
/// the buffer owns the memory and frees it on deinit.
public final class FloatBuffer: @unchecked Sendable {
    public let count: Int
    public let pointer: UnsafeMutablePointer<Float>

    public init(count: Int) {
        precondition(count >= 0, "FloatBuffer count \(count) < 0")
        self.count = count
        // 64-byte alignment keeps BLAS and vector loads on cache-line boundaries.
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { pointer.update(from: base, count: values.count) }
        }
    }

    deinit { pointer.deallocate() }

    public subscript(i: Int) -> Float {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }

    public var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    public func zero() { pointer.update(repeating: 0, count: count) }

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

    /// Sum of squares in Double, for norms that must not lose precision over millions of terms.
    public func sumOfSquares() -> Double {
        var total = 0.0
        var i = 0
        while i < count {
            let end = min(i + 4096, count)
            var partial: Float = 0
            for j in i..<end { partial += pointer[j] * pointer[j] }
            total += Double(partial)
            i = end
        }
        return total
    }

    public var allFinite: Bool { Kernels.allFinite(pointer, count: count) }
}
