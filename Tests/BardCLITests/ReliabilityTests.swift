import BardModel
import Foundation
import XCTest

/// Lost, stopped, restarted and joining workers, a restarted coordinator, CURVE keys and crashes during checkpoint
/// writes, with real processes and real signals. Slow: BARD_SLOW=1.
final class ReliabilityTests: ProcessTestCase {
    /// A model big enough that a run lasts through the faults (a few hundred ms of compute per 10 steps).
    func runFlags(_ data: String) -> [String] {
        ["--data", data, "--layers", "2", "--embed", "16", "--hidden", "96", "--dropout", "0.1", "--batch", "32",
         "--bptt", "20", "--seed", "5", "--lr", "0.002", "--val-fraction", "0.05"]
    }

    /// A corpus, the run's flags, shared initial weights and one process's final parameters to compare with, and
    /// where the cluster run goes.
    func referenceRun(steps: Int) throws -> (data: String, flags: [String], initFile: String, reference: [Float],
                                             endpoint: String, out: String, log: String) {
        let data = try writeCorpus()
        let flags = runFlags(data)
        let (initFile, reference) = try singleProcessReference(flags, steps: steps)
        return (data, flags, initFile, reference, "tcp://127.0.0.1:\(Self.freePort())", dir + "/c", dir + "/c.log")
    }

    /// Worker B is stopped (SIGSTOP), evicted within the heartbeat timeout, resumed (it registers again), then
    /// killed (SIGKILL), evicted again, and restarted with the same identity, which joins at a step boundary; then
    /// killed and restarted at once, before anyone notices, which must not stall the step it was computing; and a new
    /// worker C joins mid-run and takes columns.
    /// Each lost step is redone by the survivors from the state of the last completed step, so the final parameters
    /// equal one process's.
    func testStoppedKilledAndRestartedWorkersKeepTheMath() throws {
        let steps = 400
        let (data, flags, initFile, reference, endpoint, out, clog) = try referenceRun(steps: steps)
        let coordinator = try launch(["coordinator"] + flags + ["--steps", String(steps), "--init", initFile, "--out", out,
                                      "--workers", "2", "--min-workers", "1", "--bind", endpoint], log: clog)
        let workerArgs = { (name: String) in ["worker", "--connect", endpoint, "--name", name, "--data", data] }
        _ = try launch(workerArgs("a"), log: dir + "/a.log")
        var b = try launch(workerArgs("b"), log: dir + "/b.log")

        XCTAssertNotNil(waitFor(120) { stepsDone(out) >= 40 }, "the run did not start: " + read(clog))
        kill(b.processIdentifier, SIGSTOP)
        let stoppedEviction = waitFor(30) { read(clog).components(separatedBy: "evicting b").count == 2 }
        XCTAssertNotNil(stoppedEviction, "a stopped worker was not evicted: " + read(clog))
        XCTAssertLessThan(stoppedEviction ?? 99, 3 + 1.5, "eviction should follow the 3 s heartbeat timeout")
        kill(b.processIdentifier, SIGCONT)
        XCTAssertNotNil(waitFor(30) { read(clog).components(separatedBy: "worker b joined").count == 3 },
                        "the resumed worker did not rejoin: " + read(clog))

        let beforeKill = stepsDone(out)
        XCTAssertNotNil(waitFor(60) { stepsDone(out) >= beforeKill + 20 })
        kill(b.processIdentifier, SIGKILL)
        let killedEviction = waitFor(30) { read(clog).components(separatedBy: "evicting b").count == 3 }
        XCTAssertNotNil(killedEviction, "a killed worker was not evicted: " + read(clog))
        XCTAssertLessThan(killedEviction ?? 99, 3 + 1.5, "eviction should follow the 3 s heartbeat timeout")
        b.waitUntilExit()
        b = try launch(workerArgs("b"), log: dir + "/b.log")
        XCTAssertNotNil(waitFor(30) { read(clog).components(separatedBy: "worker b joined").count == 4 },
                        "the restarted worker did not join: " + read(clog))
        let afterJoin = stepsDone(out)
        // Killed and started again at once, mid-step: its step is sent to the new process, nothing waits for a timeout.
        XCTAssertNotNil(waitFor(60) { stepsDone(out) >= afterJoin + 20 })
        kill(b.processIdentifier, SIGKILL)
        b.waitUntilExit()
        b = try launch(workerArgs("b"), log: dir + "/b.log")
        XCTAssertNotNil(waitFor(30) { read(clog).contains("worker b registered again") }, read(clog))
        // A new worker joins at a step boundary and takes a share of the columns.
        let beforeC = stepsDone(out)
        _ = try launch(workerArgs("c"), log: dir + "/c-worker.log")
        XCTAssertNotNil(waitFor(30) { read(clog).contains("worker c joined") }, read(clog))

        XCTAssertTrue(waitExit(coordinator, timeout: 300), "the run did not finish")
        XCTAssertEqual(coordinator.terminationStatus, 0, read(clog))
        XCTAssertLessThan(afterJoin, steps, "the restarted worker joined too late to take columns")
        // All of it with the workers on shared memory.
        for name in ["a", "b", "c"] {
            XCTAssertTrue(read(clog).contains("worker \(name) is on this host: parameters and gradients go through shared memory"), read(clog))
        }
        XCTAssertFalse(read(clog).contains("no reply to step"), "a step waited for its timeout: " + read(clog))
        XCTAssertLessThan(beforeC, steps - 20, "the new worker came too late to take columns")
        XCTAssertTrue(read(dir + "/c-worker.log").contains("training is over after"), read(dir + "/c-worker.log"))
        XCTAssertFalse(read(dir + "/c-worker.log").contains("after 0 steps"), "the new worker got no columns: " + read(dir + "/c-worker.log"))
        XCTAssertTrue(read(dir + "/b.log").contains("training is over"), "the restarted worker got no columns: " + read(dir + "/b.log"))
        let params = try ModelCheckpoint.load(path: out + "/model.safetensors").params.array
        XCTAssertLessThan(relativeDifference(params, reference), 1e-4)
    }

