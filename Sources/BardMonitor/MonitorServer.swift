import FlyingFox
import Foundation

/// Serves a `RunMonitor` over HTTP: Prometheus text at /metrics, the dashboard at /, its data at /api/status and
/// /curve.svg. Runs on Swift concurrency's threads beside the (blocking) training loop.
public final class MonitorServer: @unchecked Sendable {
    let server: HTTPServer
    var task: Task<Void, Error>?
    public private(set) var port: UInt16 = 0
    public let host: String

    /// `address` is HOST:PORT (IPv4; port 0 picks a free one).
    public init(address: String, monitor: RunMonitor) throws {
        guard let colon = address.lastIndex(of: ":"), let p = UInt16(address[address.index(after: colon)...]) else {
            throw MonitorError("--metrics \(address): expected HOST:PORT, e.g. 127.0.0.1:9464")
        }
        host = colon == address.startIndex ? "0.0.0.0" : String(address[..<colon])
        let socketAddress: sockaddr_in
        do { socketAddress = try .inet(ip4: host == "localhost" ? "127.0.0.1" : host, port: p) } catch {
            throw MonitorError("--metrics \(address): \(host) is not an IPv4 address")
        }
        server = HTTPServer(address: socketAddress, logger: .disabled)
        let routes: [(String, @Sendable (HTTPRequest) async throws -> HTTPResponse)] = [
            ("GET /metrics", { _ in
                HTTPResponse(statusCode: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                             body: Data(monitor.prometheusText()))
            }),
            ("GET /api/status", { _ in
                HTTPResponse(statusCode: .ok, headers: [.contentType: "application/json", .init("Cache-Control"): "no-store"],
                             body: monitor.statusJSON())
            }),
            ("GET /curve.svg", { _ in
                HTTPResponse(statusCode: .ok, headers: [.contentType: "image/svg+xml", .init("Cache-Control"): "no-store"],
                             body: Data(monitor.curveSVG().utf8))
            }),
            ("GET /", { _ in
                HTTPResponse(statusCode: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: Data(dashboardHTML.utf8))
            }),
        ]
        let server = self.server
        let ready = DispatchSemaphore(value: 0)
        let outcome = Outcome()
        task = Task {
            for (route, handler) in routes { await server.appendRoute(HTTPRoute(stringLiteral: route), handler: handler) }
            let run = Task { try await server.run() }
            do {
                try await server.waitUntilListening(timeout: 5)
                if case .ip4(_, let port) = await server.listeningAddress { outcome.port = port }
            } catch { outcome.error = error }
            ready.signal()
            try await run.value
        }
        ready.wait()
        if let error = outcome.error { throw MonitorError("--metrics \(address): cannot listen (\(error))") }
        port = outcome.port
    }

    final class Outcome: @unchecked Sendable {
        var port: UInt16 = 0
        var error: Error?
    }

    public var url: String { "http://\(host == "0.0.0.0" ? "127.0.0.1" : host):\(port)/" }

    public func stop() {
        let server = self.server
        let done = DispatchSemaphore(value: 0)
        Task { await server.stop(timeout: 1); done.signal() }
        _ = done.wait(timeout: .now() + 3)
        task?.cancel()
    }
}

public struct MonitorError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}
