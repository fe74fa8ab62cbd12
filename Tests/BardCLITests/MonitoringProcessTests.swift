import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest

/// The coordinator's metrics endpoint and dashboard during a real run: scraped over HTTP, and the page rendered
/// by headless Chromium (Debian's `chromium`, installed by scripts/bootstrap.sh --test). Slow: BARD_SLOW=1.
final class MonitoringProcessTests: ProcessTestCase {
    func get(_ url: String) -> String? {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var body: String?
        URLSession.shared.dataTask(with: URL(string: url)!) { data, response, _ in
            if let data, (response as? HTTPURLResponse)?.statusCode == 200 { body = String(decoding: data, as: UTF8.self) }
            done.signal()
        }.resume()
        _ = done.wait(timeout: .now() + 10)
        return body
    }

    func testMetricsAndDashboardDuringARun() throws {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let browser = try XCTUnwrap(chromium, "Debian's chromium is missing: run scripts/bootstrap.sh --test")
        let data = try writeCorpus()
        let endpoint = "tcp://127.0.0.1:\(Self.freePort())"
        let clog = dir + "/c.log"
        let coordinator = try launch(["coordinator", "--data", data, "--layers", "1", "--embed", "16", "--hidden", "64", "--batch", "16",
                                      "--bptt", "20", "--epochs", "50", "--workers", "2", "--bind", endpoint, "--out", dir + "/c",
                                      "--metrics", "127.0.0.1:0"], log: clog)
        _ = try launch(["worker", "--connect", endpoint, "--name", "wa"], log: dir + "/wa.log")
        _ = try launch(["worker", "--connect", endpoint, "--name", "wb"], log: dir + "/wb.log")
        XCTAssertNotNil(waitFor(30) { read(clog).contains("dashboard on http") }, read(clog))
        let url = try XCTUnwrap(read(clog).components(separatedBy: "dashboard on ").last?.split(separator: "\n").first.map(String.init))
        // The address really bound is printed, and a loopback address is loopback only.
        XCTAssertTrue(read(clog).contains("metrics server listening on 127.0.0.1:"), read(clog))
        XCTAssertFalse(read(clog).contains("(all interfaces)"), read(clog))

        var metrics = ""
        XCTAssertNotNil(waitFor(60) {
            metrics = get(url + "metrics") ?? ""
            return metrics.contains("bard_workers_alive 2.0") && metrics.contains("bard_validation_loss")
        }, "metrics never showed two workers and a validation loss:\n\(metrics)\n\(read(clog))")
        for name in ["bard_steps_total", "bard_train_loss", "bard_chars_per_second", "bard_evictions_total 0",
                     "bard_rejected_messages_total 0", "bard_bytes_moved_total", "bard_step_seconds{phase=\"compute\"}",
                     "bard_step_seconds{phase=\"communication\"}", "bard_step_seconds{phase=\"update\"}",
                     "bard_denied_handshakes_total", "bard_dropped_messages_total", "bard_quarantined_workers"] {
            XCTAssertTrue(metrics.contains(name), "missing \(name) in\n\(metrics)")
        }
        let steps = metrics.split(separator: "\n").first { $0.hasPrefix("bard_steps_total ") }.flatMap { Double($0.split(separator: " ")[1]) }
        XCTAssertGreaterThan(steps ?? 0, 0)

        // The page renders its chart and worker table from live data, with nothing fetched from elsewhere.
        let page = Process()
        page.executableURL = URL(fileURLWithPath: browser)
        page.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=" + dir + "/chromium",
                          "--virtual-time-budget=5000", "--dump-dom", url]
        let out = Pipe()
        page.standardOutput = out
        page.standardError = FileHandle.nullDevice
        try page.run()
        let dom = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        page.waitUntilExit()
        XCTAssertTrue(dom.contains("<path class=\"series\" data-name=\"train\""), "no train curve in the rendered page:\n\(dom.prefix(3000))")
        XCTAssertTrue(dom.contains("data-name=\"validation\""), "no validation curve:\n\(dom.prefix(3000))")
        XCTAssertTrue(dom.contains("<tr><td>wa</td>") && dom.contains("<tr><td>wb</td>"), "worker table not rendered:\n\(dom.prefix(3000))")
        let html = get(url) ?? ""
        XCTAssertFalse(html.contains("http://") || html.contains("https://"), "the page must need nothing from the internet")

        coordinator.interrupt()
        XCTAssertTrue(waitExit(coordinator, timeout: 30))
        XCTAssertEqual(coordinator.terminationStatus, 130, read(clog))
    }
}
