import BardMetrics
import BardModel
import BardNumerics
import Foundation
import XCTest

/// Tolerances of the multi-process tests, in one place. Two processes compute the same float operations in the
/// same order on the same kernels, so they agree far below this; a different split of columns or summation order
/// (N workers against one process) moves the parameters by about 1e-6 relative after hundreds of Adam steps.
enum Tolerance {
    static let crossProcess = 1e-5
}

/// Real processes over tcp loopback. Slow: run when BARD_SLOW=1 (CI sets it).
class ProcessTestCase: XCTestCase {
    var dir = ""
    var started: [Process] = []

    override func setUpWithError() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["BARD_SLOW"] == "1", "slow multi-process test: set BARD_SLOW=1")
        dir = NSTemporaryDirectory() + "bard-cluster-e2e-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        for p in started where p.isRunning { kill(p.processIdentifier, SIGCONT); p.terminate() }
        for p in started { p.waitUntilExit() }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// The shared-memory regions a coordinator process made that still have a name in /dev/shm.
    func sharedRegions(of pid: Int32) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []).filter { $0.hasPrefix("bard-\(getuid())-\(pid)-") }
    }

    func launch(_ args: [String], log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binary)
        p.arguments = args
        // The same BLAS kernels as this process, so what the test computes itself is comparable.
        p.environment = OpenBLASCore.childEnvironment()
        if !FileManager.default.fileExists(atPath: log) { FileManager.default.createFile(atPath: log, contents: nil) }
        let h = FileHandle(forWritingAtPath: log)
        h?.seekToEndOfFile()
        p.standardOutput = h; p.standardError = h
        try p.run()
        started.append(p)
        return p
    }

    /// Whether `p` exits within `timeout` seconds. One that does not is killed, so that its `terminationStatus` can be
    /// read (reading it from a running process traps, which would take every later test with it).
    func waitExit(_ p: Process, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        guard p.isRunning else { return true }
        kill(p.processIdentifier, SIGCONT)
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        return false
    }

    /// Fetches the final checkpoint of the run `name` (its log is `name`.log) into `name`-fetched, then stops its
    /// lingering coordinator. Returns the fetched parameters.
    func fetchFinal(_ name: String, from endpoint: String, stopping coordinator: Process, flags: [String] = []) throws -> [Float] {
        let fetch = try launch(["fetch", "--from", endpoint, "--out", dir + "/\(name)-fetched", "--wait", "--timeout", "150"] + flags,
                               log: dir + "/\(name)-f.log")
        XCTAssertTrue(waitExit(fetch, timeout: 180), "\(name): no final checkpoint fetched")
        XCTAssertEqual(fetch.terminationStatus, 0, read(dir + "/\(name)-f.log") + read(dir + "/\(name).log"))
        coordinator.interrupt()
        XCTAssertTrue(waitExit(coordinator, timeout: 30), "\(name): the coordinator did not stop")
        return try ModelCheckpoint.load(path: dir + "/\(name)-fetched/model.safetensors").params.array
    }

    /// Polls until `condition` holds; returns the seconds it took, or nil on timeout.
    @discardableResult
    func waitFor(_ timeout: Double, _ condition: () -> Bool) -> Double? {
        let start = Date()
        while Date().timeIntervalSince(start) < timeout {
            if condition() { return Date().timeIntervalSince(start) }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return nil
    }

    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    /// Steps recorded so far in a run's metrics.jsonl.
    func stepsDone(_ out: String) -> Int { read(out + "/metrics.jsonl").split(separator: "\n").count }

    /// A port for a test's coordinator, with the next eight free too (its shards' ports): below Linux's ephemeral range
    /// (32768 on), where outgoing connections take ports, and checked by binding each.
    static func freePort() -> Int {
        func free(_ port: Int) -> Bool {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            return withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
        }
        for _ in 0..<100 {
            let port = 20000 + Int.random(in: 0..<12000)
            if (port..<port + 9).allSatisfy(free) { return port }
        }
        return 20000 + Int.random(in: 0..<12000)
    }

    /// A repetitive word corpus of `characters` characters.
    func writeCorpus(characters: Int = 40000) throws -> String {
        var text = ""
        var x: UInt64 = 7
        let words = ["to", "be", "or", "not", "that", "is", "the", "question", "\n", "ROMEO:", "JULIET:"]
        while text.count < characters { x = x &* 6364136223846793005 &+ 1442695040888963407; text += words[Int(x >> 59) % words.count] + " " }
        let data = dir + "/corpus.txt"
        try text.write(toFile: data, atomically: true, encoding: .utf8)
        return data
    }

    /// Writes shared initial weights (a one-step run with another seed) and trains `common` in one process from them;
    /// returns the init file and the final parameters.
    func singleProcessReference(_ common: [String], steps: Int) throws -> (initFile: String, params: [Float]) {
        let initRun = try launch(["train"] + common + ["--steps", "1", "--out", dir + "/init", "--seed", "99"], log: dir + "/init.log")
        XCTAssertTrue(waitExit(initRun, timeout: 60)); XCTAssertEqual(initRun.terminationStatus, 0, read(dir + "/init.log"))
        let initFile = dir + "/init/model.safetensors"
        let single = try launch(["train"] + common + ["--steps", String(steps), "--init", initFile, "--out", dir + "/single"],
                                log: dir + "/single.log")
        XCTAssertTrue(waitExit(single, timeout: 300)); XCTAssertEqual(single.terminationStatus, 0, read(dir + "/single.log"))
        return (initFile, try ModelCheckpoint.load(path: dir + "/single/model.safetensors").params.array)
    }

    func relativeDifference(_ a: [Float], _ reference: [Float]) -> Double {
        var diff = 0.0, norm = 0.0
        for i in 0..<min(a.count, reference.count) {
            diff += Double(a[i] - reference[i]) * Double(a[i] - reference[i])
            norm += Double(reference[i]) * Double(reference[i])
        }
        return a.count == reference.count ? (diff / norm).squareRoot() : .infinity
    }

    /// The largest difference of any one parameter relative to its own size, or to the parameters' RMS for those
    /// smaller than that: a parameter near zero (0.0003, say) carries float rounding of the sums' order at 1e-8, which
    /// divided by its own size would measure the rounding, not the math.
    func largestElementDifference(_ a: [Float], _ reference: [Float]) -> Double {
        guard a.count == reference.count, !a.isEmpty else { return .infinity }
        let rms = (reference.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(reference.count)).squareRoot()
        return zip(a, reference).reduce(0.0) { worst, pair in
            max(worst, Double(abs(pair.0 - pair.1)) / max(Double(abs(pair.1)), rms))
        }
    }
}

