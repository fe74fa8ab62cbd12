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
    func records(_ n: Int, epochEvery: Int) -> [[String: Any]] {
        (1...n).map { i in
            var r: [String: Any] = ["step": i, "epoch": 1 + (i - 1) / epochEvery, "chars": i * 100, "train_loss": 4.0 / Double(i).squareRoot(),
                                    "chars_per_s": 5000.0, "workers": 2, "evictions": i / 50, "rejected": i / 10, "bytes_moved": i * 1000,
                                    "compute_s": 0.2, "communication_s": 0.01, "update_s": 0.02]
            if i % epochEvery == 0 { r["val_loss"] = 3.0 / Double(i).squareRoot() }
            return r
        }
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
                     "bard_workers_alive 1.0", "bard_step 100.0", "bard_step_seconds{phase=\"compute\"} 0.2", "bard_chars_per_second 5000.0"] {
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
