import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// File-scope wrappers: inside `AtomicFile`, `write` would name the static method, not the system call.
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buffer, count) }
private func posixClose(_ fd: Int32) -> Int32 { close(fd) }
private func reason(_ code: Int32) -> String { String(cString: strerror(code)) }

/// Replaces files so that readers see either the old or the new contents, never a part, and so that nothing planted
/// in the directory can redirect the write. Every file Bard writes (checkpoints, fetched checkpoints, CURVE keys,
/// authorized_keys) goes through here.
///
/// - The temporary file lives in the destination's directory, since a rename is atomic only within one file system.
///   Its name is `.<destination name>.<16 random hex digits>.bard-tmp`: not guessable in advance, and recognisable
///   afterwards, so that `removeLeftovers(in:)` can delete the ones a killed run left behind.
/// - It is opened with `O_CREAT|O_EXCL|O_NOFOLLOW`: a file or symlink already at that name makes the open fail
///   (and another name is tried) instead of being followed or truncated.
/// - Its mode is exactly `permissions` (0600 unless asked): set with `fchmod`, because the umask can only remove bits.
/// - It is written in full (short writes and `EINTR` are retried), fsynced, renamed over the destination (a symlink
///   at the destination is replaced, its target is not touched), and the directory is fsynced so the rename itself
///   survives a power cut. On any failure the temporary file is removed.
public enum AtomicFile {
    /// A failed write: the destination and the system's reason apart, for callers with their own error type.
    public struct Failure: Error, CustomStringConvertible {
        public let path: String
        /// What failed and why, e.g. "cannot create a temporary file in /out: Permission denied".
        public let reason: String
        public var description: String { "cannot write \(path): \(reason)" }
    }

    static let suffix = ".bard-tmp"
    /// Random names that collide with an existing file are drawn again; this many collisions in a row mean something
    /// else is wrong (a directory full of planted names).
    static let attempts = 16

    /// Writes `bytes` to `path` atomically; a failure is a one-line `BardError.io` naming `path`.
    public static func write(_ bytes: [UInt8], to path: String, permissions: mode_t = 0o600) throws {
        do { try replace(bytes, at: path, permissions: permissions) } catch { throw BardError.io("\(error)") }
    }

