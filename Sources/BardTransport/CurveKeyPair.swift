import BardModel
import CZMQ
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// File-scope wrappers so that members named `write`/`close` cannot shadow the POSIX calls.
private func posixClose(_ fd: Int32) -> Int32 { close(fd) }

/// Z85 helpers for 32-byte CURVE keys (40 Z85 characters).
public enum Z85 {
    private static let alphabet = Set(
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#".utf8)

    /// Decodes a 40-character Z85 key to its 32 raw bytes.
    public static func decodeKey(_ z85: String, label: String) throws -> [UInt8] {
        let characters = Array(z85.utf8)
        guard characters.count == 40 else {
            throw ZMQError.invalidArgument("\(label) must be 40 Z85 characters, got \(characters.count)")
        }
        guard characters.allSatisfy({ alphabet.contains($0) }) else {
            throw ZMQError.invalidArgument("\(label) contains characters outside the Z85 alphabet")
        }
        var raw = [UInt8](repeating: 0, count: 32)
        let ok = raw.withUnsafeMutableBufferPointer { buffer in
            z85.withCString { zmq_z85_decode(buffer.baseAddress, $0) != nil }
        }
        guard ok else { throw ZMQError.invalidArgument("\(label) is not valid Z85") }
        return raw
    }

    /// Encodes 32 raw key bytes as 40 Z85 characters.
    public static func encodeKey(_ raw: [UInt8]) -> String? {
        guard raw.count == 32 else { return nil }
        var text = [CChar](repeating: 0, count: 41)
        let ok = text.withUnsafeMutableBufferPointer { out in
            raw.withUnsafeBufferPointer { zmq_z85_encode(out.baseAddress, $0.baseAddress, 32) != nil }
        }
        guard ok else { return nil }
        return String(decoding: text.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A CURVE key pair as 40-character Z85 strings.
///
/// Key file format (UTF-8 text, written with mode 0600, atomically):
/// ```
/// public=<40 Z85 chars>
/// secret=<40 Z85 chars>
/// ```
/// A public-only file (for distributing a server's or worker's public key) has just the
/// `public=` line. Blank lines and lines starting with `#` are ignored; anything else
/// (unknown fields, duplicates, bad Z85, a secret that does not match the public key)
/// is rejected with ``ZMQError/keyFile(path:reason:)``.
public struct CurveKeyPair: Sendable, Equatable {
    /// 40-character Z85 public key.
    public let publicKey: String
    /// 40-character Z85 secret key.
    public let secretKey: String

    /// Validates both keys and that `publicKey` is derived from `secretKey`.
    public init(publicKey: String, secretKey: String) throws {
        _ = try Z85.decodeKey(publicKey, label: "CURVE public key")
        _ = try Z85.decodeKey(secretKey, label: "CURVE secret key")
        guard try CurveKeyPair.derivePublicKey(fromSecret: secretKey) == publicKey else {
            throw ZMQError.invalidArgument("CURVE public key does not match the secret key")
        }
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// Generates a fresh key pair (`zmq_curve_keypair`).
    public static func generate() throws -> CurveKeyPair {
        var publicText = [CChar](repeating: 0, count: 41)
        var secretText = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&publicText, &secretText) == 0 else { throw ZMQError.last("zmq_curve_keypair") }
        let publicKey = String(decoding: publicText.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let secretKey = String(decoding: secretText.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return try CurveKeyPair(publicKey: publicKey, secretKey: secretKey)
    }

    /// The Z85 public key belonging to a Z85 secret key (`zmq_curve_public`).
    public static func derivePublicKey(fromSecret secretKey: String) throws -> String {
        _ = try Z85.decodeKey(secretKey, label: "CURVE secret key")
        var publicText = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&publicText, secretKey) == 0 else { throw ZMQError.last("zmq_curve_public") }
        return String(decoding: publicText.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: - Key files

    /// Loads a full key pair; fails on public-only files.
    public static func load(from path: String) throws -> CurveKeyPair {
        let fields = try parse(path: path)
        guard let secret = fields.secret else {
            throw ZMQError.keyFile(path: path, reason: "no secret= line (is this a public-only key file?)")
        }
        do {
            return try CurveKeyPair(publicKey: fields.publicKey, secretKey: secret)
        } catch let error as ZMQError {
            throw ZMQError.keyFile(path: path, reason: "\(error)")
        }
    }

    /// Loads the public key from a full or public-only key file.
    public static func loadPublicKey(from path: String) throws -> String {
        let fields = try parse(path: path)
        if let secret = fields.secret {
            do { _ = try CurveKeyPair(publicKey: fields.publicKey, secretKey: secret) } catch let error as ZMQError {
                throw ZMQError.keyFile(path: path, reason: "\(error)")
            }
        }
        return fields.publicKey
    }

    /// Writes `public=` and `secret=` lines atomically with mode 0600, replacing any existing file.
    public func write(to path: String) throws {
        try CurveKeyPair.atomicWrite("public=\(publicKey)\nsecret=\(secretKey)\n", to: path)
    }

    /// Writes a public-only key file (mode 0600, atomic).
    public static func writePublicKey(_ publicKey: String, to path: String) throws {
        _ = try Z85.decodeKey(publicKey, label: "CURVE public key")
        try atomicWrite("public=\(publicKey)\n", to: path)
    }

    private static let maximumFileSize = 4096

    private static func parse(path: String) throws -> (publicKey: String, secret: String?) {
        let text = try readSmallFile(path)
        var publicKey: String?
        var secret: String?
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let lineNumber = index + 1
            guard let equals = line.firstIndex(of: "=") else {
                throw ZMQError.keyFile(path: path, reason: "line \(lineNumber): expected public=<z85> or secret=<z85>")
            }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            do {
                switch name {
                case "public":
                    guard publicKey == nil else { throw ZMQError.invalidArgument("duplicate public= line") }
                    _ = try Z85.decodeKey(value, label: "public key")
                    publicKey = value
                case "secret":
                    guard secret == nil else { throw ZMQError.invalidArgument("duplicate secret= line") }
                    _ = try Z85.decodeKey(value, label: "secret key")
                    secret = value
                default:
                    throw ZMQError.invalidArgument("unknown field '\(name)'")
                }
            } catch let ZMQError.invalidArgument(reason) {
                throw ZMQError.keyFile(path: path, reason: "line \(lineNumber): \(reason)")
            }
        }
        guard let publicKey else { throw ZMQError.keyFile(path: path, reason: "no public= line") }
        return (publicKey, secret)
    }

    private static func systemError(_ path: String, _ what: String) -> ZMQError {
        let code = errno
        return .keyFile(path: path, reason: "\(what): \(ZMQError.text(code)) (errno \(code))")
    }

    private static func readSmallFile(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw systemError(path, "cannot open") }
        defer { _ = posixClose(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw systemError(path, "cannot read")
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
            guard bytes.count <= maximumFileSize else {
                throw ZMQError.keyFile(path: path, reason: "larger than \(maximumFileSize) bytes, not a key file")
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// temp file in the same directory + fsync + rename + directory fsync; mode 0600. Also writes authorized_keys.
    static func atomicWrite(_ text: String, to path: String) throws {
        // One implementation of replacing a file for the whole program (BardModel's AtomicFile: a random temporary
        // name opened O_EXCL|O_NOFOLLOW, full writes, fsync, rename, directory fsync), reported as a key-file error.
        do throws(AtomicFile.Failure) {
            try AtomicFile.replace(Array(text.utf8), at: path, permissions: 0o600)
        } catch {
            throw ZMQError.keyFile(path: path, reason: error.reason)
        }
    }
}
