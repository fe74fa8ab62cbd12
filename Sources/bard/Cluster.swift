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
    @Option(help: "Output directory for checkpoints and metrics.") var out: String = "out"
    @Option(name: .customLong("init"), help: "Start from the weights of a safetensors file.") var initFile: String?
    @Option(help: "Continue the run whose checkpoint is in this directory.") var resume: String?
    @Option(name: .customLong("checkpoint-every"), help: "Checkpoint every N steps (and at epoch ends and the end).") var checkpointEvery: Int = 100
    @Option(help: "After training, keep serving the final checkpoint this many seconds.") var linger: Double = 0
    @Option(name: .customLong("step-timeout"), help: "Evict a worker that has not answered a step in this many seconds.") var stepTimeout: Double = 60
    @Option(name: .customLong("sample-length"), help: "Characters of the sample printed after each epoch.") var sampleLength: Int = 200
    @Option(name: .customLong("heartbeat-timeout"), help: "Evict a worker not heard from (heartbeats are sent every second) for this many seconds.") var heartbeatTimeout: Double = 3
    @Flag(name: .customLong("auto-resume"), help: "Continue from the checkpoint in --out if there is one, else start afresh (for service managers that restart the coordinator).") var autoResume = false
    @Option(help: "Key directory (bard keys generate): CURVE-encrypt the socket and admit only the clients in its authorized_keys.") var keys: String?
    @Flag(help: "Allow binding a non-loopback address without --keys (plaintext, anyone can join).") var insecure = false
    @OptionGroup var monitoring: MonitorFlags

    func validate() throws {
        if let m = minWorkers, m < 1 { throw ValidationError("--min-workers must be >= 1") }
        guard startWorkers >= 1 else { throw ValidationError("--workers must be >= 1") }
        guard heartbeatTimeout > 0 else { throw ValidationError("--heartbeat-timeout must be > 0") }
        if autoResume && (resume != nil || initFile != nil) { throw ValidationError("--auto-resume excludes --resume and --init") }
        if keys == nil && !insecure && !KeyDirectory.isLocal(endpoint: bind) {
            throw ValidationError("--bind \(bind) is reachable from other hosts: give --keys DIR (bard keys generate --out DIR) or, on a trusted network, --insecure")
        }
        if let m = minWorkers, m < 1 || m > startWorkers { throw ValidationError("--min-workers must be 1...--workers") }
        guard linger >= 0, stepTimeout > 0 else { throw ValidationError("--linger must be >= 0 and --step-timeout > 0") }
    }

    func run() throws {
        let resumeDir = resume ?? (autoResume && Trainer.hasCheckpoint(in: out) ? out : nil)
        let options = try flags.makeOptions(out: out, resume: resumeDir, initFile: initFile, checkpointEvery: checkpointEvery,
                                            sampleLength: sampleLength)
        let security = try keys.map { dir in try loadKeys { try KeyDirectory.serverSecurity(dir: dir) } }
        for warning in security?.warnings ?? [] { stderrLog("coordinator: warning: ")(warning) }
        let corpus = try Corpus.load(path: flags.data)
        let trainer = try Trainer(options: options, corpus: corpus, log: say)
        let context = try ZMQContext()
        let server: ZMQServerTransport
        do { server = try ZMQServerTransport(context: context, bind: bind, security: security) } catch {
            throw BardError.io("cannot bind \(bind): \(error)")
        }
        let coordinator = Coordinator(transport: server, model: trainer.model, fingerprint: corpus.fingerprint,
                                      minWorkers: minWorkers ?? startWorkers, log: stderrLog("coordinator: "))
        coordinator.stepTimeout = stepTimeout
        coordinator.heartbeatTimeout = heartbeatTimeout
        let monitor = try monitoring.start(trainer: trainer, title: "bard coordinator: " + options.outDir) {
            coordinator.workerStatus.map {
                WorkerRow(name: $0.name, columns: $0.columns.map { "\($0.lowerBound)..<\($0.upperBound)" } ?? "-", steps: $0.steps,
                          secondsSinceHeard: $0.secondsSinceHeard)
            }
        }
        defer { monitor?.stop() }
        coordinator.checkpointPath = trainer.modelPath
        installStopHandlers()
        say("coordinator listening on \(server.endpoint)\(security == nil ? " (plaintext)" : " (CURVE, \(security!.allowedClients.count) client key(s) admitted)"); waiting for \(startWorkers) worker(s)")
        // Whatever happens, tell the workers training is over so they exit instead of waiting for a timeout.
        var finished = false
        defer { if !finished { try? coordinator.finish(linger: 0) } }
        if trainer.step >= trainer.totalSteps {
            // A service manager restarted a finished run: serve its checkpoint instead of waiting for workers.
            say("the run in \(out) is complete (step \(trainer.step) of \(trainer.totalSteps)); serving its final checkpoint")
            finished = true
            try coordinator.finish(linger: linger)
            server.close()
            return
        }
        try coordinator.waitForWorkers(startWorkers)
        let result = try trainer.run(computer: coordinator)
        say(String(format: "done: step %d, train loss %.4f, val loss %@; checkpoint %@; %d evictions, %d rejected messages",
                   result.step, result.trainLoss, result.valLoss.map { String(format: "%.4f", $0) } ?? "n/a",
                   trainer.modelPath, coordinator.evictions, coordinator.rejected))
        let interrupted = stopRequested != 0
        finished = true
        try coordinator.finish(linger: interrupted ? 0 : linger)
        server.close()
        if interrupted { throw ExitCode(130) }
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
    @Option(help: "Key directory: use its client.key and trust its coordinator.pub (CURVE).") var keys: String?
    @Option(name: .customLong("key-file"), help: "This client's key pair, instead of client.key in --keys.") var keyFile: String?

    func validate() throws {
        if let count, count < 1 || count > 256 { throw ValidationError("--count must be 1...256") }
        guard threads >= 1 && threads <= 256 else { throw ValidationError("--threads must be 1...256") }
    }

    func run() throws {
        if let count { return try supervise(count) }
        let host = ProcessInfo.processInfo.hostName
        let identity = name ?? "\(host)-\(getpid())"
        let fingerprint = try data.map { try Corpus.load(path: $0).fingerprint } ?? ""
        let security = try keys.map { dir in try loadKeys { try KeyDirectory.clientSecurity(dir: dir, keyFile: keyFile) } }
        let context = try ZMQContext()
        let client = try ZMQClientTransport(context: context, connect: connect, identity: identity, security: security)
        let worker = WorkerCore(transport: client, name: identity, fingerprint: fingerprint, threads: threads,
                                log: stderrLog("worker \(identity): "))
        worker.idleTimeout = idleTimeout
        installStopHandlers()
        do { try worker.run() } catch let stop as WorkerStop {
            client.close()
            FileHandle.standardError.write(Data("worker \(identity): \(stop)\n".utf8))
            switch stop {
            case .signalled: throw ExitCode(130)
            case .coordinatorSilent: throw ExitCode(WorkerCommand.coordinatorGone)
            }
        }
        client.close()
    }

    /// Exit status of a worker whose coordinator went silent: the supervisor does not restart it.
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
                        "--name", "\(name ?? ProcessInfo.processInfo.hostName)-w\(i)"]
            if let data { args += ["--data", data] }
            if let keys { args += ["--keys", keys] }
            if let keyFile { args += ["--key-file", keyFile] }
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
                if status == 0 || status == WorkerCommand.coordinatorGone { finished.insert(i); continue }
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
    @Option(help: "Key directory: use its client.key and trust its coordinator.pub (CURVE).") var keys: String?
    @Option(name: .customLong("key-file"), help: "This client's key pair, instead of client.key in --keys.") var keyFile: String?

    func run() throws {
        let security = try keys.map { dir in try loadKeys { try KeyDirectory.clientSecurity(dir: dir, keyFile: keyFile) } }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let context = try ZMQContext()
        let client = try ZMQClientTransport(context: context, connect: from, identity: "fetch-\(getpid())-\(UInt32.random(in: 0...UInt32.max))",
                                            security: security)
        let path = out + "/model.safetensors"
        let (step, bytes) = try fetchCheckpoint(transport: client, to: path, wait: wait, timeout: timeout, log: stderrLog("fetch: "))
        say("fetched the checkpoint of step \(step) (\(bytes) bytes, sha256 verified) to \(path)")
        client.close()
    }
}