    /// `write`, throwing `Failure` (so that the CURVE key writer can report it as a key-file error).
    public static func replace(_ bytes: [UInt8], at path: String, permissions: mode_t = 0o600) throws(Failure) {
        func fail(_ what: String, _ code: Int32 = errno) -> Failure { Failure(path: path, reason: "\(what): \(reason(code))") }
        let (dir, base) = split(path)
        guard !base.isEmpty else { throw Failure(path: path, reason: "the path names a directory, not a file") }
        let (fd, temporary) = try createTemporary(in: dir, for: path, permissions: permissions).get()
        var isOpen = true, renamed = false
        defer {
            if isOpen { _ = posixClose(fd) }
            if !renamed { unlink(temporary) }
        }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { buf -> Int in
                guard let base = buf.baseAddress else { return 0 }
                return posixWrite(fd, base + offset, buf.count - offset)
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw fail("cannot write \(temporary)")
            }
            // write(2) returns 0 only for a zero-length request; guard anyway so a broken file system cannot spin us.
            guard n > 0 else { throw Failure(path: path, reason: "cannot write \(temporary): the write made no progress") }
            offset += n
        }
        guard fsync(fd) == 0 else { throw fail("cannot fsync \(temporary)") }
        isOpen = false
        // close can report a deferred write error (NFS); the data would then not be on disk.
        guard posixClose(fd) == 0 else { throw fail("cannot close \(temporary)") }
        guard rename(temporary, path) == 0 else { throw fail("cannot rename the temporary file into place") }
        renamed = true
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); _ = posixClose(dfd) }
    }

    /// Deletes the temporary files (names `.*.bard-tmp`) that a killed run left in `dir`; returns their names.
    /// Call it when a single writer starts using the directory (the trainer does, for its out dir): a write under way
    /// in another process would lose its temporary file. Directories of that name are left alone.
    @discardableResult
    public static func removeLeftovers(in dir: String) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        var removed: [String] = []
        for name in names.sorted() where isTemporaryName(name) {
            let full = (dir as NSString).appendingPathComponent(name)
            var st = stat()
            // lstat: a symlink of that name is removed itself; its target is never touched.
            guard lstat(full, &st) == 0, st.st_mode & S_IFMT != S_IFDIR else { continue }
            if unlink(full) == 0 { removed.append(name) }
        }
        return removed
    }

    /// Whether `name` has the shape of one of our temporary files.
    public static func isTemporaryName(_ name: String) -> Bool {
        name.hasPrefix(".") && name.hasSuffix(suffix) && name.count > 1 + 16 + suffix.count
    }

    /// Makes `path` a directory Bard can write into (creating it and its parents as needed unless `create` is false),
    /// or throws a one-line `BardError.io` naming it: a file in the way, a parent that cannot be created, no write
    /// permission. The write check creates and removes a temporary file, so it also catches read-only file systems,
    /// which `access(2)` misses for root.
    public static func prepareDirectory(_ path: String, create: Bool = true) throws {
        let path = path.isEmpty ? "." : path
        func fail(_ why: String) -> BardError { .io("cannot use \(path) as the output directory: \(why)") }
        var st = stat()
        if stat(path, &st) != 0 {
            guard errno == ENOENT, create else { throw fail(reason(errno)) }
            // mkdir -p, one component at a time, so the failing parent is the one named.
            var prefix = path.hasPrefix("/") ? "/" : ""
            for component in path.split(separator: "/") {
                prefix += (prefix.isEmpty || prefix.hasSuffix("/") ? "" : "/") + component
                if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                    throw fail(prefix == path ? "cannot create it: \(reason(errno))" : "cannot create \(prefix): \(reason(errno))")
                }
            }
            guard stat(path, &st) == 0 else { throw fail(reason(errno)) }
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw fail("it exists and is not a directory") }
        switch createTemporary(in: path, for: path + "/probe", permissions: 0o600) {
        case .success(let (fd, name)):
            _ = posixClose(fd)
            unlink(name)
        case .failure(let f):
            throw fail("it is not writable (\(f.reason))")
        }
    }

    /// (directory, file name) of `path`; "." when there is no directory part.
    static func split(_ path: String) -> (String, String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let dir = slash == path.startIndex ? "/" : String(path[..<slash])
        return (dir, String(path[path.index(after: slash)...]))
    }

    /// A new temporary file for `destination` in its directory `dir` (open for writing, mode `permissions`) and its
    /// path; a failure names `destination`.
    static func createTemporary(in dir: String, for destination: String, permissions: mode_t) -> Result<(Int32, String), Failure> {
        let base = split(destination).1
        // Keep the whole name within NAME_MAX (255 bytes) whatever the destination's name.
        let stem = String(decoding: base.utf8.prefix(160), as: UTF8.self)
        var lastError: Int32 = EEXIST
        for _ in 0..<attempts {
            let random = String(UInt64.random(in: .min ... .max), radix: 16)
            let name = "." + stem + "." + String(repeating: "0", count: 16 - random.count) + random + suffix
            let path = dir == "/" ? "/" + name : dir + "/" + name
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, permissions)
            if fd >= 0 {
                guard fchmod(fd, permissions) == 0 else {
                    let code = errno
                    _ = posixClose(fd); unlink(path)
                    return .failure(Failure(path: destination, reason: "cannot set the mode of \(path): \(reason(code))"))
                }
                return .success((fd, path))
            }
            lastError = errno
            if lastError == EINTR { continue }
            // EEXIST (or ELOOP for a planted symlink on some systems): that name is taken, draw another.
            guard lastError == EEXIST || lastError == ELOOP else { break }
        }
        return .failure(Failure(path: destination, reason: "cannot create a temporary file in \(dir): \(reason(lastError))"))
    }
}
