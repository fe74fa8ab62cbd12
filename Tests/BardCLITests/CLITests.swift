import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest

/// End-to-end: the built `bard` binary, real files, real exit codes.
final class CLITests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    var dir = ""

    static var binary: String {  // also used by ClusterProcessTests
        if let b = ProcessInfo.processInfo.environment["BARD_BIN"] { return b }
        let release = root.appendingPathComponent(".build/release/bard").path
        let debug = root.appendingPathComponent(".build/debug/bard").path
        let fm = FileManager.default
        let rd = (try? fm.attributesOfItem(atPath: release)[.modificationDate] as? Date) ?? .distantPast
        let dd = (try? fm.attributesOfItem(atPath: debug)[.modificationDate] as? Date) ?? .distantPast
        return rd >= dd ? release : debug
    }

    override func setUp() {
        dir = NSTemporaryDirectory() + "bard-cli-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    @discardableResult
    func bard(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = args
        let o = Pipe(), e = Pipe()
        p.standardOutput = o; p.standardError = e
        try p.run()
        let out = o.fileHandleForReading.readDataToEndOfFile(), err = e.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    func write(_ name: String, _ bytes: [UInt8]) -> String {
        let path = dir + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    func corpusText() -> String {
        var s = ""
        var x: UInt64 = 1
        let words = ["to", "be", "or", "not", "that", "is", "the", "question", "\n", "ROMEO:"]
        while s.count < 6000 { x = x &* 6364136223846793005 &+ 1442695040888963407; s += words[Int(x >> 60) % words.count] + " " }
        return s
    }

    func assertOneLineError(_ r: (status: Int32, out: String, err: String), contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertNotEqual(r.status, 0, file: file, line: line)
        let lines = r.err.split(separator: "\n").filter { !$0.isEmpty }
        XCTAssertEqual(lines.count, 1, "stderr: \(r.err)", file: file, line: line)
        XCTAssertTrue(r.err.contains(contains), "stderr: \(r.err)", file: file, line: line)
    }

    func testBadInputIsAOneLineErrorAndNonZeroExit() throws {
        assertOneLineError(try bard(["train", "--data", dir + "/missing.txt"]), contains: "no such file")
        assertOneLineError(try bard(["train", "--data", write("empty.txt", [])]), contains: "empty")
        assertOneLineError(try bard(["train", "--data", write("bad.txt", [0x61, 0x62, 0x63, 0xFF, 0x64])]), contains: "byte offset 3")
        assertOneLineError(try bard(["train", "--data", write("short.txt", Array("hello world".utf8))]), contains: "corpus too short")
        assertOneLineError(try bard(["sample", "--checkpoint", write("junk.safetensors", [1, 2, 3])]), contains: "junk.safetensors")
        let r = try bard(["train", "--layers", "0", "--data", write("ok.txt", Array(corpusText().utf8))])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("--layers"), r.err)
        XCTAssertNotEqual(try bard(["train", "--no-such-flag"]).status, 0)
        // Negative counts are refused before any work (they used to trap after a whole epoch).
        let ok = write("ok2.txt", Array(corpusText().utf8))
        assertOneLineError(try bard(["train", "--data", ok, "--sample-length=-1"]), contains: "--sample-length must be >= 0")
        assertOneLineError(try bard(["coordinator", "--data", ok, "--checkpoint-every=-2"]), contains: "--checkpoint-every must be >= 0")
        assertOneLineError(try bard(["bench", "--gen-chars=-1"]), contains: "--gen-chars >= 1")
        // --min-workers alone sets how many to wait for; more than --workers is refused.
        let tooMany = try bard(["coordinator", "--data", ok, "--workers", "2", "--min-workers", "3"])
        XCTAssertNotEqual(tooMany.status, 0)
        XCTAssertTrue(tooMany.err.contains("--min-workers must be 1...--workers"), tooMany.err)
        // Foundation's file errors reach the user as the path and the system's reason, not NSCocoaErrorDomain.
        let cannot = try bard(["keys", "generate", "--out", "/proc/no-such-dir/keys"])
        assertOneLineError(cannot, contains: "/proc/no-such-dir")
        XCTAssertFalse(cannot.err.contains("Domain"), cannot.err)
        // An --out that is a file is refused before anything else happens (a coordinator would wait for workers).
        let file = write("a-file", [1])
        assertOneLineError(try bard(["coordinator", "--data", ok, "--out", file, "--workers", "1"]), contains: file)
        // Worker names are what a log line can show.
        let badName = try bard(["worker", "--name", "two words"])
        XCTAssertNotEqual(badName.status, 0)
        XCTAssertTrue(badName.err.contains("--name must be 1-64 printable"), badName.err)
    }

    /// `--resume DIR` alone finds the run's corpus (by the path recorded at its start, checked by sha256); a moved
    /// corpus is found with --data; a flag that conflicts with the checkpoint is a one-line error naming it.
    func testResumeFindsItsCorpusAndRefusesConflictingFlags() throws {
        let data = write("resume.txt", Array(corpusText().utf8))
        let out = dir + "/resume-out"
        let first = try bard(["train", "--data", data, "--out", out, "--layers", "1", "--embed", "8", "--hidden", "16",
                              "--batch", "4", "--bptt", "10", "--steps", "20", "--dropout", "0"])
        XCTAssertEqual(first.status, 0, first.err)
        let conflict = try bard(["train", "--resume", out, "--steps", "30", "--hidden", "128"])
        assertOneLineError(conflict, contains: "--hidden 128 (the checkpoint has 16)")
        XCTAssertTrue(conflict.err.contains("only --steps, --epochs, --threads, --budget and --data may change"), conflict.err)
        // A resumed run writes in its own directory: another --out is refused, not silently dropped.
        assertOneLineError(try bard(["train", "--resume", out, "--steps", "30", "--out", dir + "/elsewhere"]),
                           contains: "leave out --out")
        // The same values as the checkpoint's are no conflict.
        let same = try bard(["train", "--resume", out, "--steps", "25", "--hidden", "16", "--layers", "1", "--out", out + "/"])
        XCTAssertEqual(same.status, 0, same.err)
        let alone = try bard(["train", "--resume", out, "--steps", "30"])
        XCTAssertEqual(alone.status, 0, alone.err)
        XCTAssertTrue(alone.out.contains("done: step 30"), alone.out)
        let moved = dir + "/moved.txt"
        try FileManager.default.moveItem(atPath: data, toPath: moved)
        assertOneLineError(try bard(["train", "--resume", out, "--steps", "35"]), contains: "give --data PATH to a copy")
        let found = try bard(["train", "--resume", out, "--steps", "35", "--data", moved])
        XCTAssertEqual(found.status, 0, found.err)
        XCTAssertTrue(found.out.contains("done: step 35"), found.out)
        let other = write("other.txt", Array(String(corpusText().reversed()).utf8))  // same characters, another text
        assertOneLineError(try bard(["train", "--resume", out, "--steps", "40", "--data", other]), contains: "not the corpus")
    }

    func testTrainSampleEvalInspect() throws {
        let data = write("c.txt", Array(corpusText().utf8))
        let out = dir + "/out"
        let t = try bard(["train", "--data", data, "--out", out, "--layers", "1", "--embed", "8", "--hidden", "16",
                          "--batch", "4", "--bptt", "10", "--steps", "40", "--dropout", "0"])
        XCTAssertEqual(t.status, 0, t.err)
        XCTAssertTrue(t.out.contains("done: step 40"), t.out)
        let s1 = try bard(["sample", "--checkpoint", out + "/model.safetensors", "--length", "80", "--seed", "3", "--prime", "to be"])
        let s2 = try bard(["sample", "--checkpoint", out + "/model.safetensors", "--length", "80", "--seed", "3", "--prime", "to be"])
        XCTAssertEqual(s1.status, 0, s1.err)
        XCTAssertEqual(s1.out, s2.out)
        XCTAssertTrue(s1.out.hasPrefix("to be"))
        XCTAssertEqual(s1.out.count, 5 + 80 + 1)
        let s3 = try bard(["sample", "--checkpoint", out + "/model.safetensors", "--length", "80", "--seed", "4", "--prime", "to be"])
        XCTAssertNotEqual(s1.out, s3.out)
        assertOneLineError(try bard(["sample", "--checkpoint", out + "/model.safetensors", "--prime", "Zq"]), contains: "not in the model's vocabulary")
        let e = try bard(["eval", "--checkpoint", out + "/model.safetensors", "--data", data, "--json"])
        XCTAssertEqual(e.status, 0, e.err)
        let obj = try JSONSerialization.jsonObject(with: Data(e.out.utf8)) as! [String: Any]
        XCTAssertNotNil(obj["loss"] as? Double)
        XCTAssertNotNil(obj["perplexity"] as? Double)
        XCTAssertNotNil(obj["chars"] as? Int)
        let i = try bard(["inspect", out + "/model.safetensors"])
        XCTAssertTrue(i.out.contains("step: 40"), i.out)
        XCTAssertTrue(i.out.contains("parameters:"), i.out)
        // The book's alpha 0.05 is per step of the summed window loss: lr 0.05 x bptt, also for another --bptt.
        for (extra, lr) in [([] as [String], "lr 0.5 "), (["--lr", "0.3"], "lr 0.3 ")] {
            let b = try bard(["train", "--recipe", "book", "--data", data, "--out", dir + "/book", "--embed", "8", "--hidden", "16",
                              "--bptt", "10", "--steps", "2", "--sample-length", "0"] + extra)
            XCTAssertEqual(b.status, 0, b.err)
            let bi = try bard(["inspect", dir + "/book/model.safetensors"])
            XCTAssertTrue(bi.out.contains("sgd \(lr)"), bi.out)
        }
    }

    /// The deadline recipes carry their budget, which a length asked for on the command line replaces (and which
    /// `--steps` caps when `--budget` is given too), on a new run and on a resume alike.
    func testBudgetRecipesAndTheLengthAsked() throws {
        let data = write("c.txt", Array(corpusText().utf8))
        let small = ["--data", data, "--embed", "8", "--hidden", "16", "--batch", "4", "--bptt", "10", "--sample-length", "0"]
        for recipe in ["10m", "30m", "60m"] {
            let r = try bard(["train", "--recipe", recipe, "--out", dir + "/" + recipe, "--steps", "2", "--budget", "1h"] + small)
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.out.contains("recipe \(recipe) adam lr 0.003 schedule cosine"), r.out)
            XCTAssertTrue(r.out.contains("steps 2 ") && r.out.contains("budget 3600s"), r.out)
            XCTAssertTrue(r.out.contains("done: step 2,"), r.out)
        }
        let steps = try bard(["train", "--recipe", "10m", "--out", dir + "/steps", "--steps", "3"] + small)
        XCTAssertEqual(steps.status, 0, steps.err)
        XCTAssertTrue(steps.out.contains("recipe 10m") && steps.out.contains("steps 3 ") && steps.out.contains("done: step 3,"), steps.out)
        XCTAssertFalse(steps.out.contains("budget"), steps.out)
        let epochs = try bard(["train", "--recipe", "10m", "--out", dir + "/epochs", "--epochs", "1"] + small)
        XCTAssertEqual(epochs.status, 0, epochs.err)
        XCTAssertTrue(epochs.out.contains("recipe 10m") && epochs.out.contains("epochs 1 "), epochs.out)
        XCTAssertFalse(epochs.out.contains("budget"), epochs.out)
        XCTAssertTrue(try bard(["inspect", dir + "/epochs/model.safetensors"]).out.contains("epochs completed: 1"))
        // A spent deadline resumes as complete; --steps on resume replaces it and trains on; --budget extends it.
        let spent = try bard(["train", "--recipe", "10m", "--out", dir + "/spent", "--budget", "2s"] + small)
        XCTAssertEqual(spent.status, 0, spent.err)
        let step = { (out: String) -> Int in
            Int(out.components(separatedBy: "done: step ").last?.prefix { $0.isNumber } ?? "") ?? -1
        }
        let done = step(spent.out)
        XCTAssertGreaterThan(done, 0, spent.out)
        let again = try bard(["train", "--resume", dir + "/spent"])
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssertEqual(step(again.out), done, again.out)
        let more = try bard(["train", "--resume", dir + "/spent", "--steps", "\(done + 2)"])
        XCTAssertEqual(more.status, 0, more.err)
        XCTAssertEqual(step(more.out), done + 2, more.out)
        XCTAssertFalse(more.out.contains("budget"), more.out)
        let longer = try bard(["train", "--resume", dir + "/spent", "--budget", "1h", "--steps", "\(done + 4)"])
        XCTAssertEqual(longer.status, 0, longer.err)
        XCTAssertTrue(longer.out.contains("budget 3600s"), longer.out)
        XCTAssertEqual(step(longer.out), done + 4, longer.out)
    }

    /// A `--count` pool stops at once, with the children's status, on a failure that a restart cannot cure (here a
    /// missing corpus), instead of restarting it for minutes.
    func testWorkerPoolStopsOnAFailureARestartCannotCure() throws {
        let start = Date()
        let r = try bard(["worker", "--count", "2", "--connect", "tcp://127.0.0.1:9", "--data", dir + "/missing.txt"])
        XCTAssertEqual(r.status, 65, r.err)
        XCTAssertTrue(r.err.contains("which a restart cannot cure"), r.err)
        XCTAssertFalse(r.err.contains("restarting"), r.err)
        XCTAssertLessThan(Date().timeIntervalSince(start), 30)
    }

    /// The chapter's toy table, with the chapter's numbers.
    func testGradientsPrintsTheChapterTable() throws {
        let data = write("c.txt", Array(corpusText().utf8))
        let r = try bard(["gradients", "--data", data, "--hidden", "16", "--bptt", "10", "--windows", "2"])
        XCTAssertEqual(r.status, 0, r.err)
        for expected in ["[0.93940638 0.96852968]", "0.99307291", "0.03439552", "0.00118305", "4.06916726e-05", "[5. 5.]", "[9765625. 9765625.]"] {
            XCTAssertTrue(r.out.contains(expected), "missing \(expected) in\n\(r.out)")
        }
        // The measured table: lags 0..9, one column per model, relative to lag 0. The sigmoid RNN's gradient vanishes
        // (each step multiplies by at most 0.25 times the weights); the LSTM's cell keeps orders of magnitude more.
        let rows = r.out.split(separator: "\n").compactMap { line -> [Double]? in
            let cells = line.split(separator: " ").compactMap { Double($0) }
            return cells.count == 4 && line.hasPrefix(String(Int(cells[0]))) ? Array(cells.dropFirst()) : nil
        }
        XCTAssertEqual(rows.count, 10, r.out)
        guard rows.count == 10 else { return }
        XCTAssertEqual(rows[0], [1, 1, 1])
        let sigmoidRNN = rows[9][0], lstm = rows[9][2]
        XCTAssertLessThan(sigmoidRNN, 1e-5, r.out)
        XCTAssertGreaterThan(lstm, 100 * sigmoidRNN, r.out)
        for lag in 1..<10 { XCTAssertLessThan(rows[lag][0], rows[lag - 1][0], "the sigmoid RNN's gradient shrinks every step") }
    }

    /// `bard keys generate` writes owner-only Z85 key files and never overwrites them; a coordinator refuses to
    /// bind a non-loopback address in plaintext unless told --insecure; bad key directories are one-line errors.
    func testKeysAndInsecureBind() throws {
        let keys = dir + "/keys"
        let g = try bard(["keys", "generate", "--out", keys])
        XCTAssertEqual(g.status, 0, g.err)
        for f in ["coordinator.key", "coordinator.pub", "client.key", "client.pub", "authorized_keys"] {
            let attrs = try FileManager.default.attributesOfItem(atPath: keys + "/" + f)
            XCTAssertEqual((attrs[.posixPermissions] as? NSNumber)?.intValue, 0o600, f)
        }
        let pair = try String(contentsOfFile: keys + "/coordinator.key", encoding: .utf8)
        XCTAssertTrue(pair.hasPrefix("public="), pair)
        XCTAssertEqual(pair.split(separator: "\n").map { (line: Substring) -> Int in line.drop { $0 != "=" }.count - 1 }, [40, 40])
        assertOneLineError(try bard(["keys", "generate", "--out", keys]), contains: "never overwritten")
        XCTAssertEqual(try bard(["keys", "generate", "--out", keys, "--client", "laptop"]).status, 0)
        let authorized = try String(contentsOfFile: keys + "/authorized_keys", encoding: .utf8)
        XCTAssertEqual(authorized.split(separator: "\n").count, 2, authorized)
        XCTAssertTrue(authorized.contains(" laptop"), authorized)

        let data = write("c.txt", Array(corpusText().utf8))
        let plain = try bard(["coordinator", "--data", data, "--bind", "tcp://0.0.0.0:5999"])
        XCTAssertNotEqual(plain.status, 0)
        XCTAssertTrue(plain.err.contains("--insecure"), plain.err)
        // A coordinator shard's port follows the same rule (a usage error, as the coordinator's).
        let plainShard = try bard(["shard", "--connect", "tcp://127.0.0.1:5999", "--bind", "tcp://0.0.0.0:5998"])
        XCTAssertEqual(plainShard.status, 64)
        XCTAssertTrue(plainShard.err.contains("--insecure"), plainShard.err)
        try "not a key\n".write(toFile: keys + "/authorized_keys", atomically: true, encoding: .utf8)
        assertOneLineError(try bard(["coordinator", "--data", data, "--bind", "tcp://0.0.0.0:5999", "--keys", keys]),
                           contains: "authorized_keys")
        assertOneLineError(try bard(["worker", "--keys", dir + "/nowhere"]), contains: "nowhere")
    }

    /// `bard plot` draws two runs and a reference overlay into well-formed SVG; bad input is a one-line error.
    func testPlotWritesValidSVG() throws {
        let data = write("c.txt", Array(corpusText().utf8))
        for run in ["a", "b"] {
            let t = try bard(["train", "--data", data, "--out", dir + "/" + run, "--layers", "1", "--embed", "8", "--hidden", "16",
                              "--batch", "4", "--bptt", "10", "--epochs", "2", "--dropout", "0", "--seed", run == "a" ? "1" : "2"])
            XCTAssertEqual(t.status, 0, t.err)
        }
        let ref = write("ref.jsonl", Array("{\"cfg\": \"x\", \"epoch\": 1, \"val\": 2.5}\n{\"cfg\": \"x\", \"epoch\": 2, \"val\": 2.2}\n{\"cfg\": \"y\", \"epoch\": 1, \"val\": 2.9}\n".utf8))
        let svg = dir + "/curve.svg"
        let p = try bard(["plot", dir + "/a/metrics.jsonl", dir + "/b/metrics.jsonl", "-o", svg, "--reference", ref, "--reference-config", "x"])
        XCTAssertEqual(p.status, 0, p.err)
        let text = try String(contentsOfFile: svg, encoding: .utf8)
        final class Paths: NSObject, XMLParserDelegate {
            var series: [String] = []
            func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                        attributes: [String: String] = [:]) {
                if name == "path", attributes["class"] == "series" { series.append(attributes["data-name"] ?? "") }
            }
        }
        let paths = Paths()
        let parser = XMLParser(data: Data(text.utf8))
        parser.delegate = paths
        XCTAssertTrue(parser.parse(), "curve.svg is not well-formed: \(parser.parserError.map { "\($0)" } ?? "")")
        XCTAssertEqual(paths.series, ["a train", "a validation", "b train", "b validation", "x (ref)"])
        assertOneLineError(try bard(["plot", dir + "/nope.jsonl", "-o", svg]), contains: "nope.jsonl")
        assertOneLineError(try bard(["plot", data, "-o", svg]), contains: "c.txt:1")
    }
}
