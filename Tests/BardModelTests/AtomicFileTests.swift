import BardModel
import Foundation
import XCTest

/// The one helper every file Bard writes goes through: private, complete, never following a planted symlink.
final class AtomicFileTests: XCTestCase {
    var dir = ""

    override func setUp() {
        dir = NSTemporaryDirectory() + "bard-atomic-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }
    func put(_ bytes: [UInt8], _ path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

    func mode(_ path: String) -> mode_t {
        var st = stat()
        XCTAssertEqual(lstat(path, &st), 0, path)
        return st.st_mode
    }

    func testWriteIsPrivateCompleteAndLeavesNoTemporaryFile() throws {
        let path = dir + "/model.safetensors"
        let payload = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let oldMask = umask(0)  // the mode must not depend on the umask
        defer { umask(oldMask) }
        try AtomicFile.write(payload, to: path)
        XCTAssertEqual(try bytes(path), payload)
        XCTAssertEqual(mode(path) & 0o7777, 0o600)
        try AtomicFile.write([1, 2, 3], to: path)
        XCTAssertEqual(try bytes(path), [1, 2, 3])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["model.safetensors"])
    }

    /// A symlink planted at the destination is replaced by the new file; the file it pointed to is untouched.
    func testSymlinkAtDestinationIsReplacedNotFollowed() throws {
        let victim = dir + "/victim", path = dir + "/model.safetensors"
        try put(Array("keep".utf8), victim)
        XCTAssertEqual(symlink(victim, path), 0)
        try AtomicFile.write([9, 9], to: path)
        XCTAssertEqual(mode(path) & S_IFMT, S_IFREG)
        XCTAssertEqual(try bytes(path), [9, 9])
        XCTAssertEqual(try bytes(victim), Array("keep".utf8))
    }

    func testLeftoversOfAKilledRunAreRemoved() throws {
        let victim = dir + "/victim"
        try put(Array("keep".utf8), victim)
        let orphan = ".model.safetensors.0123456789abcdef.bard-tmp", link = ".x.fedcba9876543210.bard-tmp"
        let folder = ".d.0000000000000000.bard-tmp"
        try put([1], dir + "/" + orphan)
        XCTAssertEqual(symlink(victim, dir + "/" + link), 0)
        try FileManager.default.createDirectory(atPath: dir + "/" + folder, withIntermediateDirectories: false)
        try put([2], dir + "/notes.bard-tmp")
        try put([3], dir + "/.hidden")
        XCTAssertEqual(AtomicFile.removeLeftovers(in: dir), [orphan, link].sorted())
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(),
                       [".hidden", folder, "notes.bard-tmp", "victim"].sorted())
        XCTAssertEqual(try bytes(victim), Array("keep".utf8))
        XCTAssertEqual(AtomicFile.removeLeftovers(in: dir + "/missing"), [])
    }

    func testFailuresAreOneLineIOErrors() throws {
        let path = dir + "/missing/model.safetensors"
        XCTAssertThrowsError(try AtomicFile.write([1], to: path)) { error in
            guard case BardError.io(let m) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(m.contains(path) && m.contains("No such file"), m)
            XCTAssertFalse(m.contains("\n"), m)
        }
        let file = dir + "/a-file"
        try put([1], file)
        for out in [file, file + "/sub"] {
            XCTAssertThrowsError(try AtomicFile.prepareDirectory(out)) { error in
                guard case BardError.io(let m) = error else { return XCTFail("\(error)") }
                XCTAssertTrue(m.contains(out) && !m.contains("\n") && !m.contains("NSCocoaErrorDomain"), m)
            }
        }
        XCTAssertThrowsError(try AtomicFile.prepareDirectory(dir + "/later", create: false))
        try AtomicFile.prepareDirectory(dir + "/new/nested")
        XCTAssertEqual(mode(dir + "/new/nested") & S_IFMT, S_IFDIR)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/new/nested"), [], "the write probe is gone")
    }
}