    /// A worker of the `--count` pool crashes (SIGKILL) and its supervisor starts it again; then the coordinator is
    /// stopped mid-run as `systemctl restart` or a pod reschedule stops it (SIGTERM): it checkpoints its last step and
    /// exits without telling anyone `done`, the same pool keeps waiting, and a coordinator started again with --resume
    /// finishes the run with it; the final parameters equal an uninterrupted run's.
    func testStoppedCoordinatorResumesWithTheSamePool() throws {
        let steps = 300
        let (data, flags, initFile, reference, endpoint, out, clog) = try referenceRun(steps: steps)
        let first = try launch(["coordinator"] + flags + ["--steps", String(steps), "--init", initFile, "--out", out,
                                "--workers", "2", "--bind", endpoint, "--checkpoint-every", "25"], log: clog)
        let pool = try launch(["worker", "--connect", endpoint, "--count", "2", "--data", data, "--idle-timeout", "60"],
                              log: dir + "/w.log")
        XCTAssertNotNil(waitFor(120) { stepsDone(out) >= 30 }, "the run did not start: " + read(clog))
        let children = read("/proc/\(pool.processIdentifier)/task/\(pool.processIdentifier)/children").split(separator: " ")
        XCTAssertEqual(children.count, 2, "the pool should have two worker processes")
        if let child = children.first.flatMap({ Int32($0) }) { kill(child, SIGKILL) }
        XCTAssertNotNil(waitFor(30) { read(dir + "/w.log").contains("restarting (restart 1)") },
                        "the supervisor did not restart the crashed worker: " + read(dir + "/w.log"))
        XCTAssertNotNil(waitFor(120) { stepsDone(out) >= 110 }, "the run stalled after the worker crash: " + read(clog))
        first.terminate()
        XCTAssertTrue(waitExit(first, timeout: 30), "SIGTERM did not stop the coordinator")
        XCTAssertNotEqual(first.terminationStatus, 0, "a stopped run must not look finished to a service manager")
        let stoppedAt = try ModelCheckpoint.load(path: out + "/model.safetensors").step
        XCTAssertEqual(stoppedAt, stepsDone(out), "the stop did not checkpoint its last step")
        XCTAssertLessThan(stoppedAt, steps)
        Thread.sleep(forTimeInterval: 2)  // the workers notice nothing but silence meanwhile
        XCTAssertTrue(pool.isRunning, "the pool stopped with the coordinator: " + read(dir + "/w.log"))
        XCTAssertFalse(read(dir + "/w.log").contains("training is over"), "a stopped coordinator said done: " + read(dir + "/w.log"))
        let second = try launch(["coordinator"] + flags + ["--resume", out, "--workers", "2", "--bind", endpoint], log: clog)
        XCTAssertTrue(waitExit(second, timeout: 300), "the resumed run did not finish")
        XCTAssertEqual(second.terminationStatus, 0, read(clog))
        let log = read(clog)
        XCTAssertTrue(log.contains("resumed at step \(stoppedAt)"), log)
        XCTAssertTrue(log.contains("done: step \(steps)"), log)
        XCTAssertTrue(waitExit(pool, timeout: 30), "workers did not finish after the resumed run")
        XCTAssertEqual(pool.terminationStatus, 0, read(dir + "/w.log"))
        let params = try ModelCheckpoint.load(path: out + "/model.safetensors").params.array
        XCTAssertLessThan(relativeDifference(params, reference), 1e-4)
    }

