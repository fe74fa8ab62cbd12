import BardMetrics
import BardMonitor
import BardPlot
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest

/// Counts the elements of an SVG (or any XML) document; fails on malformed XML.
final class ElementCounter: NSObject, XMLParserDelegate {
    var counts: [String: Int] = [:]
    var classes: [String] = []
    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
        counts[name, default: 0] += 1
        if let c = attributes["class"] { classes.append(c) }
    }
    static func parse(_ text: String) -> ElementCounter? {
        let counter = ElementCounter()
        let parser = XMLParser(data: Data(text.utf8))
        parser.delegate = counter
        return parser.parse() ? counter : nil
    }
}

final class MonitorTests: XCTestCase {
    func records(_ n: Int, epochEvery: Int) -> [MetricsRecord] {
        (1...n).map { i in
            var r = MetricsRecord()
            r.step = i; r.epoch = 1 + (i - 1) / epochEvery; r.chars = i * 100; r.trainLoss = 4.0 / Double(i).squareRoot()
            r.charsPerS = 5000; r.workers = 2; r.evictions = i / 50; r.rejected = i / 10; r.bytesMoved = i * 1000
            r.computeS = 0.2; r.communicationS = 0.01; r.updateS = 0.02
            r.rollbacks = i / 60
            r.traffic = [PeerTraffic(name: "lead", role: .lead, sent: 10, received: 20),
                         PeerTraffic(name: "s0", role: .shard, sent: 300, received: 200),
                         PeerTraffic(name: "w0", role: .worker, sent: 200, received: 300 + i % 2)]
            if i % epochEvery == 0 { r.valLoss = 3.0 / Double(i).squareRoot() }
            return r
        }
    }

    /// A record's JSON line has the snake_case keys of metrics.jsonl, leaves out what it lacks and non-finite values,
    /// and decodes back; lines of another shape decode defensively.
    func testMetricsRecordRoundTripsAsAJSONLine() throws {
        var r = records(40, epochEvery: 40).last!
        r.gradNorm = .infinity
        let line = r.jsonLine()
        XCTAssertTrue(line.contains("\"train_loss\":"), line)
        XCTAssertTrue(line.contains("\"chars_per_s\":5000"), line)
        XCTAssertFalse(line.contains("grad_norm"), line)
        XCTAssertFalse(line.contains("val_perplexity"), line)
        var expected = r
        expected.gradNorm = nil
        XCTAssertEqual(MetricsRecord.decode(line: line), expected)
        XCTAssertNil(MetricsRecord.decode(line: "[1, 2]"))
        XCTAssertNil(MetricsRecord.decode(line: "{\"step\": \"seven\"}"))
        XCTAssertEqual(MetricsRecord.decode(line: "{\"other\": 1}"), MetricsRecord())
    }

    /// The chart is well-formed SVG with one path per series, labelled; reference epochs land at epoch x chars/epoch.
    func testLossChartIsValidSVG() throws {
        var run = RunCurves(name: "r & <1>")
        for r in records(120, epochEvery: 40) { run.add(r) }
        XCTAssertEqual(run.charsPerEpoch, 4000)
        let ref = ReferenceCurves(curves: [("ref", [(1, 2.0), (2, 1.8), (3, 1.7)])])
        let svg = lossChart(runs: [run, run], reference: ref, charsPerEpoch: nil, title: "t").svg()
        let parsed = try XCTUnwrap(ElementCounter.parse(svg), "not well-formed XML")
        XCTAssertEqual(parsed.counts["svg"], 1)
        XCTAssertEqual(parsed.classes.filter { $0 == "series" }.count, 5)  // 2 runs x (train, validation) + 1 reference
        XCTAssertTrue(svg.contains("r &amp; &lt;1&gt; validation"))
        XCTAssertEqual(parsed.counts["circle"], 6)  // validation markers: 3 per run
        // Live, the reference stops a little past the run (12,000 chars = 3 epochs here; cut at 1.25x).
        let long = ReferenceCurves(curves: [("long", (1...10).map { (Double($0), 2.0) })])
        let live = lossChart(runs: [run], reference: long, charsPerEpoch: nil, title: "t", referenceFollowsRuns: true)
        XCTAssertEqual(live.series.last?.points.map(\.x), [4000, 8000, 12000])
        XCTAssertEqual(lossChart(runs: [run], reference: long, charsPerEpoch: nil, title: "t").series.last?.points.count, 10)
        XCTAssertEqual(run.smoothedTrain(buckets: 10).count, 10)
        XCTAssertEqual(run.smoothedTrain(buckets: 10)[0].y, run.train[0..<12].map(\.y).reduce(0, +) / 12, accuracy: 1e-12)
    }

