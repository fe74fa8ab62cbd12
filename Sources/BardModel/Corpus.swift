import Foundation

/// The characters of a corpus (Unicode scalars), sorted by scalar value so ids never depend on hashing order.
public struct Vocabulary: Equatable, Sendable {
    public let scalars: [Unicode.Scalar]
    private let index: [UInt32: Int32]

    public init(scalars: [Unicode.Scalar]) {
        self.scalars = scalars
        var idx: [UInt32: Int32] = [:]
        for (i, s) in scalars.enumerated() { idx[s.value] = Int32(i) }
        index = idx
    }

    public init(text: [Unicode.Scalar]) {
        self.init(scalars: Set(text.map(\.value)).sorted().compactMap(Unicode.Scalar.init))
    }

    public var count: Int { scalars.count }
    public func id(of s: Unicode.Scalar) -> Int32? { index[s.value] }
    public func character(_ id: Int) -> String { String(Character(scalars[id])) }

    /// The vocabulary as a JSON array of one-character strings (how checkpoints store it).
    public var json: String {
        let strings = scalars.map { String(Character($0)) }
        guard let data = try? JSONSerialization.data(withJSONObject: strings), let s = String(data: data, encoding: .utf8)
        else { return "[]" }
        return s
    }

    public init(json: String) throws {
        guard let data = json.data(using: .utf8),
              let arr = try? JSONSerialization.jsonObject(with: data) as? [String] else {
            throw BardError.badCheckpoint("vocabulary metadata is not a JSON array of strings")
        }
        var scalars: [Unicode.Scalar] = []
        for s in arr {
            guard s.unicodeScalars.count == 1, let u = s.unicodeScalars.first else {
                throw BardError.badCheckpoint("vocabulary entry \(s.debugDescription) is not one character")
            }
            scalars.append(u)
        }
        self.init(scalars: scalars)
    }
}

/// A text corpus as token ids, with its vocabulary and the train/validation split.
public struct Corpus: Sendable {
    public let vocabulary: Vocabulary
    public let tokens: [Int32]
    /// sha256 of the file's bytes, hex.
    public let sha256: String

    public init(text: String) {
        let scalars = Array(text.unicodeScalars)
        let vocab = Vocabulary(text: scalars)
        self.init(scalars: scalars, vocabulary: vocab, sha256: Digest.sha256Hex(Array(text.utf8)))
    }

    init(scalars: [Unicode.Scalar], vocabulary: Vocabulary, sha256: String) {
        self.vocabulary = vocabulary
        self.tokens = scalars.map { vocabulary.id(of: $0) ?? 0 }
        self.sha256 = sha256
    }

    /// Reads a UTF-8 file. Missing, empty or invalid files are user errors with one-line messages.
    public static func load(path: String) throws -> Corpus {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw BardError.badInput("corpus \(path): no such file (run scripts/get-corpus.sh or pass --data PATH)")
        }
        if isDir.boolValue { throw BardError.badInput("corpus \(path) is a directory, not a text file") }
        guard let data = FileManager.default.contents(atPath: path) else {
            // An I/O error, not bad input: it may pass (a permission fixed, a network file system back), so a worker
            // supervisor restarts rather than gives up.
            throw BardError.io("corpus \(path): cannot read the file")
        }
        if data.isEmpty { throw BardError.badInput("corpus \(path) is empty") }
        let bytes = [UInt8](data)
        let scalars = try decodeUTF8(bytes, name: path)
        return Corpus(scalars: scalars, vocabulary: Vocabulary(text: scalars), sha256: Digest.sha256Hex(bytes))
    }

    /// Strict UTF-8 decoding that reports the byte offset of the first invalid sequence.
    public static func decodeUTF8(_ bytes: [UInt8], name: String) throws -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(bytes.count)
        var decoder = UTF8()
        var iterator = bytes.makeIterator()
        var offset = 0
        loop: while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let s):
                out.append(s)
                offset += UTF8.width(s)
            case .emptyInput:
                break loop
            case .error:
                throw BardError.badInput("corpus \(name) is not valid UTF-8 (invalid byte sequence at byte offset \(offset))")
            }
        }
        return out
    }

    /// The first (1 - valFraction) of the characters train, the rest validate (as ../shared/reference splits).
    public func split(valFraction: Double) -> (train: ArraySlice<Int32>, val: ArraySlice<Int32>) {
        let cut = Int(Double(tokens.count) * (1 - valFraction))
        return (tokens[..<cut], tokens[cut...])
    }

    /// The corpus fingerprint workers must share: sha256 over the bytes' digest and the vocabulary.
    public var fingerprint: String { Digest.sha256Hex(Array((sha256 + vocabulary.json).utf8)) }
}
