import BardModel
import BardNumerics
import Foundation
import XCTest

/// The whole-file checksum of every safetensors file Bard writes, and the files of the previous format.
final class ChecksumTests: XCTestCase {
    var dir = ""
    var warnings: [String] = []
    var savedHandler: ((String) -> Void)?

    override func setUp() {
        dir = NSTemporaryDirectory() + "bard-checksum-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        warnings = []
        savedHandler = Safetensors.warningHandler
        Safetensors.warningHandler = { [unowned self] in self.warnings.append($0) }
    }

    override func tearDown() {
        if let savedHandler { Safetensors.warningHandler = savedHandler }
        try? FileManager.default.removeItem(atPath: dir)
    }

    func smallCheckpoint() -> ModelCheckpoint {
        var cfg = Config()
        cfg.layers = 1; cfg.embed = 3; cfg.hidden = 4
        let vocab = Vocabulary(text: Array("abc\n".unicodeScalars))
        let params = Model(config: cfg, vocabularySize: vocab.count).makeParameters(seed: 1)
        return ModelCheckpoint(config: cfg, vocabulary: vocab, params: params, step: 7, epoch: 0, valLoss: nil)
    }

    func smallState() -> TrainingState {
        TrainingState(step: 3, epoch: 0, window: 3, lr: 0.01, optimizerStep: 3, m: [1, 2], v: [3, 4], h: [0.5], c: [-0.5],
                      rng: RNG(seed: 9), chars: 72, minLoss: 2.5, elapsed: 1.25, corpusSHA256: "abc")
    }