    /// Running totals from the coordinator become monotone counters; gauges follow the last record.
    func testPrometheusTextFollowsTheRecords() {
        let monitor = RunMonitor(title: "t", totalSteps: 100)
        let before = String(decoding: monitor.prometheusText(), as: UTF8.self)
        XCTAssertFalse(before.contains("bard_validation_loss"), before)
        for r in records(100, epochEvery: 40) { monitor.record(r, workers: [WorkerRow(name: "w0", columns: "0..<8", steps: 3, secondsSinceHeard: 0.5)]) }
        let text = String(decoding: monitor.prometheusText(), as: UTF8.self)
        for line in ["bard_steps_total 100", "bard_evictions_total 2", "bard_rejected_messages_total 10", "bard_bytes_moved_total 100000",
                     "bard_workers_alive 1.0", "bard_step 100.0", "bard_step_seconds{phase=\"compute\"} 0.2", "bard_chars_per_second 5000.0",
                     "bard_rollbacks_total 1",
                     // Each process's bytes, summed over the steps.
                     "bard_peer_bytes_total{role=\"lead\",peer=\"lead\",direction=\"sent\"} 1000",
                     "bard_peer_bytes_total{role=\"shard\",peer=\"s0\",direction=\"received\"} 20000",
                     "bard_peer_bytes_total{role=\"worker\",peer=\"w0\",direction=\"received\"} 30050"] {
            XCTAssertTrue(text.contains(line), "missing \(line) in\n\(text)")
        }
        XCTAssertTrue(text.contains("bard_validation_loss \(3.0 / 80.0.squareRoot())"), text)
        let status = try? JSONSerialization.jsonObject(with: monitor.statusJSON()) as? [String: Any]
        XCTAssertEqual(status?["step"] as? Int, 100)
        XCTAssertEqual((status?["workers"] as? [[String: Any]])?.first?["name"] as? String, "w0")
    }

    /// The real HTTP server on an ephemeral port: every route answers with its content type; bad addresses are errors.
    func testServerAnswersOverHTTP() throws {
        let monitor = RunMonitor(title: "served", totalSteps: 10)
        for r in records(10, epochEvery: 5) { monitor.record(r) }
        let server = try MonitorServer(address: "127.0.0.1:0", monitor: monitor)
        defer { server.stop() }
        XCTAssertGreaterThan(server.port, 0)
        func get(_ path: String) throws -> (type: String, body: String) {
            let done = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var result: (String, String)?
            URLSession.shared.dataTask(with: URL(string: server.url + path)!) { data, response, _ in
                if let data, let http = response as? HTTPURLResponse, http.statusCode == 200 {
                    result = (http.value(forHTTPHeaderField: "Content-Type") ?? "", String(decoding: data, as: UTF8.self))
                }
                done.signal()
            }.resume()
            _ = done.wait(timeout: .now() + 10)
            return try XCTUnwrap(result, "GET \(path) failed")
        }
        let metrics = try get("metrics")
        XCTAssertTrue(metrics.type.hasPrefix("text/plain"))
        XCTAssertTrue(metrics.body.contains("bard_steps_total 10"), metrics.body)
        XCTAssertTrue(try get("").body.contains("<table id=\"workers\">"))
        XCTAssertNotNil(ElementCounter.parse(try get("curve.svg").body))
        XCTAssertTrue(try get("api/status").body.contains("\"title\":\"served\""))
        XCTAssertThrowsError(try MonitorServer(address: "nowhere", monitor: monitor))
        XCTAssertThrowsError(try MonitorServer(address: "300.1.1.1:80", monitor: monitor))
    }