    /// With --keys, only clients listed in authorized_keys get anywhere: a worker without keys or with an unknown key
    /// never registers (so never sees parameters), and a fetch without the right key gets no checkpoint. The run
    /// with keys gives one process's result.
    func testCurveAdmitsOnlyListedClients() throws {
        let data = try writeCorpus(characters: 20000)
        let flags = ["--data", data, "--layers", "1", "--embed", "8", "--hidden", "16", "--batch", "8", "--bptt", "10",
                     "--seed", "3"]
        let (initFile, reference) = try singleProcessReference(flags, steps: 60)
        let keys = dir + "/keys", strangers = dir + "/strangers"
        for d in [keys, strangers] {
            let g = try launch(["keys", "generate", "--out", d], log: dir + "/keys.log")
            XCTAssertTrue(waitExit(g, timeout: 10)); XCTAssertEqual(g.terminationStatus, 0, read(dir + "/keys.log"))
        }
        // A laptop's key that may only fetch, and a second worker key.
        for (client, role) in [("laptop", "fetch"), ("other", "worker")] {
            let g = try launch(["keys", "generate", "--out", keys, "--client", client, "--role", role], log: dir + "/keys.log")
            XCTAssertTrue(waitExit(g, timeout: 10)); XCTAssertEqual(g.terminationStatus, 0, read(dir + "/keys.log"))
        }
        XCTAssertTrue(read(keys + "/authorized_keys").contains(" fetch laptop"), read(keys + "/authorized_keys"))
        let endpoint = "tcp://127.0.0.1:\(Self.freePort())"
        let out = dir + "/c", clog = dir + "/c.log"
        let coordinator = try launch(["coordinator"] + flags + ["--steps", "60", "--init", initFile, "--out", out, "--keys", keys,
                                      "--workers", "1", "--bind", endpoint, "--linger", "60"], log: clog)
        // A stranger's key (the coordinator.pub is right, its client key is not listed) and no key at all.
        try FileManager.default.removeItem(atPath: strangers + "/coordinator.pub")
        try FileManager.default.copyItem(atPath: keys + "/coordinator.pub", toPath: strangers + "/coordinator.pub")
        let stranger = try launch(["worker", "--connect", endpoint, "--keys", strangers, "--name", "stranger", "--idle-timeout", "8"],
                                  log: dir + "/stranger.log")
        let plain = try launch(["worker", "--connect", endpoint, "--name", "plain", "--idle-timeout", "8"], log: dir + "/plain.log")
        let badFetch = try launch(["fetch", "--from", endpoint, "--keys", strangers, "--out", dir + "/f1", "--timeout", "8"],
                                  log: dir + "/f1.log")
        let plainFetch = try launch(["fetch", "--from", endpoint, "--out", dir + "/f2", "--timeout", "8"], log: dir + "/f2.log")
        for p in [stranger, plain] {
            XCTAssertTrue(waitExit(p, timeout: 30))
            XCTAssertEqual(p.terminationStatus, 75, "a worker without a listed key should hear nothing and give up")
        }
        for (p, log) in [(badFetch, "/f1.log"), (plainFetch, "/f2.log")] {
            XCTAssertTrue(waitExit(p, timeout: 30))
            XCTAssertNotEqual(p.terminationStatus, 0, read(dir + log))
            XCTAssertTrue(read(dir + log).contains("no complete checkpoint"), read(dir + log))
        }
        XCTAssertEqual(stepsDone(out), 0, "training started without an admitted worker")
        XCTAssertFalse(read(clog).contains("joined"), read(clog))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/f1/model.safetensors"))

        // The fetch-only key cannot register as a worker: refused, exit 77, whatever name it takes.
        let laptop = try launch(["worker", "--connect", endpoint, "--keys", keys, "--key-file", keys + "/laptop.key", "--name", "laptop"],
                                log: dir + "/laptop.log")
        XCTAssertTrue(waitExit(laptop, timeout: 30))
        XCTAssertEqual(laptop.terminationStatus, 77, read(dir + "/laptop.log"))
        XCTAssertTrue(read(dir + "/laptop.log").contains("role is fetch"), read(dir + "/laptop.log"))

        _ = try launch(["worker", "--connect", endpoint, "--keys", keys, "--name", "friend"], log: dir + "/friend.log")
        XCTAssertNotNil(waitFor(30) { read(clog).contains("worker friend joined") }, read(clog))
        // Another worker key claiming friend's name is refused and logged; friend keeps its place.
        let thief = try launch(["worker", "--connect", endpoint, "--keys", keys, "--key-file", keys + "/other.key", "--name", "friend"],
                               log: dir + "/thief.log")
        XCTAssertTrue(waitExit(thief, timeout: 30))
        XCTAssertEqual(thief.terminationStatus, 77, read(dir + "/thief.log"))
        XCTAssertTrue(read(dir + "/thief.log").contains("registered by another key"), read(dir + "/thief.log"))
        let fetch = try launch(["fetch", "--from", endpoint, "--keys", keys, "--key-file", keys + "/laptop.key", "--out", dir + "/f3",
                                "--wait", "--timeout", "120"], log: dir + "/f3.log")
        XCTAssertTrue(waitExit(fetch, timeout: 150))
        XCTAssertEqual(fetch.terminationStatus, 0, read(dir + "/f3.log") + read(clog))
        let fetched = try ModelCheckpoint.load(path: dir + "/f3/model.safetensors")
        XCTAssertEqual(fetched.step, 60)
        XCTAssertLessThan(relativeDifference(fetched.params.array, reference), 1e-5)
        coordinator.interrupt()
        XCTAssertTrue(waitExit(coordinator, timeout: 10))
        let log = read(clog)
        XCTAssertTrue(log.contains("worker friend joined"), log)
        XCTAssertTrue(log.contains("refused a hello from friend"), log)
        XCTAssertFalse(log.contains("evicting friend"), "the name thief disturbed the owner: " + log)
        XCTAssertFalse(log.contains("stranger joined") || log.contains("plain joined"), log)
    }