final class ClusterProcessTests: ProcessTestCase {
    /// `bard train` and a coordinator with 1, 2, 3 (uneven shards of 32 columns) and 4 workers, 30 steps from the
    /// same --init and --seed: every final parameter agrees within 1e-5 relative. The workers are on the
    /// coordinator's host, so they use shared memory, except with 2 (`--no-shm`) and half of the 4; the coordinator
    /// leaves no region behind.
    func testCoordinatorWithOneToFourWorkersMatchesSingleProcess() throws {
        let data = try writeCorpus()
        let common = ["--data", data, "--layers", "2", "--embed", "16", "--hidden", "24", "--dropout", "0.2", "--batch", "32",
                      "--bptt", "10", "--seed", "11", "--lr", "0.003"]
        let (initFile, reference) = try singleProcessReference(common, steps: 30)

        for workers in 1...4 {
            let port = Self.freePort()
            let endpoint = "tcp://127.0.0.1:\(port)"
            let out = dir + "/c\(workers)"
            let coordinator = try launch(["coordinator"] + common + ["--steps", "30", "--init", initFile, "--out", out, "--workers", String(workers),
                                          "--bind", endpoint], log: dir + "/c\(workers).log")
            let pools: [[String]] = switch workers {
            case 2: [["--count", "2", "--no-shm"]]
            case 4: [["--count", "2"], ["--count", "2", "--no-shm", "--name", "by-messages"]]
            default: [["--count", String(workers)]]
            }
            let launched = try pools.map {
                try launch(["worker", "--connect", endpoint, "--data", data] + $0, log: dir + "/w\(workers).log")
            }
            XCTAssertTrue(waitExit(coordinator, timeout: 180), "coordinator with \(workers) workers did not finish")
            XCTAssertEqual(coordinator.terminationStatus, 0, (try? String(contentsOfFile: dir + "/c\(workers).log", encoding: .utf8)) ?? "")
            for pool in launched { XCTAssertTrue(waitExit(pool, timeout: 30), "workers did not exit after training") }
            let clog = read(dir + "/c\(workers).log")
            XCTAssertEqual(clog.components(separatedBy: "go through shared memory").count - 1, workers == 2 ? 0 : workers == 4 ? 2 : workers,
                           clog)
            XCTAssertEqual(sharedRegions(of: coordinator.processIdentifier), [], "the coordinator left shared memory behind")
            let params = try ModelCheckpoint.load(path: out + "/model.safetensors").params.array
            XCTAssertLessThan(relativeDifference(params, reference), 1e-5, "\(workers) workers")
            // Every parameter, not just the whole vector, agrees within 1e-5 relative (measured: up to about 2e-6).
            let worst = largestElementDifference(params, reference)
            print("\(workers) workers: largest parameter difference \(worst) relative")
            XCTAssertLessThan(worst, 1e-5, "\(workers) workers: a parameter differs by \(worst) relative")
            let log = try String(contentsOfFile: dir + "/c\(workers).log", encoding: .utf8)
            XCTAssertTrue(log.contains("done: step 30"), log)
        }
    }