    func testMetricsFileErrors() throws {
        let dir = NSTemporaryDirectory() + "bard-plot-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertThrowsError(try RunCurves.load(path: dir + "/missing.jsonl")) { XCTAssertTrue("\($0)".contains("no such file")) }
        try "{\"chars\": 1, \"train_loss\": 2}\nnot json\n".write(toFile: dir + "/bad.jsonl", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try RunCurves.load(path: dir + "/bad.jsonl")) { XCTAssertTrue("\($0)".contains("bad.jsonl:2"), "\($0)") }
        try "{\"cfg\": \"a\", \"epoch\": 1, \"val\": 2}\n".write(toFile: dir + "/ref.jsonl", atomically: true, encoding: .utf8)
        XCTAssertEqual(try ReferenceCurves.load(path: dir + "/ref.jsonl").curves.count, 1)
        XCTAssertThrowsError(try ReferenceCurves.load(path: dir + "/ref.jsonl", only: ["b"]))
    }
}

#if canImport(Glibc)
import Glibc
private let noSignal = Int32(MSG_NOSIGNAL)
private let stream = Int32(SOCK_STREAM.rawValue)
#else
import Darwin
private let noSignal: Int32 = 0
private let stream = SOCK_STREAM
#endif

/// A plain TCP client for the hostile cases URLSession cannot make.
private struct RawClient {
    let fd: Int32

    init(port: UInt16) throws {
        fd = socket(AF_INET, stream, 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard fd >= 0, rc == 0 else { throw NSError(domain: "connect", code: Int(errno)) }
        #if !canImport(Glibc)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
        #endif
    }

    func close() { _ = posixClose(fd) }

    /// Sends all of `text`; false once the server has closed or reset the connection.
    @discardableResult
    func send(_ bytes: [UInt8], timeout: Double = 1) -> Bool {
        var tv = timeval()
        tv.tv_sec = .init(timeout)
        tv.tv_usec = .init((timeout - Double(Int(timeout))) * 1e6)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { posixSend(fd, $0.baseAddress, $0.count, noSignal) }
            if n < 0 { return errno == EAGAIN || errno == EWOULDBLOCK }  // a full buffer is not a close
            sent += n
        }
        return true
    }

    /// Reads until the server closes (true) or `timeout` passes (false), returning what came.
    func readToClose(timeout: Double) -> (text: String, closed: Bool) {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return (String(decoding: data, as: UTF8.self), false) }
            var item = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&item, 1, Int32(left * 1000) + 1) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { return (String(decoding: data, as: UTF8.self), true) }  // EOF or reset: closed
            data += buffer[0..<n]
        }
    }

    /// One request, the whole answer.
    static func get(_ port: UInt16, _ path: String, method: String = "GET") -> String? {
        guard let c = try? RawClient(port: port) else { return nil }
        defer { c.close() }
        c.send(Array("\(method) \(path) HTTP/1.1\r\nHost: test\r\n\r\n".utf8))
        let (text, closed) = c.readToClose(timeout: 5)
        return closed ? text : nil
    }
}

private func posixClose(_ fd: Int32) -> Int32 { close(fd) }
private func posixSend(_ fd: Int32, _ p: UnsafeRawPointer?, _ n: Int, _ flags: Int32) -> Int { send(fd, p, n, flags) }

private func seconds(since start: Date) -> Double { Date().timeIntervalSince(start) }

final class MonitorHardeningTests: XCTestCase {
    final class Lines: @unchecked Sendable {
        let lock = NSLock()
        var all: [String] = []
        func add(_ s: String) { lock.lock(); all.append(s); lock.unlock() }
        var text: String { lock.lock(); defer { lock.unlock() }; return all.joined(separator: "\n") }
    }

    func makeServer(_ limits: MonitorLimits, log: Lines = Lines()) throws -> MonitorServer {
        let monitor = RunMonitor(title: "hardened", totalSteps: 10)
        return try MonitorServer(address: "127.0.0.1:0", monitor: monitor, limits: limits, log: { log.add($0) })
    }