    /// SIGKILL the coordinator at random moments of a run that checkpoints every step (most of its time goes into
    /// writing them): after every kill the newest checkpoint loads (its checksum verifies) and the run resumes from it,
    /// with the same worker process reconnecting each time; in the end it completes.
    func testKillsDuringCheckpointWritesNeverLeaveABrokenCheckpoint() throws {
        let data = try writeCorpus()
        let out = dir + "/run", log = dir + "/run.log"
        let endpoint = "tcp://127.0.0.1:\(Self.freePort())"
        let model = ["--data", data, "--layers", "2", "--embed", "32", "--hidden", "256", "--batch", "8", "--bptt", "5"]
        let common = ["--steps", "100000", "--checkpoint-every", "1", "--bind", endpoint, "--workers", "1"]
        let worker = try launch(["worker", "--connect", endpoint, "--name", "steady"], log: dir + "/worker.log")
        var generator = SystemRandomNumberGenerator()
        var lastStep = -1
        var killed: [Int32] = []
        for round in 0..<12 {
            let resuming = FileManager.default.fileExists(atPath: out + "/model.safetensors")
            let p = try launch(["coordinator"] + (resuming ? ["--resume", out, "--data", data] : model + ["--out", out]) + common, log: log)
            XCTAssertNotNil(waitFor(60) { FileManager.default.fileExists(atPath: out + "/model.safetensors") && !(resuming && stepsDone(out) <= lastStep + 1) },
                            "round \(round): no progress: " + read(log).suffix(2000))
            // The coordinator killed before this one left its shared memory; this one removed it as it started.
            if let previous = killed.last { XCTAssertEqual(sharedRegions(of: previous), [], "round \(round)") }
            Thread.sleep(forTimeInterval: Double.random(in: 0.05...0.6, using: &generator))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            XCTAssertFalse(sharedRegions(of: p.processIdentifier).isEmpty, "round \(round): a killed coordinator cannot clean up")
            killed.append(p.processIdentifier)
            let checkpoint = try ModelCheckpoint.load(path: out + "/model.safetensors")
            XCTAssertGreaterThanOrEqual(checkpoint.step, max(lastStep, 0), "round \(round)")
            lastStep = checkpoint.step
        }
        // The last kill's checkpoint resumes and finishes, with the same worker.
        let finish = try launch(["coordinator", "--resume", out, "--data", data, "--steps", String(lastStep + 3), "--bind", endpoint,
                                 "--workers", "1"], log: log)
        XCTAssertTrue(waitExit(finish, timeout: 60))
        XCTAssertEqual(finish.terminationStatus, 0, String(read(log).suffix(3000)))
        XCTAssertEqual(try ModelCheckpoint.load(path: out + "/model.safetensors").step, lastStep + 3)
        XCTAssertTrue(waitExit(worker, timeout: 30))
        XCTAssertEqual(worker.terminationStatus, 0, read(dir + "/worker.log"))
        for pid in killed + [finish.processIdentifier] { XCTAssertEqual(sharedRegions(of: pid), []) }
        // The worker took each new coordinator's shared memory.
        XCTAssertGreaterThanOrEqual(read(dir + "/worker.log").components(separatedBy: "through shared memory").count - 1, 13,
                                    read(dir + "/worker.log"))
    }
}