    /// Sharded coordinators (issue 11) as real processes over loopback: a lead with `--shards K` (K = 1 to 4), K
    /// `bard shard` processes and two or three workers (uneven shares of 30 columns), Adam with clipping that bites,
    /// dropout and an average, checkpoints gathered every 5 steps: the final parameters equal the star coordinator's
    /// to 1e-6 relative and `bard train`'s to the cluster tolerance, and a fetch gets the final checkpoint as always.
    func testShardedCoordinatorsMatchOneCoordinator() throws {
        let data = try writeCorpus()
        // About 127 K parameters: four blocks, so up to four shards.
        let common = ["--data", data, "--layers", "2", "--embed", "32", "--hidden", "96", "--dropout", "0.2", "--batch", "30",
                      "--bptt", "10", "--seed", "11", "--lr", "0.003", "--clip", "0.5", "--ema", "0.9", "--checkpoint-every", "5"]
        let (initFile, reference) = try singleProcessReference(common, steps: 20)
        func cluster(_ name: String, workers: Int, shards: Int) throws -> [Float] {
            let port = Self.freePort()
            let endpoint = "tcp://127.0.0.1:\(port)"
            let out = dir + "/" + name
            let coordinator = try launch(["coordinator"] + common + ["--steps", "20", "--init", initFile, "--out", out, "--workers", String(workers),
                                          "--bind", endpoint, "--linger", "20"] + (shards > 0 ? ["--shards", String(shards)] : []),
                                         log: dir + "/\(name).log")
            for k in 0..<shards {
                _ = try launch(["shard", "--connect", endpoint, "--bind", "tcp://127.0.0.1:\(port + 1 + k)", "--name", "shard-\(k)"],
                               log: dir + "/\(name)-shards.log")
            }
            // The star's workers by message, as the shards' are: on shared memory the embedding's and W_ih0's gradients
            // would be summed in another order (the tables' first), which the cluster tolerance covers, not this one.
            let pool = try launch(["worker", "--connect", endpoint, "--data", data, "--count", String(workers)] + (shards == 0 ? ["--no-shm"] : []),
                                  log: dir + "/\(name)-w.log")
            let fetched = try fetchFinal(name, from: endpoint, stopping: coordinator)
            XCTAssertTrue(waitExit(pool, timeout: 30), "\(name): the workers did not exit after training")
            let log = read(dir + "/\(name).log")
            XCTAssertTrue(log.contains("done: step 20"), log)
            if shards > 0 {
                XCTAssertTrue(log.contains("seeded \(shards) coordinator shard"), log)
                XCTAssertTrue(read(dir + "/\(name)-shards.log").contains("training is over after 20 updates"), read(dir + "/\(name)-shards.log"))
            }
            let saved = try ModelCheckpoint.load(path: out + "/model.safetensors")
            XCTAssertEqual(fetched, saved.params.array)
            try checkTraffic(out, name: name, shards: shards, workers: workers, parameterBytes: 4 * saved.params.count)
            return saved.params.array
        }
        // The star coordinator with as many workers (so the same column split and the same sums): 1e-6 relative in
        // every parameter (measured: 0). Against one process, whose sums are split otherwise, the cluster tolerance
        // over the vector (clipping that bites and the average make single parameters differ by up to about 3e-5).
        let stars = [2: try cluster("star-2", workers: 2, shards: 0), 3: try cluster("star-3", workers: 3, shards: 0)]
        for (workers, shards) in [(2, 1), (3, 2), (2, 3), (3, 4)] {
            let params = try cluster("sharded-\(shards)", workers: workers, shards: shards)
            let worst = largestElementDifference(params, stars[workers] ?? [])
            print("\(shards) shards, \(workers) workers: largest parameter difference from the star coordinator \(worst) relative, from bard train \(largestElementDifference(params, reference))")
            XCTAssertLessThan(worst, 1e-6, "\(shards) shards, \(workers) workers against the star coordinator")
            XCTAssertLessThan(relativeDifference(params, reference), Tolerance.crossProcess, "\(shards) shards against bard train")
        }
    }

