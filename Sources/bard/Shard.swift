import ArgumentParser
import BardCluster
import BardModel
import BardTraining
import BardTransport
import Foundation

/// `bard shard`: one coordinator shard of a lead started with `bard coordinator --shards K`.
struct ShardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shard",
        abstract: "Hold a slice of the parameters and optimiser state for a lead started with --shards, and make its update.")
    @Option(help: "The lead's endpoint (bard coordinator --shards K --bind ...).") var connect: String = "tcp://127.0.0.1:5555"
    @Option(help: "ZeroMQ endpoint to bind for the workers (tcp://ADDR:PORT).") var bind: String
    @Option(help: "The endpoint workers connect to, when --bind is a wildcard (default: the bound endpoint).") var advertise: String?
    @Option(help: "Key directory: client.key (a key with the shard role in the lead's authorized_keys) and coordinator.pub to join the lead; authorized_keys to admit workers. The worker socket's CURVE key pair is made at start and announced through the lead.")
    var keys: String?
    @Option(name: .customLong("key-file"), help: "This shard's key pair, instead of client.key in --keys.") var keyFile: String?
    @Flag(help: "Allow binding a non-loopback address without --keys (plaintext, anyone can connect).") var insecure = false
    @Option(help: "This shard's name (default host-pid).") var name: String?
    @Option(help: "Threads of the sum and the update.") var threads: Int = 1
    @Option(name: .customLong("max-parameters"), help: "Refuse a slice of a model with more parameters than this.") var maxParameters: Int = WorkerCore.defaultMaxParameters

    func validate() throws {
        if let name, !Membership.isValidName(name) { throw ValidationError("--name must be 1-64 printable ASCII characters without spaces") }
        guard threads >= 1 && threads <= 256 else { throw ValidationError("--threads must be 1...256") }
        guard maxParameters >= 1 else { throw ValidationError("--max-parameters must be >= 1") }
        if keys == nil && !insecure && !KeyDirectory.isLocal(endpoint: bind) {
            throw ValidationError("--bind \(bind) is reachable from other hosts: give --keys DIR or, on a trusted network, --insecure")
        }
        if keyFile != nil && keys == nil { throw ValidationError("--key-file needs --keys (for coordinator.pub and authorized_keys)") }
    }

    func run() throws {
        let identity = name ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())"
        let client = try keys.map { dir in try loadKeys { try KeyDirectory.clientSecurity(dir: dir, keyFile: keyFile) } }
        // The workers' side: the admitted keys of the lead's directory, and a key pair made now (the lead hands its
        // public half to the workers over their authenticated link, and they check it in the handshake).
        let server = try keys.map { dir -> ServerSecurity in
            let admitted = try loadKeys { try KeyDirectory.authorizedClients(dir: dir) }
            return ServerSecurity(keyPair: try CurveKeyPair.generate(), clients: admitted.clients, warnings: admitted.warnings)
        }
        let context = try ZMQContext()
        let workers: ZMQServerTransport
        do {
            // Handover: a worker reconnecting (a restarted shard on the same port, a new map) keeps its routing id,
            // which the lead's plan names; any admitted worker key could claim another's id, as it could send it
            // wrong gradients anyway.
            workers = try ZMQServerTransport(context: context, bind: bind, security: server, maxFrameBytes: 4 * maxParameters + 4096,
                                             handover: true)
        } catch {
            throw BardError.io("cannot bind \(bind): \(error)")
        }
        let endpoint = advertise ?? workers.endpoint
        guard ShardEndpoint.isValid(endpoint: endpoint), !endpoint.contains("0.0.0.0"), !endpoint.contains("*") else {
            throw BardError.badInput("workers cannot connect to \(endpoint): give --advertise tcp://HOST:PORT")
        }
        let routing = identity + "." + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        let lead = try ZMQClientTransport(context: context, connect: connect, identity: routing, security: client,
                                          maxFrameBytes: 4 * maxParameters + 4096)
        let shard = ShardServer(lead: lead, workers: workers, name: identity, endpoint: endpoint,
                                serverKey: server?.keyPair.publicKey ?? "", threads: threads, log: stderrLog("shard \(identity): "))
        // An idle shard sleeps until either socket has a message: no polling to take time from workers on its host.
        shard.waitForInput = { _ = try BardTransport.waitForInput([lead, workers], timeout: $0) }
        say("shard \(identity) serving workers on \(endpoint)\(server == nil ? " (plaintext)" : " (CURVE)"); joining the lead at \(connect)")
        installStopHandlers()
        defer { lead.close(); workers.close() }
        do { try shard.run() } catch is StopTraining {
            say("shard \(identity): stopped by signal after \(shard.stepsApplied) updates")
            throw ExitCode(130)
        }
        say("shard \(identity): training is over after \(shard.stepsApplied) updates")
    }
}
