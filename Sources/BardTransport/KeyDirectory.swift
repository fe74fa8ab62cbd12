import Foundation

/// CURVE settings of the coordinator's socket: its key pair and the client public keys its ZAP handler admits.
public struct ServerSecurity: Sendable {
    public let keyPair: CurveKeyPair
    public let allowedClients: [String]
    public init(keyPair: CurveKeyPair, allowedClients: [String]) { self.keyPair = keyPair; self.allowedClients = allowedClients }
}

/// CURVE settings of a worker's or fetch client's socket: its key pair and the coordinator's public key.
public struct ClientSecurity: Sendable {
    public let keyPair: CurveKeyPair
    public let serverPublicKey: String
    public init(keyPair: CurveKeyPair, serverPublicKey: String) { self.keyPair = keyPair; self.serverPublicKey = serverPublicKey }
}

/// The key directory `bard keys generate` writes and `--keys DIR` reads:
///
///     coordinator.key   the coordinator's pair        (coordinator host only)
///     coordinator.pub   its public key                (every client host)
///     client.key        a client pair for workers and fetch (client hosts)
///     client.pub        its public key
///     NAME.key/.pub     further client pairs (`--client NAME`)
///     authorized_keys   client public keys the coordinator admits, one per line (`KEY [name]`; `#` comments)
///
/// Every file is written with mode 0600.
public enum KeyDirectory {
    public static let coordinatorKey = "coordinator.key"
    public static let coordinatorPublic = "coordinator.pub"
    public static let clientKey = "client.key"
    public static let authorizedKeys = "authorized_keys"

    /// Creates a new directory's coordinator pair and default client pair, or (with `client`) adds a named client
    /// pair to an existing one. Returns the files written. Never overwrites a key.
    @discardableResult
    public static func generate(in dir: String, client: String? = nil) throws -> [String] {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        var written: [String] = []
        func newPair(_ name: String) throws -> CurveKeyPair {
            let path = dir + "/" + name + ".key"
            guard !FileManager.default.fileExists(atPath: path) else {
                throw ZMQError.keyFile(path: path, reason: "already exists; keys are never overwritten")
            }
            let pair = try CurveKeyPair.generate()
            try pair.write(to: path)
            try CurveKeyPair.writePublicKey(pair.publicKey, to: dir + "/" + name + ".pub")
            written += [path, dir + "/" + name + ".pub"]
            return pair
        }
        let clientName: String
        if let client {
            guard !client.isEmpty, client.count <= 64,
                  client.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }),
                  client != "coordinator" else {
                throw ZMQError.invalidArgument("--client must be 1-64 letters, digits, '-' or '_' (and not 'coordinator')")
            }
            clientName = client
        } else {
            _ = try newPair("coordinator")
            clientName = "client"
        }
        let pair = try newPair(clientName)
        try appendAuthorized(pair.publicKey, name: clientName, in: dir)
        written.append(dir + "/" + authorizedKeys)
        return written
    }

    static func appendAuthorized(_ key: String, name: String, in dir: String) throws {
        let path = dir + "/" + authorizedKeys
        let old = FileManager.default.fileExists(atPath: path) ? try String(contentsOfFile: path, encoding: .utf8) : ""
        try CurveKeyPair.atomicWrite(old + (old.isEmpty || old.hasSuffix("\n") ? "" : "\n") + "\(key) \(name)\n", to: path)
    }

    /// The coordinator's side: `coordinator.key` and `authorized_keys`.
    public static func serverSecurity(dir: String) throws -> ServerSecurity {
        let pair = try CurveKeyPair.load(from: dir + "/" + coordinatorKey)
        let path = dir + "/" + authorizedKeys
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ZMQError.keyFile(path: path, reason: "missing or unreadable (the client public keys to admit, one per line)")
        }
        var keys: [String] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let key = String(line.prefix { $0 != " " && $0 != "\t" })
            do { _ = try Z85.decodeKey(key, label: "public key") } catch {
                throw ZMQError.keyFile(path: path, reason: "line \(n + 1) is not a 40-character Z85 public key")
            }
            keys.append(key)
        }
        guard !keys.isEmpty else { throw ZMQError.keyFile(path: path, reason: "lists no client keys, so nobody could join") }
        return ServerSecurity(keyPair: pair, allowedClients: keys)
    }

    /// A client's side: `client.key` (or `keyFile`) and `coordinator.pub`.
    public static func clientSecurity(dir: String, keyFile: String? = nil) throws -> ClientSecurity {
        let pair = try CurveKeyPair.load(from: keyFile ?? dir + "/" + clientKey)
        let server = try CurveKeyPair.loadPublicKey(from: dir + "/" + coordinatorPublic)
        return ClientSecurity(keyPair: pair, serverPublicKey: server)
    }

    /// Whether a ZeroMQ endpoint can only be reached from this machine (so plaintext is acceptable).
    public static func isLocal(endpoint: String) -> Bool {
        if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
        guard endpoint.hasPrefix("tcp://") else { return false }
        var host = String(endpoint.dropFirst(6))
        if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if let semicolon = host.lastIndex(of: ";") { host = String(host[host.index(after: semicolon)...]) }
        return host == "localhost" || host == "::1" || host.hasPrefix("127.") || host == "lo"
    }
}