    /// Sharded coordinators under CURVE, through faults (issue 11, requirements 4 and 5). Shards take keys of the
    /// `shard` role (a worker's key is refused) and workers check the shards' server keys. A shard killed mid-run is
    /// noticed within the heartbeat timeout, and the run goes back to its last checkpoint and on over the two
    /// shards left; a shard killed and restarted at once is taken back at its restart. Nothing else changes: the
    /// final parameters equal the star coordinator's to 1e-6 relative.
    func testShardedRunUnderCurveSurvivesALostAndARestartedShard() throws {
        let data = try writeCorpus()
        let common = ["--data", data, "--layers", "2", "--embed", "32", "--hidden", "96", "--dropout", "0.2", "--batch", "30",
                      "--bptt", "10", "--seed", "11", "--lr", "0.003", "--clip", "0.5", "--ema", "0.9", "--checkpoint-every", "10"]
        let steps = 150
        let (initFile, _) = try singleProcessReference(common, steps: 1)
        let keys = dir + "/keys"
        for args in [["--out", keys]] + (0..<3).map { ["--out", keys, "--client", "shard-\($0)", "--role", "shard"] } {
            let g = try launch(["keys", "generate"] + args, log: dir + "/keys.log")
            XCTAssertTrue(waitExit(g, timeout: 10)); XCTAssertEqual(g.terminationStatus, 0, read(dir + "/keys.log"))
        }
        func run(_ name: String, shards: Int, during: (String, String, Int) throws -> Void) throws -> [Float] {
            let port = Self.freePort(), endpoint = "tcp://127.0.0.1:\(port)", out = dir + "/" + name, log = dir + "/\(name).log"
            let secure = shards > 0 ? ["--keys", keys] : []
            let coordinator = try launch(["coordinator"] + common + secure + ["--steps", String(steps), "--init", initFile, "--out", out,
                                          "--workers", "2", "--bind", endpoint, "--linger", "20"] + (shards > 0 ? ["--shards", String(shards)] : []),
                                         log: log)
            _ = try launch(["worker", "--connect", endpoint, "--data", data, "--count", "2"] + secure + (shards == 0 ? ["--no-shm"] : []),
                           log: dir + "/\(name)-w.log")  // the star's by message, as above
            try during(endpoint, out, port)
            let fetched = try fetchFinal(name, from: endpoint, stopping: coordinator, flags: secure)
            XCTAssertTrue(read(log).contains("done: step \(steps)"), read(log))
            XCTAssertEqual(fetched, try ModelCheckpoint.load(path: out + "/model.safetensors").params.array)
            return fetched
        }
        let star = try run("star", shards: 0) { _, _, _ in }
        let sharded = try run("sharded", shards: 3) { endpoint, out, port in
            let log = dir + "/sharded.log", shardLog = dir + "/sharded-shards.log"
            func shard(_ k: Int, key: String? = nil) throws -> Process {
                try launch(["shard", "--connect", endpoint, "--bind", "tcp://127.0.0.1:\(port + 1 + k)", "--name", "shard-\(k)",
                            "--keys", keys, "--key-file", key ?? keys + "/shard-\(k).key"], log: shardLog)
            }
            // A worker's key may not hold a slice.
            let impostor = try shard(0, key: keys + "/client.key")
            XCTAssertTrue(waitExit(impostor, timeout: 30), "a shard with a worker's key was not turned away")
            XCTAssertNotEqual(impostor.terminationStatus, 0)
            XCTAssertTrue(read(shardLog).contains("may not join as a coordinator shard"), read(shardLog))
            var processes = try (0..<3).map { try shard($0) }
            func lastStep() -> Int { stepsDone(out) }  // metrics.jsonl has a line per step, each step once
            XCTAssertNotNil(waitFor(120) { lastStep() >= 30 }, read(log))
            kill(processes[2].processIdentifier, SIGKILL)
            XCTAssertNotNil(waitFor(60) { read(log).contains("coordinator shard shard-2 was silent") && read(log).contains("going back to step") }, read(log))
            XCTAssertNotNil(waitFor(120) { lastStep() >= 80 }, read(log))
            kill(processes[1].processIdentifier, SIGKILL)
            processes[1] = try shard(1)
            XCTAssertNotNil(waitFor(60) { read(log).contains("coordinator shard shard-1 joined again") }, read(log))
        }
        let log = read(dir + "/sharded.log")
        XCTAssertEqual(log.components(separatedBy: "going back to step").count - 1, 2, log)
        XCTAssertTrue(log.contains("seeded 2 coordinator shards"), log)
        let worst = largestElementDifference(sharded, star)
        print("sharded run through two lost shards: largest parameter difference from the star coordinator \(worst) relative")
        XCTAssertLessThan(worst, 1e-6)
    }