    /// Past the cap, connections are closed at once; idle ones go at the head deadline, and a normal request is
    /// served again.
    func testConnectionCapClosesExtrasAndIdleOnesExpire() throws {
        let server = try makeServer(MonitorLimits(maxConnections: 8, headDeadline: 1))
        defer { server.stop() }
        let idle = try (0..<8).map { _ in try RawClient(port: server.port) }
        defer { idle.forEach { $0.close() } }
        Thread.sleep(forTimeInterval: 0.1)  // let the server accept them
        for _ in 0..<4 {
            let extra = try RawClient(port: server.port)
            let start = Date()
            let (text, closed) = extra.readToClose(timeout: 0.5)
            XCTAssertTrue(closed, "a connection past the cap must be closed at once")
            XCTAssertLessThan(seconds(since: start), 0.5)
            XCTAssertTrue(text.isEmpty || text.hasPrefix("HTTP/1.1 503"), text)
            extra.close()
        }
        XCTAssertGreaterThanOrEqual(server.refusedConnections, 4)
        // The idle eight are closed at the head deadline, with no help from their side; then there is room.
        for c in idle { XCTAssertTrue(c.readToClose(timeout: 3).closed) }
        let metrics = try XCTUnwrap(RawClient.get(server.port, "/metrics"))
        XCTAssertTrue(metrics.hasPrefix("HTTP/1.1 200 OK"), metrics)
        XCTAssertTrue(metrics.contains("bard_steps_total"), metrics)
    }

