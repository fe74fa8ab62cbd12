import ArgumentParser
import BardCluster
import BardMonitor
import BardModel
import BardTraining
import BardTransport
import Foundation

func stderrLog(_ prefix: String) -> (String) -> Void {
    { line in FileHandle.standardError.write(Data("\(prefix)\(line)\n".utf8)) }
}

/// Key files are user input: their errors end the command with a one-line message.
func loadKeys<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let error as ZMQError { throw BardError.badInput("\(error)") }
}

/// A client's CURVE keys, shared by `bard worker` and `bard fetch`.
struct ClientKeyFlags: ParsableArguments {
    @Option(help: "Key directory: use its client.key and trust its coordinator.pub (CURVE).") var keys: String?
    @Option(name: .customLong("key-file"), help: "This client's key pair, instead of client.key in --keys.") var keyFile: String?

    func security() throws -> ClientSecurity? {
        try keys.map { dir in try loadKeys { try KeyDirectory.clientSecurity(dir: dir, keyFile: keyFile) } }
    }

    /// The same flags for a child process.
    var arguments: [String] { (keys.map { ["--keys", $0] } ?? []) + (keyFile.map { ["--key-file", $0] } ?? []) }
}

/// `--no-shm`, shared by `bard coordinator` and `bard worker`.
struct SharedMemoryFlag: ParsableArguments {
    @Flag(name: .customLong("no-shm"), help: "Exchange parameters and gradients with workers on the same host by messages, not shared memory.")
    var off = false
    /// The host's shared memory, unless turned off.
    var memory: SharedMemory? { off ? nil : PosixSharedMemory() }
    var arguments: [String] { off ? ["--no-shm"] : [] }
}

struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Own the parameters and optimiser; shard each step's columns among workers over ZeroMQ.")
    @OptionGroup var flags: TrainingFlags
    @Option(help: "ZeroMQ endpoint to bind.") var bind: String = "tcp://127.0.0.1:5555"
    @Option(help: "Workers to wait for before the first step (default: --min-workers, else 1).") var workers: Int?
    @Option(name: .customLong("min-workers"), help: "Keep training while at least this many are alive (default: --workers).") var minWorkers: Int?
    /// Workers to wait for: --workers, or --min-workers when only that is given.
    var startWorkers: Int { workers ?? minWorkers ?? 1 }
    @OptionGroup var output: OutputFlags
    @Option(help: "After training, keep serving the final checkpoint this many seconds.") var linger: Double = 0
    @Option(name: .customLong("step-timeout"), help: "Quarantine a worker that has not answered a step in this many seconds (default: 5x the measured median step, 10 to 60 s).") var stepTimeout: Double?
    @Option(name: .customLong("max-workers"), help: "Admit at most this many workers at once.") var maxWorkers: Int = 256
    @Option(name: .customLong("heartbeat-timeout"), help: "Evict a worker not heard from (heartbeats are sent every second) for this many seconds.") var heartbeatTimeout: Double = 3
    @Flag(name: .customLong("auto-resume"), help: "Continue from the checkpoint in --out if there is one, else start afresh (for service managers that restart the coordinator).") var autoResume = false
    @Option(help: "Key directory (bard keys generate): CURVE-encrypt the socket and admit only the clients in its authorized_keys.") var keys: String?
    @Flag(help: "Allow binding a non-loopback address without --keys (plaintext, anyone can join).") var insecure = false
    @OptionGroup var sharedMemory: SharedMemoryFlag
    @OptionGroup var monitoring: MonitorFlags
    @Option(help: "Coordinator shards (bard shard) to wait for: they hold the parameters and optimiser state in slices and make the update, so this process's link carries no parameters (docs/scaling.md).") var shards: Int?

    func validate() throws {
        if let m = minWorkers, m < 1 { throw ValidationError("--min-workers must be >= 1") }
        if let shards, shards < 1 || shards > 1024 { throw ValidationError("--shards must be 1...1024") }
        guard startWorkers >= 1 else { throw ValidationError("--workers must be >= 1") }
        guard heartbeatTimeout > 0 else { throw ValidationError("--heartbeat-timeout must be > 0") }
        if autoResume && (output.resume != nil || output.initFile != nil) { throw ValidationError("--auto-resume excludes --resume and --init") }
        if keys == nil && !insecure && !KeyDirectory.isLocal(endpoint: bind) {
            throw ValidationError("--bind \(bind) is reachable from other hosts: give --keys DIR (bard keys generate --out DIR) or, on a trusted network, --insecure")
        }
        if let m = minWorkers, m < 1 || m > startWorkers { throw ValidationError("--min-workers must be 1...--workers") }
        guard linger >= 0, (stepTimeout ?? 1) > 0 else { throw ValidationError("--linger must be >= 0 and --step-timeout > 0") }
        guard maxWorkers >= startWorkers, maxWorkers <= 65536 else { throw ValidationError("--max-workers must be --workers...65536") }
    }

    func run() throws {
        let out = output.directory
        let resumeDir = output.resume ?? (autoResume && Trainer.hasCheckpoint(in: out) ? out : nil)
        var options = try flags.makeOptions(output, resume: resumeDir, defaultCheckpointEvery: 100)
        // The reduction and the optimiser step run while the workers wait: they take every core of this host,
        // unless --threads says how many.
        let hostThreads = flags.threads ?? ProcessInfo.processInfo.activeProcessorCount
        options.updateThreads = hostThreads
        let security = try keys.map { dir in try loadKeys { try KeyDirectory.serverSecurity(dir: dir) } }
        for warning in security?.warnings ?? [] { stderrLog("coordinator: warning: ")(warning) }
        let corpus = try Corpus.load(path: options.dataPath)
        // From here a signal only asks the run to stop, so every exit goes through the defers below (which remove the
        // shared-memory regions made next).
        installStopHandlers()
        // Workers on this host read the parameters from, and write their gradients to, shared memory; the trainer's
        // parameters live in the shared region itself, so the update writes what they read. What a killed
        // coordinator of this user left behind goes first.
        let stale = PosixSharedMemory.removeStale()
        if !stale.isEmpty { say("removed \(stale.count) shared-memory region(s) left by a coordinator that is gone") }
        var exchange: SharedExchange?
        defer { exchange?.close() }
        let trainer = try Trainer(options: options, corpus: corpus, log: say, parameterStorage: { model in
            guard let memory = sharedMemory.memory, shards == nil else { return nil }
            do {
                exchange = try SharedExchange(memory: memory, model: model, log: stderrLog("coordinator: "))
            } catch {
                say("no shared memory (\(error)); workers on this host get messages")
            }
            return exchange?.parameterStorage
        })
        let context = try ZMQContext()
        let server: ZMQServerTransport
        // Denials are logged here (they come on the authentication thread), at most one line in 10 s.
        let denials = DenialLog(log: stderrLog("coordinator: "))
        do {
            // No legitimate frame is larger than a gradient of this model.
            server = try ZMQServerTransport(context: context, bind: bind, security: security,
                                            maxFrameBytes: 4 * trainer.model.parameterCount + 4096,
                                            onDenial: { denials.record($0) })
        } catch {
            throw BardError.io("cannot bind \(bind): \(error)")
        }
        let coordinator = Coordinator(transport: server, model: trainer.model, fingerprint: corpus.fingerprint,
                                      minWorkers: minWorkers ?? startWorkers, log: stderrLog("coordinator: "))
        coordinator.deadline.override = stepTimeout
        coordinator.hostThreads = hostThreads
        coordinator.membership.policy.heartbeatTimeout = heartbeatTimeout
        coordinator.membership.policy.maxWorkers = maxWorkers
        if let shards {
            // A model with fewer blocks than shards is a one-line error now, not after the shards joined.
            _ = try ParameterSlices.plan(parameterCount: trainer.model.parameterCount, shards: shards)
            coordinator.useShards(shards)
        }
        coordinator.shared = exchange
        let monitor = try monitoring.start(trainer: trainer, title: "bard coordinator: " + options.outDir, workers: {
            coordinator.workerStatus.map {
                WorkerRow(name: $0.name, columns: $0.columns.map { "\($0.lowerBound)..<\($0.upperBound)" } ?? "-", steps: $0.steps,
                          secondsSinceHeard: $0.secondsSinceHeard)
            }
        })
        defer { monitor?.stop() }
        coordinator.checkpoints.path = trainer.modelPath
        say("coordinator listening on \(server.endpoint)\(security == nil ? " (plaintext)" : " (CURVE, \(security!.allowedClients.count) client key(s) admitted)"); waiting for \(startWorkers) worker(s)")
        // Only the end of the run tells the workers `done`. A stop (a signal, `systemctl restart`) or a failure says
        // nothing: the workers keep reconnecting until a coordinator is back (or their idle timeout passes: exit 75,
        // which their supervisor restarts).
        defer { server.close() }
        if trainer.step >= trainer.totalSteps {
            // A service manager restarted a finished run: serve its checkpoint instead of waiting for workers.
            say("the run in \(out) is complete (step \(trainer.step) of \(trainer.totalSteps)); serving its final checkpoint")
            try coordinator.finish(linger: linger)
            return
        }
        do {
            if let shards {
                say("waiting for \(shards) coordinator shard(s) (bard shard --connect \(server.endpoint) --bind tcp://ADDR:PORT)")
                try coordinator.waitForShards()
            }
            try coordinator.waitForWorkers(startWorkers)
        } catch is StopTraining {
            say("stopped by signal before the first step; the workers wait for the next coordinator")
            throw ExitCode(130)
        }
        let result = try trainer.run(computer: coordinator, remote: shards == nil ? nil : coordinator)
        if stopRequested != 0 {
            say("stopped by signal at step \(result.step); the workers wait for the next coordinator (--resume \(out))")
            throw ExitCode(130)
        }
        say(String(format: "done: step %d, train loss %.4f, val loss %@; checkpoint %@; %d evictions, %d rejected messages",
                   result.step, result.trainLoss, result.valLoss.map { String(format: "%.4f", $0) } ?? "n/a",
                   trainer.modelPath, coordinator.evictions, coordinator.rejected))
        try coordinator.finish(linger: linger)
    }
}

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker", abstract: "Compute gradients for the coordinator's shards; --count N supervises N processes.")
    @Option(help: "Coordinator endpoint.") var connect: String = "tcp://127.0.0.1:5555"
    @Option(help: "Worker processes to start and supervise on this host (restarted when they crash).") var count: Int?
    @Option(help: "Threads per worker process.") var threads: Int = 1
    @Option(help: "The corpus, if this host has it: its fingerprint is checked against the coordinator's.") var data: String?
    @Option(help: "This worker's name (routing identity); default host-pid.") var name: String?
    @Option(name: .customLong("idle-timeout"), help: "Give up after this many seconds without a word from the coordinator.") var idleTimeout: Double = 120
    @OptionGroup var clientKeys: ClientKeyFlags
    @OptionGroup var sharedMemory: SharedMemoryFlag
    @Option(name: .customLong("max-parameters"), help: "Refuse a coordinator's model with more parameters than this (checked before allocating).") var maxParameters: Int = WorkerCore.defaultMaxParameters

    func validate() throws {
        if let count, count < 1 || count > 256 { throw ValidationError("--count must be 1...256") }
        guard maxParameters >= 1 else { throw ValidationError("--max-parameters must be >= 1") }
        if let name, !Membership.isValidName(name) { throw ValidationError("--name must be 1-64 printable ASCII characters without spaces") }
        guard idleTimeout > 0 else { throw ValidationError("--idle-timeout must be > 0") }
        guard threads >= 1 && threads <= 256 else { throw ValidationError("--threads must be 1...256") }
    }

    func run() throws {
        if let count { return try supervise(count) }
        let host = ProcessInfo.processInfo.hostName
        let identity = name ?? "\(host)-\(getpid())"
        let fingerprint = try data.map { try Corpus.load(path: $0).fingerprint } ?? ""
        let security = try clientKeys.security()
        let context = try ZMQContext()
        // The routing identity is the name and a random suffix, unique per process: a restarted worker (or a thief
        // of its name) gets a connection of its own, and the coordinator decides by name and key who is who.
        let routing = identity + "." + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        // Before the welcome, no frame is legitimately larger than the parameters of the largest model we accept.
        let client = try ZMQClientTransport(context: context, connect: connect, identity: routing, security: security,
                                            maxFrameBytes: 4 * maxParameters + 4096)
        let worker = WorkerCore(transport: client, name: identity, fingerprint: fingerprint, threads: threads,
                                maxParameters: maxParameters, sharedMemory: sharedMemory.memory,
                                log: stderrLog("worker \(identity): "))
        worker.idleTimeout = idleTimeout
        // Coordinator shards are reached with the same client key, and must prove the server key the lead announced.
        worker.shardConnector = { shard in
            let shardSecurity: ClientSecurity?
            switch (security, shard.serverKey.isEmpty) {
            case (nil, true): shardSecurity = nil
            case (let s?, false): shardSecurity = ClientSecurity(keyPair: s.keyPair, serverPublicKey: shard.serverKey)
            case (nil, false): throw BardError.badInput("the coordinator shards use CURVE: give this worker --keys")
            case (.some, true): throw BardError.badInput("the lead announced a plaintext coordinator shard to a worker with --keys")
            }
            return try ZMQClientTransport(context: context, connect: shard.endpoint, identity: routing, security: shardSecurity,
                                          maxFrameBytes: 4 * maxParameters + 4096)
        }
        installStopHandlers()
        do { try worker.run() } catch let stop as WorkerStop {
            client.close()
            FileHandle.standardError.write(Data("worker \(identity): \(stop)\n".utf8))
            switch stop {
            case .signalled: throw ExitCode(130)
            case .coordinatorSilent: throw ExitCode(WorkerCommand.coordinatorGone)
            case .refused: throw ExitCode(BardError.refusedExitCode)
            }
        }
        client.close()
    }

    /// Exit status of a worker whose coordinator went silent: "restart me" (the supervisor, systemd units and the
    /// Kubernetes Job start it again; it does not count as a crash).
    static let coordinatorGone: Int32 = 75
    /// Exit statuses that restarting cannot cure: a bad flag (64), bad input such as a missing corpus (65), and a
    /// refusal by the coordinator, e.g. another corpus or protocol version (77). The supervisor stops the pool on them.
    static let finalFailures: Set<Int32> = [64, 65, BardError.refusedExitCode]

    /// Starts `n` single workers and restarts any that exits with an error, until all have finished normally
    /// or we are signalled (then the children are stopped too).
    func supervise(_ n: Int) throws {
        installStopHandlers()
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        func start(_ i: Int) throws -> Process {
            let p = Process()
            p.executableURL = exe
            var args = ["worker", "--connect", connect, "--threads", String(threads), "--idle-timeout", String(idleTimeout),
                        "--name", "\(name ?? ProcessInfo.processInfo.hostName)-w\(i)", "--max-parameters", String(maxParameters)]
            if let data { args += ["--data", data] }
            args += clientKeys.arguments + sharedMemory.arguments
            p.arguments = args
            try p.run()
            return p
        }
        var children = try (0..<n).map(start)
        var finished = Set<Int>()
        var restarts = 0
        func stopAll(status: Int32) throws -> Never {
            for c in children where c.isRunning { c.terminate() }
            for c in children { c.waitUntilExit() }
            throw ExitCode(status)
        }
        while finished.count < n {
            if stopRequested != 0 { try stopAll(status: 130) }
            Thread.sleep(forTimeInterval: 0.2)
            for i in 0..<n where !finished.contains(i) && !children[i].isRunning {
                let status = children[i].terminationStatus
                if status == 0 && children[i].terminationReason == .exit { finished.insert(i); continue }
                if status == WorkerCommand.coordinatorGone && children[i].terminationReason == .exit {
                    // The coordinator is away (restarting, or gone): start it again to keep waiting; not a crash.
                    FileHandle.standardError.write(Data("worker supervisor: worker \(i) heard no coordinator for --idle-timeout; restarting it to keep waiting\n".utf8))
                    children[i] = try start(i)
                    continue
                }
                if children[i].terminationReason == .exit && WorkerCommand.finalFailures.contains(status) {
                    FileHandle.standardError.write(Data("worker supervisor: worker \(i) exited with status \(status), which a restart cannot cure (its error is above); stopping all \(n)\n".utf8))
                    try stopAll(status: status)
                }
                restarts += 1
                FileHandle.standardError.write(Data("worker supervisor: worker \(i) exited with status \(status); restarting (restart \(restarts))\n".utf8))
                if restarts > 20 * n { throw BardError.io("workers keep failing (\(restarts) restarts); giving up") }
                Thread.sleep(forTimeInterval: min(5, 0.5 * Double(restarts)))
                children[i] = try start(i)
            }
        }
    }
}

