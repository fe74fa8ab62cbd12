import BardCluster
import Foundation

/// CURVE settings of the coordinator's socket: its key pair and the client public keys its ZAP handler admits,
/// each with the role `authorized_keys` grants it.
public struct ServerSecurity: Sendable {
    /// The coordinator's key pair.
    public let keyPair: CurveKeyPair
    /// Admitted client public keys (Z85) and their roles.
    public let clients: [String: PeerRole]
    /// One-line notes for the operator from loading `authorized_keys` (e.g. lines without a role); empty if none.
    public let warnings: [String]
    /// The admitted client keys, sorted.
    public var allowedClients: [String] { clients.keys.sorted() }

    /// Admits `clients` with their roles.
    public init(keyPair: CurveKeyPair, clients: [String: PeerRole], warnings: [String] = []) {
        self.keyPair = keyPair; self.clients = clients; self.warnings = warnings
    }

    /// Admits every key in `allowedClients` as a worker (as before roles existed).
    public init(keyPair: CurveKeyPair, allowedClients: [String]) {
        self.init(keyPair: keyPair, clients: Dictionary(allowedClients.map { ($0, PeerRole.worker) }) { first, _ in first })
    }
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
///     NAME.key/.pub     further client pairs (`--client NAME [--role ROLE]`)
///     authorized_keys   client public keys the coordinator admits, one per line: `KEY ROLE [name]`, ROLE one of
///                       worker, fetch, shard (`PeerRole`); `#` starts a comment line
///
/// Lines written before roles existed (`KEY [name]`) still load, as workers, with a warning; if such a name is itself
/// a role (a client once named `fetch`) it is read as that role, which grants no more than a worker has.
/// Every file is written with mode 0600.
public enum KeyDirectory {
    public static let coordinatorKey = "coordinator.key"
    public static let coordinatorPublic = "coordinator.pub"
    public static let clientKey = "client.key"
    public static let authorizedKeys = "authorized_keys"

    /// Creates a new directory's coordinator pair and default client pair (a worker), or (with `client`) adds a
    /// named client pair with `role` to an existing one. Returns the files written. Never overwrites a key.
    @discardableResult
    public static func generate(in dir: String, client: String? = nil, role: PeerRole = .worker) throws -> [String] {
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
            guard role == .worker else {
                throw ZMQError.invalidArgument("the default client pair is a worker: give --client NAME with --role \(role.rawValue)")
            }
            _ = try newPair("coordinator")
            clientName = "client"
        }
        let pair = try newPair(clientName)
        try appendAuthorized(pair.publicKey, role: role, name: clientName, in: dir)
        written.append(dir + "/" + authorizedKeys)
        return written
    }

    static func appendAuthorized(_ key: String, role: PeerRole, name: String, in dir: String) throws {
        let path = dir + "/" + authorizedKeys
        let old = FileManager.default.fileExists(atPath: path) ? try String(contentsOfFile: path, encoding: .utf8) : ""
        try CurveKeyPair.atomicWrite(old + (old.isEmpty || old.hasSuffix("\n") ? "" : "\n") + "\(key) \(role.rawValue) \(name)\n", to: path)
    }

    /// The role names, for messages: "worker, fetch or shard".
    static var roleNames: String {
        let names = PeerRole.allCases.map(\.rawValue)
        return names.dropLast().joined(separator: ", ") + (names.count > 1 ? " or " : "") + (names.last ?? "")
    }

    /// Parses `authorized_keys` text: each key with its role, and warnings for the operator. `path` names the file
    /// in errors, each one line naming the line.
    public static func parseAuthorizedKeys(_ text: String, path: String) throws -> (clients: [String: PeerRole], warnings: [String]) {
        var clients: [String: PeerRole] = [:]
        var roleless: [Int] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            let key = fields[0]
            do { _ = try Z85.decodeKey(key, label: "public key") } catch {
                throw ZMQError.keyFile(path: path, reason: "line \(n + 1) is not a 40-character Z85 public key")
            }
            let role: PeerRole
            if fields.count >= 3 {
                // KEY ROLE NAME...: the second field must be a role.
                guard let r = PeerRole(rawValue: fields[1]) else {
                    throw ZMQError.keyFile(path: path, reason: "line \(n + 1): unknown role '\(fields[1])' (expected \(roleNames))")
                }
                role = r
            } else if fields.count == 2, let r = PeerRole(rawValue: fields[1]) {
                role = r  // KEY ROLE
            } else {
                // KEY or KEY NAME, as written before roles: a worker, as then.
                role = .worker
                roleless.append(n + 1)
            }
            if let earlier = clients[key], earlier != role {
                throw ZMQError.keyFile(path: path, reason: "line \(n + 1) lists a key again with another role (\(earlier.rawValue), now \(role.rawValue))")
            }
            clients[key] = role
        }
        var warnings: [String] = []
        if !roleless.isEmpty {
            let lines = roleless.prefix(10).map(String.init).joined(separator: ", ") + (roleless.count > 10 ? ", ..." : "")
            warnings.append("\(path): \(roleless.count) key(s) without a role (line\(roleless.count == 1 ? "" : "s") \(lines)) admitted as worker; write each as KEY ROLE [name] with ROLE \(roleNames)")
        }
        return (clients, warnings)
    }

    /// The coordinator's side: `coordinator.key` and `authorized_keys` (its `warnings` are for the operator's log).
    public static func serverSecurity(dir: String) throws -> ServerSecurity {
        let pair = try CurveKeyPair.load(from: dir + "/" + coordinatorKey)
        let (clients, warnings) = try authorizedClients(dir: dir)
        return ServerSecurity(keyPair: pair, clients: clients, warnings: warnings)
    }

    /// The client keys `authorized_keys` admits, with their roles (a coordinator shard admits workers by them).
    public static func authorizedClients(dir: String) throws -> (clients: [String: PeerRole], warnings: [String]) {
        let path = dir + "/" + authorizedKeys
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ZMQError.keyFile(path: path, reason: "missing or unreadable (the client public keys to admit, one per line)")
        }
        let (clients, warnings) = try parseAuthorizedKeys(text, path: path)
        guard !clients.isEmpty else { throw ZMQError.keyFile(path: path, reason: "lists no client keys, so nobody could join") }
        return (clients, warnings)
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