    /// An endless header line is answered 431 and cut off once the head passes the size limit, at once.
    func testEndlessHeaderLineIsCutOffAtTheSizeLimit() throws {
        let server = try makeServer(MonitorLimits(maxHeadBytes: 8192, headDeadline: 5))
        defer { server.stop() }
        let c = try RawClient(port: server.port)
        defer { c.close() }
        let start = Date()
        XCTAssertTrue(c.send(Array("GET /metrics HTTP/1.1\r\nX-Endless: ".utf8)))
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 4096)
        var sent = 0
        // Keep sending as an attacker would, until the server hangs up (a full buffer also means it stopped reading).
        while c.send(chunk, timeout: 0.2) && sent < 64 << 20 && seconds(since: start) < 5 {
            sent += chunk.count
            var item = pollfd(fd: c.fd, events: Int16(POLLIN), revents: 0)
            if poll(&item, 1, 0) > 0 { break }
        }
        let (text, closed) = c.readToClose(timeout: 3)
        XCTAssertTrue(closed)
        XCTAssertTrue(text.isEmpty || text.hasPrefix("HTTP/1.1 431"), text)
        XCTAssertLessThan(seconds(since: start), 4, "cut off by size, long before the deadline")
        XCTAssertLessThan(sent, 16 << 20, "the server must stop reading an endless line")
        XCTAssertNotNil(RawClient.get(server.port, "/metrics"), "the server still serves")
    }

    /// A head sent a byte at a time, and a connection that sends nothing, are closed at the head deadline.
    func testSlowAndIdleConnectionsAreClosedAtTheHeadDeadline() throws {
        let server = try makeServer(MonitorLimits(headDeadline: 1))
        defer { server.stop() }
        let idle = try RawClient(port: server.port)
        defer { idle.close() }
        let slow = try RawClient(port: server.port)
        defer { slow.close() }
        let start = Date()
        slow.send(Array("GET /metrics HTTP/1.1\r\nX-Slow: ".utf8))
        var slowClosed = false
        while !slowClosed && seconds(since: start) < 4 {
            slowClosed = !slow.send([UInt8(ascii: "a")]) || slow.readToClose(timeout: 0.1).closed
        }
        XCTAssertTrue(slowClosed)
        XCTAssertGreaterThan(seconds(since: start), 0.9)
        XCTAssertLessThan(seconds(since: start), 2.5)
        let (text, closed) = idle.readToClose(timeout: 3)
        XCTAssertTrue(closed)
        XCTAssertTrue(text.isEmpty || text.hasPrefix("HTTP/1.1 408"), text)
        XCTAssertLessThan(seconds(since: start), 2.5)
    }

    /// A listening socket that breaks is replaced, with a line in the log, and the server answers again.
    func testBrokenListenerIsRestartedAndLogged() throws {
        let lines = Lines()
        let server = try makeServer(MonitorLimits(), log: lines)
        defer { server.stop() }
        XCTAssertNotNil(RawClient.get(server.port, "/metrics"))
        // Find the listening descriptor by its port, as any other code in the process could break it.
        var listener: Int32?
        for fd in Int32(0)..<4096 {
            var address = sockaddr_in(), length = socklen_t(MemoryLayout<sockaddr_in>.size)
            var accepting: Int32 = 0, size = socklen_t(MemoryLayout<Int32>.size)
            let named = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            if named == 0, UInt16(bigEndian: address.sin_port) == server.port,
               getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &size) == 0, accepting == 1 { listener = fd; break }
        }
        let fd = try XCTUnwrap(listener)
        _ = shutdown(fd, Int32(SHUT_RDWR))
        let deadline = Date().addingTimeInterval(5)
        while server.listenerRestarts == 0 && Date() < deadline { usleep(20_000) }
        XCTAssertEqual(server.listenerRestarts, 1)
        XCTAssertTrue(lines.text.contains("restarting"), lines.text)
        var answer: String?
        while answer == nil && Date() < deadline { answer = RawClient.get(server.port, "/metrics"); usleep(50_000) }
        XCTAssertTrue(answer?.hasPrefix("HTTP/1.1 200 OK") ?? false, answer ?? "no answer")
        XCTAssertTrue(lines.text.contains("listening again on 127.0.0.1:\(server.port)"), lines.text)
    }

    /// `:PORT` is every interface and says so; a named address is that address.
    func testBoundAddressIsReported() throws {
        let monitor = RunMonitor(title: "t", totalSteps: 1)
        let all = try MonitorServer(address: ":0", monitor: monitor)
        defer { all.stop() }
        XCTAssertTrue(all.listensOnAllInterfaces)
        XCTAssertEqual(all.boundAddress, "0.0.0.0:\(all.port)")
        XCTAssertEqual(all.url, "http://127.0.0.1:\(all.port)/")
        let local = try MonitorServer(address: "localhost:0", monitor: monitor)
        defer { local.stop() }
        XCTAssertFalse(local.listensOnAllInterfaces)
        XCTAssertEqual(local.boundAddress, "127.0.0.1:\(local.port)")
        XCTAssertThrowsError(try MonitorServer(address: "127.0.0.1:\(local.port)", monitor: monitor)) {
            XCTAssertTrue("\($0)".contains("cannot listen"), "\($0)")
        }
    }

    /// Only GET and HEAD of the four routes; everything else gets its error status.
    func testMethodsAndPaths() throws {
        let server = try makeServer(MonitorLimits())
        defer { server.stop() }
        XCTAssertTrue(RawClient.get(server.port, "/nowhere")?.hasPrefix("HTTP/1.1 404") ?? false)
        XCTAssertTrue(RawClient.get(server.port, "/metrics", method: "POST")?.hasPrefix("HTTP/1.1 405") ?? false)
        let head = try XCTUnwrap(RawClient.get(server.port, "/api/status?x=1", method: "HEAD"))
        XCTAssertTrue(head.hasPrefix("HTTP/1.1 200 OK") && head.hasSuffix("\r\n\r\n"), head)
        XCTAssertTrue(RawClient.get(server.port, "", method: "NOT-HTTP")?.hasPrefix("HTTP/1.1 400") ?? false)
    }

    /// The coordinator's numbers appear under their documented names, at 0 from the start.
    func testClusterMetricsArePublished() {
        let monitor = RunMonitor(title: "t", totalSteps: 1)
        var text = String(decoding: monitor.prometheusText(), as: UTF8.self)
        for name in ["bard_denied_handshakes_total 0", "bard_dropped_messages_total 0", "bard_quarantined_workers 0"] {
            XCTAssertTrue(text.contains(name), "missing \(name) in\n\(text)")
        }
        monitor.publish(.deniedHandshakes, 3)
        monitor.publish(.deniedHandshakes, 5)
        monitor.publish(.droppedMessages, 2)
        monitor.publish(.quarantinedWorkers, 2)
        monitor.publish(.quarantinedWorkers, 1)
        text = String(decoding: monitor.prometheusText(), as: UTF8.self)
        for line in ["bard_denied_handshakes_total 5", "bard_dropped_messages_total 2", "bard_quarantined_workers 1"] {
            XCTAssertTrue(text.contains(line), "missing \(line) in\n\(text)")
        }
    }
}