    func bytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }
    func put(_ bytes: [UInt8], _ path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

    /// The header JSON and where the data starts.
    func header(_ file: [UInt8]) throws -> (json: [String: Any], dataStart: Int) {
        var n = 0
        for i in 0..<8 { n |= Int(file[i]) << (8 * i) }
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(file[8..<(8 + n)])) as? [String: Any])
        return (json, 8 + n)
    }

    /// A file as the previous format wrote it: the data's sha256 (or none) in the metadata, nothing over the header.
    func previousFormat(_ file: [UInt8], dataChecksum: Bool) throws -> [UInt8] {
        var (json, dataStart) = try header(file)
        var meta = try XCTUnwrap(json["__metadata__"] as? [String: String])
        meta[Safetensors.checksumKey] = nil
        if dataChecksum { meta[Safetensors.dataChecksumKey] = Digest.sha256Hex(file[dataStart...]) }
        json["__metadata__"] = meta
        var h = [UInt8](try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]))
        while (h.count + 8) % 8 != 0 { h.append(0x20) }
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt64(h.count).littleEndian) { out.append(contentsOf: $0) }
        return out + h + file[dataStart...]
    }

    func replaceOnce(_ old: String, with new: String, in file: inout [UInt8]) throws {
        let o = Array(old.utf8), n = Array(new.utf8)
        XCTAssertEqual(o.count, n.count, "an edit of the same length keeps the header length valid")
        let at = try XCTUnwrap((0...(file.count - o.count)).first { file[$0..<($0 + o.count)].elementsEqual(o) }, "\(old) not found")
        file.replaceSubrange(at..<(at + o.count), with: n)
    }

    func assertOneLineBadCheckpoint(_ expression: @autoclosure () throws -> Any, naming path: String, contains text: String,
                                    file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try expression(), file: file, line: line) { error in
            guard case BardError.badCheckpoint(let m) = error else { return XCTFail("\(error)", file: file, line: line) }
            XCTAssertTrue(m.contains(path) && m.contains(text), m, file: file, line: line)
            XCTAssertFalse(m.contains("\n"), m, file: file, line: line)
        }
    }

    /// The definition in Safetensors' doc comment, computed here by hand: sha256 of the whole file with the 64 hex
    /// digits of the value read as '0's.
    func testChecksumCoversTheWholeFileAsDocumented() throws {
        let file = Safetensors.encode([Tensor(name: "a", shape: [2], values: [1, 2])], metadata: ["k": "v"])
        let (json, _) = try header(file)
        let meta = try XCTUnwrap(json["__metadata__"] as? [String: String])
        let value = try XCTUnwrap(meta[Safetensors.checksumKey])
        XCTAssertNil(meta[Safetensors.dataChecksumKey])
        let marker = Array("\"bard.file_sha256\":\"\(value)\"".utf8)
        let at = try XCTUnwrap((0...(file.count - marker.count)).first { file[$0..<($0 + marker.count)].elementsEqual(marker) })
        var zeroed = file
        let valueStart = at + marker.count - 65
        zeroed.replaceSubrange(valueStart..<(valueStart + 64), with: [UInt8](repeating: UInt8(ascii: "0"), count: 64))
        XCTAssertEqual(Digest.sha256Hex(zeroed), value)
        XCTAssertNoThrow(try Safetensors.decode(file, name: "f"))
        XCTAssertEqual(warnings, [])
        // Metadata handed in from an older file does not carry its stale data checksum along.
        let resaved = Safetensors.encode([Tensor(name: "a", shape: [2], values: [1, 2])],
                                         metadata: [Safetensors.dataChecksumKey: String(repeating: "ab", count: 32)])
        XCTAssertNil(try Safetensors.decode(resaved, name: "f").metadata[Safetensors.dataChecksumKey])
    }

    /// Editing the learning rate in a training state used to resume silently; now the load names the file.
    func testEditedMetadataValueFailsToLoad() throws {
        let path = dir + "/training-state.safetensors"
        try smallState().save(to: path)
        XCTAssertEqual(try TrainingState.load(path: path).lr, 0.01)
        var file = try bytes(path)
        try replaceOnce("\"lr\":\"0.01\"", with: "\"lr\":\"0.09\"", in: &file)
        try put(file, path)
        assertOneLineBadCheckpoint(try TrainingState.load(path: path), naming: path, contains: "checksum mismatch")
    }

    func testEditedTensorByteFailsToLoad() throws {
        let path = dir + "/model.safetensors"
        try smallCheckpoint().save(to: path)
        XCTAssertNoThrow(try ModelCheckpoint.load(path: path))
        var file = try bytes(path)
        file[file.count - 5] ^= 0x01
        try put(file, path)
        assertOneLineBadCheckpoint(try ModelCheckpoint.load(path: path), naming: path, contains: "checksum mismatch")
        // The same edit with the checksum stamped again is a valid file: the check is the checksum, nothing else.
        XCTAssertTrue(Safetensors.seal(&file))
        XCTAssertNoThrow(try Safetensors.decode(file, name: path))
    }

    /// Files of the previous format still load, each with one warning line naming it; their data checksum is still
    /// checked.
    func testPreviousFormatLoadsWithAWarning() throws {
        let ckpt = smallCheckpoint()
        let current = ckpt.encode()
        let old = dir + "/old.safetensors", none = dir + "/none.safetensors"
        try put(try previousFormat(current, dataChecksum: true), old)
        try put(try previousFormat(current, dataChecksum: false), none)
        XCTAssertEqual(try ModelCheckpoint.load(path: old).params.array, ckpt.params.array)
        XCTAssertEqual(warnings.count, 1)
        XCTAssertTrue(warnings.allSatisfy { $0.contains(old) && $0.contains("older Bard") && !$0.contains("\n") }, "\(warnings)")
        XCTAssertEqual(try ModelCheckpoint.load(path: none).params.array, ckpt.params.array)
        XCTAssertEqual(warnings.count, 2)
        XCTAssertTrue(warnings[1].contains(none) && warnings[1].contains("no checksum"), warnings[1])
        var corrupt = try bytes(old)
        corrupt[corrupt.count - 1] ^= 0x40
        try put(corrupt, old)
        assertOneLineBadCheckpoint(try ModelCheckpoint.load(path: old), naming: old, contains: "checksum mismatch")
        // Saving it again gives the current format.
        try ModelCheckpoint.load(path: none).save(to: none)
        warnings = []
        XCTAssertNoThrow(try ModelCheckpoint.load(path: none))
        XCTAssertEqual(warnings, [])
    }

    /// A checksum field that is not where Bard puts it cannot be verified, so it is an error, not a pass.
    func testChecksumFieldMustBeAsWritten() throws {
        var file = Safetensors.encode([Tensor(name: "a", shape: [1], values: [1])], metadata: [:])
        try replaceOnce("\"bard.file_sha256\":\"", with: "\"bard.file_sha256\": ", in: &file)
        XCTAssertThrowsError(try Safetensors.decode(file, name: "f")) { XCTAssertTrue("\($0)".hasPrefix("f: "), "\($0)") }
    }
}