struct Fetch: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Download the coordinator's latest checkpoint (or the final one with --wait).")
    @Option(help: "Coordinator endpoint.") var from: String = "tcp://127.0.0.1:5555"
    @Option(help: "Directory to write model.safetensors into.") var out: String = "out"
    @Flag(help: "Wait for the end of training and fetch the final checkpoint.") var wait = false
    @Option(help: "Give up after this many seconds.") var timeout: Double = 3600
    @OptionGroup var clientKeys: ClientKeyFlags

    func run() throws {
        let security = try clientKeys.security()
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let context = try ZMQContext()
        let client = try ZMQClientTransport(context: context, connect: from, identity: "fetch-\(getpid())-\(UInt32.random(in: 0...UInt32.max))",
                                            security: security)
        let path = Trainer.modelPath(in: out)
        let (step, bytes) = try fetchCheckpoint(transport: client, to: path, wait: wait, timeout: timeout, log: stderrLog("fetch: "))
        say("fetched the checkpoint of step \(step) (\(bytes) bytes, sha256 verified) to \(path)")
        client.close()
    }
}

/// Handshake denials, as the authentication thread reports them: logged at most once in 10 s, with the count since.
final class DenialLog: @unchecked Sendable {
    let lock = NSLock()
    let log: (String) -> Void
    var last = Date.distantPast
    var unlogged = 0
    init(log: @escaping (String) -> Void) { self.log = log }

    func record(_ denial: HandshakeDenial) {
        lock.lock(); defer { lock.unlock() }
        unlogged += 1
        guard Date().timeIntervalSince(last) >= 10 else { return }
        log("denied \(unlogged) handshake(s) since the last report; latest: \(LogText.escape(denial.description))")
        last = Date(); unlogged = 0
    }
}
