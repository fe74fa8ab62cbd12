import BardModel
import BardNumerics
import Foundation

/// Memory shared by the processes of one host: the coordinator creates regions, its workers on the same host open
/// them. `PosixSharedMemory` (BardTransport) maps files of /dev/shm; `InMemorySharedMemory` serves the in-memory
/// tests of the state machines.
public protocol SharedMemory: AnyObject {
    /// This host's identity (its boot id): peers that report the same one may share memory, and opening a region
    /// then proves it (a container on the same kernel may see another /dev/shm).
    var host: String { get }
    /// A new region of `count` floats under a fresh name, readable and writable by this user only, with `token` in
    /// its header.
    func create(count: Int, token: UInt64) throws -> SharedRegion
    /// Another process's region, checked before use: this user's, not readable by others, the size of `count` floats,
    /// and `token` in its header.
    func open(_ name: String, count: Int, token: UInt64, writable: Bool) throws -> SharedRegion
    /// Removes a region's name; its memory lives until the last process that mapped it lets go.
    func remove(_ region: SharedRegion)
}

/// One mapped region: a 64-byte header (magic, token, float count, version) and the floats after it.
public final class SharedRegion: @unchecked Sendable {
    public let name: String
    public let token: UInt64
    public let count: Int
    let base: UnsafeMutableRawPointer
    /// Whatever owns the mapping (unmapped when the last region holding it goes).
    let mapping: AnyObject

    public static let headerBytes = 64
    static let magic = UInt64(littleEndian: 0x3148_5344_5241_4221)  // "!BARDSH1"

    public static func bytes(count: Int) -> Int { headerBytes + 4 * count }

    /// Wraps a mapping of `bytes(count:)` bytes; with `format`, writes a fresh header (the creator does).
    public init(name: String, base: UnsafeMutableRawPointer, count: Int, token: UInt64, mapping: AnyObject, format: Bool) {
        self.name = name; self.base = base; self.count = count; self.token = token; self.mapping = mapping
        if format {
            base.storeBytes(of: SharedRegion.magic, toByteOffset: 0, as: UInt64.self)
            base.storeBytes(of: token, toByteOffset: 8, as: UInt64.self)
            base.storeBytes(of: UInt64(count), toByteOffset: 16, as: UInt64.self)
            base.storeBytes(of: UInt64.max, toByteOffset: 24, as: UInt64.self)
        }
    }

    /// What is wrong with a region someone else made, judged by its header; nil if it is the one offered.
    public func problem() -> String? {
        guard base.load(fromByteOffset: 0, as: UInt64.self) == SharedRegion.magic else { return "not a Bard region" }
        guard base.load(fromByteOffset: 8, as: UInt64.self) == token else { return "its token is not the one offered" }
        guard base.load(fromByteOffset: 16, as: UInt64.self) == UInt64(count) else { return "it does not hold \(count) floats" }
        return nil
    }

    public var floats: UnsafeMutablePointer<Float> {
        (base + SharedRegion.headerBytes).assumingMemoryBound(to: Float.self)
    }

    /// The floats (the first `count`) as a buffer that keeps the region mapped as long as it lives (for one that outlives the region's
    /// other holders: the trainer's parameters, in a region this process made). Never keep one in the region itself:
    /// the cycle would leak the mapping.
    public func retainingBuffer(count: Int? = nil) -> FloatBuffer {
        precondition((count ?? 0) <= self.count, "retainingBuffer: \(count ?? 0) floats of a region of \(self.count)")
        return FloatBuffer(viewing: floats, count: count ?? self.count, keeping: self)
    }

    /// The version of the parameters in a parameters region (`.max`: none yet). Written after the floats. When the
    /// region is the trainer's own parameters, the floats of the next version are written (by the update) while the
    /// header still says the last: only requests of a step already over can pass a worker's check then, and their
    /// results are dropped.
    public var version: UInt64 {
        get { base.load(fromByteOffset: 24, as: UInt64.self) }
        set { base.storeBytes(of: newValue, toByteOffset: 24, as: UInt64.self) }
    }
}

/// Shared memory within one process, for tests: regions are named allocations, and `host` is what the test says.
public final class InMemorySharedMemory: SharedMemory, @unchecked Sendable {
    final class Allocation {
        let pointer: UnsafeMutableRawPointer
        init(bytes: Int) {
            pointer = .allocate(byteCount: bytes, alignment: 64)
            pointer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        }
        deinit { pointer.deallocate() }
    }
    let lock = NSLock()
    var regions: [String: (Allocation, Int)] = [:]
    var serial = 0
    public let host: String

    public init(host: String = "test-host") { self.host = host }

    /// The names of the regions that exist.
    public var names: [String] { lock.lock(); defer { lock.unlock() }; return regions.keys.sorted() }

    public func create(count: Int, token: UInt64) throws -> SharedRegion {
        lock.lock(); defer { lock.unlock() }
        serial += 1
        let name = "bard-test-\(serial)", a = Allocation(bytes: SharedRegion.bytes(count: count))
        regions[name] = (a, count)
        return SharedRegion(name: name, base: a.pointer, count: count, token: token, mapping: a, format: true)
    }

    public func open(_ name: String, count: Int, token: UInt64, writable: Bool) throws -> SharedRegion {
        lock.lock(); defer { lock.unlock() }
        guard let (a, n) = regions[name] else { throw BardError.io("no shared region \(name)") }
        guard n == count else { throw BardError.io("shared region \(name) has \(n) floats, not \(count)") }
        let region = SharedRegion(name: name, base: a.pointer, count: count, token: token, mapping: a, format: false)
        if let problem = region.problem() { throw BardError.io("shared region \(name): \(problem)") }
        return region
    }

    public func remove(_ region: SharedRegion) {
        lock.lock(); regions[region.name] = nil; lock.unlock()
    }
}
