import BardCluster
import BardModel
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Shared memory as files of /dev/shm (what `shm_open` does on Linux), mapped by the coordinator and its workers on
/// one host. Regions are made with mode 0600 and `O_EXCL` under `bard-UID-PID-SERIAL-RANDOM`, so the coordinator that
/// made one can be told from its name; a worker opens a region only if it is this user's, not readable by others,
/// of the expected size, and carries the token the coordinator sent.
public final class PosixSharedMemory: SharedMemory {
    public let directory: String
    public let host: String
    var serial = 0

    public init(directory: String = PosixSharedMemory.defaultDirectory) {
        self.directory = directory
        host = PosixSharedMemory.bootID()
    }

    public static let defaultDirectory = "/dev/shm"

    /// The kernel's boot id: the same for every process of this host (and of containers on it), new at every boot.
    static func bootID() -> String {
        let text = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)) ?? ""
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    final class Mapping {
        let base: UnsafeMutableRawPointer
        let bytes: Int
        init(base: UnsafeMutableRawPointer, bytes: Int) { self.base = base; self.bytes = bytes }
        deinit { munmap(base, bytes) }
    }

    static func errno(_ what: String) -> BardError { BardError.io("\(what): \(String(cString: strerror(Glibc.errno)))") }

    public func create(count: Int, token: UInt64) throws -> SharedRegion {
        serial += 1
        let name = "bard-\(getuid())-\(getpid())-\(serial)-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        let path = directory + "/" + name
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw PosixSharedMemory.errno("cannot create \(path)") }
        defer { close(fd) }
        let bytes = SharedRegion.bytes(count: count)
        // The umask cannot widen 0600, but a region must never be readable by others whatever made the directory.
        // Allocating every page now means a full /dev/shm is an error here, not a SIGBUS in the middle of a step.
        let failure = fchmod(fd, 0o600) != 0 ? Glibc.errno : posix_fallocate(fd, 0, off_t(bytes))
        guard failure == 0 else {
            Glibc.unlink(path)
            throw BardError.io("cannot make \(path) of \(bytes) bytes: \(String(cString: strerror(failure)))")
        }
        guard let base = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            let error = PosixSharedMemory.errno("cannot map \(path)")
            Glibc.unlink(path)
            throw error
        }
        return SharedRegion(name: name, base: base, count: count, token: token, mapping: Mapping(base: base, bytes: bytes), format: true)
    }

    public func open(_ name: String, count: Int, token: UInt64, writable: Bool) throws -> SharedRegion {
        guard SharedOffer.isValidName(name) else { throw BardError.io("'\(LogText.escape(name))' is not a region name") }
        let path = directory + "/" + name
        // O_NONBLOCK: a FIFO under that name must not hang the worker (it is refused as not a regular file below).
        let fd = Glibc.open(path, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw PosixSharedMemory.errno("cannot open \(path)") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw PosixSharedMemory.errno("cannot stat \(path)") }
        let bytes = SharedRegion.bytes(count: count)
        guard st.st_mode & S_IFMT == S_IFREG, st.st_uid == geteuid(), st.st_mode & 0o077 == 0 else {
            throw BardError.io("\(path) is not a region of this user with mode 0600")
        }
        guard st.st_size == off_t(bytes) else { throw BardError.io("\(path) has \(st.st_size) bytes, not \(bytes)") }
        guard let base = mmap(nil, bytes, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0), base != MAP_FAILED else {
            throw PosixSharedMemory.errno("cannot map \(path)")
        }
        let region = SharedRegion(name: name, base: base, count: count, token: token, mapping: Mapping(base: base, bytes: bytes), format: false)
        if let problem = region.problem() { throw BardError.io("\(path): \(problem)") }
        return region
    }

    public func remove(_ region: SharedRegion) {
        Glibc.unlink(directory + "/" + region.name)
    }

    /// Removes the regions this user's coordinators left when they died without closing (a SIGKILL, a crash): those
    /// whose process is gone. Returns the names removed.
    @discardableResult
    public static func removeStale(directory: String = defaultDirectory) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let mine = "bard-\(getuid())-"
        var removed: [String] = []
        for name in names where name.hasPrefix(mine) {
            let fields = name.dropFirst(mine.count).split(separator: "-")
            guard fields.count == 3, let pid = pid_t(fields[0]), pid > 0 else { continue }
            guard kill(pid, 0) != 0 && Glibc.errno == ESRCH else { continue }
            if Glibc.unlink(directory + "/" + name) == 0 { removed.append(name) }
        }
        return removed
    }
}