    /// A sharded lead killed mid-run (SIGKILL) and started again with `--resume` (issue 11, requirement 4): its shards
    /// and workers, still running, join the new lead, which seeds the shards from the checkpoint on disk; the run
    /// ends with the star coordinator's parameters to 1e-6 relative.
    func testResumedLeadSeedsItsShardsFromTheCheckpoint() throws {
        let data = try writeCorpus()
        let common = ["--data", data, "--layers", "2", "--embed", "32", "--hidden", "96", "--dropout", "0.2", "--batch", "30",
                      "--bptt", "10", "--seed", "11", "--lr", "0.003", "--clip", "0.5", "--ema", "0.9", "--checkpoint-every", "10"]
        let steps = 120
        let (initFile, _) = try singleProcessReference(common, steps: 1)
        func lead(_ args: [String], _ endpoint: String, log: String) throws -> Process {
            try launch(["coordinator"] + args + ["--workers", "2", "--bind", endpoint, "--linger", "20"], log: log)
        }
        let starEndpoint = "tcp://127.0.0.1:\(Self.freePort())"
        let star = try lead(common + ["--steps", String(steps), "--init", initFile, "--out", dir + "/star"], starEndpoint, log: dir + "/star.log")
        _ = try launch(["worker", "--connect", starEndpoint, "--count", "2", "--no-shm"], log: dir + "/star-w.log")  // as the shards' are
        let starParams = try fetchFinal("star", from: starEndpoint, stopping: star)

        let port = Self.freePort(), endpoint = "tcp://127.0.0.1:\(port)", out = dir + "/sharded", log = dir + "/sharded.log"
        let first = try lead(common + ["--steps", String(steps), "--init", initFile, "--out", out, "--shards", "2"], endpoint, log: log)
        for k in 0..<2 {
            _ = try launch(["shard", "--connect", endpoint, "--bind", "tcp://127.0.0.1:\(port + 1 + k)", "--name", "shard-\(k)"],
                           log: dir + "/sharded-shards.log")
        }
        _ = try launch(["worker", "--connect", endpoint, "--count", "2"], log: dir + "/sharded-w.log")
        XCTAssertNotNil(waitFor(120) { stepsDone(out) >= 45 }, read(log))
        kill(first.processIdentifier, SIGKILL)
        XCTAssertTrue(waitExit(first, timeout: 10))
        let resumed = try lead(["--resume", out, "--shards", "2"], endpoint, log: dir + "/sharded.log")
        let params = try fetchFinal("sharded", from: endpoint, stopping: resumed)
        let text = read(log)
        // Back to the last checkpoint before the kill (every 10 steps, and at least step 45 was done).
        let resumedAt = text.components(separatedBy: "resumed at step ").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) }
        XCTAssertNotNil(resumedAt, text)
        XCTAssertTrue((resumedAt ?? 0) >= 40 && (resumedAt ?? 0) < steps && (resumedAt ?? 1) % 10 == 0, text)
        XCTAssertEqual(text.components(separatedBy: "seeded 2 coordinator shards").count - 1, 2, text)
        XCTAssertTrue(text.contains("done: step \(steps)"), text)
        let worst = largestElementDifference(params, starParams)
        print("sharded run through a killed and resumed lead: largest parameter difference from the star coordinator \(worst) relative")
        XCTAssertLessThan(worst, 1e-6)
    }

    /// The bytes of a step in a run's metrics.jsonl (issue 11, requirement 6), process by process: the lead, each shard
    /// and each worker are there, and every byte one of them sent, another received (within the messages that cross
    /// the step's edges: a heartbeat, a 64 KB margin). Sharded, each worker takes all of P from the shards and sends
    /// them P of gradient slices, and the lead moves no parameters. (The star run's workers here are on the lead's
    /// host but run with --no-shm, so their bytes go through messages too.)
    func checkTraffic(_ out: String, name: String, shards: Int, workers: Int, parameterBytes p: Int) throws {
        let records = read(out + "/metrics.jsonl").split(separator: "\n").compactMap { MetricsRecord.decode(line: $0) }
        guard let r = records.first(where: { $0.step == 12 }), let traffic = r.traffic else {
            return XCTFail("\(name): no traffic in the record of step 12")
        }
        let lead = traffic.filter { $0.role == .lead }, workerT = traffic.filter { $0.role == .worker }
        XCTAssertEqual(lead.count, 1, "\(name): \(traffic)")
        XCTAssertEqual(traffic.filter { $0.role == .shard }.count, shards, "\(name): \(traffic)")
        XCTAssertEqual(workerT.count, workers, "\(name): \(traffic)")
        let sent = traffic.reduce(0) { $0 + $1.sent }, received = traffic.reduce(0) { $0 + $1.received }
        XCTAssertGreaterThan(sent, 0, "\(name): \(traffic)")
        XCTAssertLessThanOrEqual(abs(sent - received), 64 << 10, "\(name): \(sent) bytes sent, \(received) received: \(traffic)")
        guard shards > 0 else { return }
        XCTAssertLessThan(lead.first?.sent ?? .max, p / 4, "\(name): a sharded lead moves no parameters: \(traffic)")
        for w in workerT {
            XCTAssertGreaterThanOrEqual(w.received, p, "\(name): \(w.name) received less than the parameters")
            XCTAssertGreaterThanOrEqual(w.sent, p, "\(name): \(w.name) sent less than a gradient")
            XCTAssertLessThan(w.sent, p + p / 10, "\(name): \(w.name)")
        }
    }

    /// A fetch during and after training gets a verified checkpoint; the coordinator lingers to serve it.
    func testFetchWaitsForTheFinalCheckpoint() throws {
        let text = String(repeating: "the quick brown fox jumps over the lazy dog\n", count: 400)
        let data = dir + "/c.txt"
        try text.write(toFile: data, atomically: true, encoding: .utf8)
        let endpoint = "tcp://127.0.0.1:\(Self.freePort())"
        let coordinator = try launch(["coordinator", "--data", data, "--layers", "1", "--embed", "8", "--hidden", "16",
                                      "--batch", "8", "--bptt", "10", "--steps", "80", "--workers", "2", "--bind", endpoint,
                                      "--out", dir + "/out", "--linger", "30", "--checkpoint-every", "10"], log: dir + "/c.log")
        _ = try launch(["worker", "--connect", endpoint, "--count", "2"], log: dir + "/w.log")
        let fetch = try launch(["fetch", "--from", endpoint, "--out", dir + "/fetched", "--wait", "--timeout", "120"], log: dir + "/f.log")
        XCTAssertTrue(waitExit(fetch, timeout: 150))
        XCTAssertEqual(fetch.terminationStatus, 0, (try? String(contentsOfFile: dir + "/f.log", encoding: .utf8)) ?? "")
        let fetched = try ModelCheckpoint.load(path: dir + "/fetched/model.safetensors")
        XCTAssertEqual(fetched.step, 80)
        coordinator.interrupt()
        XCTAssertTrue(waitExit(coordinator, timeout: 10))
    }
}
