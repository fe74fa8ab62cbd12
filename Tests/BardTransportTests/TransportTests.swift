import Foundation
import XCTest
import BardTransport

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

private func milliseconds(since start: DispatchTime) -> Double {
    Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e6
}

final class SocketTests: XCTestCase {
    func makeRouter(_ context: ZMQContext, configure: (ZMQSocket) throws -> Void = { _ in }) throws -> (ZMQSocket, String) {
        let router = try ZMQSocket(context: context, kind: .router)
        try configure(router)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint
        XCTAssertTrue(endpoint.hasPrefix("tcp://127.0.0.1:"), endpoint)
        XCTAssertFalse(endpoint.hasSuffix(":*"), endpoint)
        return (router, endpoint)
    }

    func testRouterDealerRoundTripWithRoutingIDAndMultipartFrames() throws {
        let context = try ZMQContext()
        let (router, endpoint) = try makeRouter(context)
        let dealer = try ZMQSocket(context: context, kind: .dealer)
        try dealer.setRoutingID("worker-1")
        try dealer.connect(endpoint)

        let payload = (0...255).map { UInt8($0) }
        XCTAssertEqual(try dealer.send(frames: [bytes("grad"), [], payload]), .sent)
        let received = try XCTUnwrap(router.receive(timeoutMilliseconds: 2000))
        XCTAssertEqual(received, [bytes("worker-1"), bytes("grad"), [], payload])

        XCTAssertEqual(try router.send(frames: [bytes("worker-1"), bytes("params"), bytes("v2")]), .sent)
        XCTAssertEqual(try dealer.receive(timeoutMilliseconds: 2000), [bytes("params"), bytes("v2")])

        // ROUTER_MANDATORY is on by default: an unknown peer is reported, not silently dropped.
        XCTAssertEqual(try router.send(frames: [bytes("nobody"), bytes("x")]), .peerUnreachable)
        XCTAssertThrowsError(try router.send(frames: []))
    }

    func testReceiveTimeoutReturnsNilPromptly() throws {
        let context = try ZMQContext()
        let (router, _) = try makeRouter(context)
        var start = DispatchTime.now()
        XCTAssertNil(try router.receive(timeoutMilliseconds: 150))
        let waited = milliseconds(since: start)
        XCTAssertGreaterThanOrEqual(waited, 140)
        XCTAssertLessThan(waited, 600)

        start = DispatchTime.now()
        XCTAssertNil(try router.receive(timeoutMilliseconds: 0))
        XCTAssertLessThan(milliseconds(since: start), 50)
    }

    func testOversizedMessageDisconnectsPeerWithoutDelivery() throws {
        let context = try ZMQContext()
        let (router, endpoint) = try makeRouter(context) { try $0.setMaxMessageSize(bytes: 1024) }
        let offender = try ZMQSocket(context: context, kind: .dealer)
        try offender.setRoutingID("big")
        try offender.setReconnectInterval(milliseconds: 10_000) // stay away once dropped
        try offender.connect(endpoint)

        XCTAssertEqual(try offender.send(frames: [bytes("hello")]), .sent)
        XCTAssertEqual(try router.receive(timeoutMilliseconds: 2000), [bytes("big"), bytes("hello")])

        XCTAssertEqual(try offender.send(frames: [[UInt8](repeating: 7, count: 4096)]), .sent)
        XCTAssertNil(try router.receive(timeoutMilliseconds: 300), "oversized message must not be delivered")

        // The router dropped the connection: with ROUTER_MANDATORY the routing id is now unreachable.
        let start = DispatchTime.now()
        var result = ZMQSocket.SendResult.sent
        while milliseconds(since: start) < 2000 {
            result = try router.send(frames: [bytes("big"), bytes("ping")])
            if result == .peerUnreachable { break }
            usleep(20_000)
        }
        XCTAssertEqual(result, .peerUnreachable)

        // The router itself is fine: another peer still gets through.
        let polite = try ZMQSocket(context: context, kind: .dealer)
        try polite.setRoutingID("small")
        try polite.connect(endpoint)
        XCTAssertEqual(try polite.send(frames: [bytes("fits")]), .sent)
        XCTAssertEqual(try router.receive(timeoutMilliseconds: 2000), [bytes("small"), bytes("fits")])
    }

    func testOptionSettersAcceptDeliberateValues() throws {
        let context = try ZMQContext()
        let dealer = try ZMQSocket(context: context, kind: .dealer)
        try dealer.setLinger(milliseconds: 100)
        try dealer.setSendHighWaterMark(50)
        try dealer.setReceiveHighWaterMark(50)
        try dealer.setHeartbeatInterval(milliseconds: 1000)
        try dealer.setHeartbeatTimeout(milliseconds: 3000)
        try dealer.setHeartbeatTTL(milliseconds: 5000)
        try dealer.setReconnectInterval(milliseconds: 200)
        try dealer.setReconnectIntervalMax(milliseconds: 5000)
        try dealer.setImmediate(true)
        try dealer.setZAPDomain("bard")
        XCTAssertThrowsError(try dealer.setHeartbeatTTL(milliseconds: 50)) // would silently be 0 in libzmq
        XCTAssertThrowsError(try dealer.setRoutingID([]))
        XCTAssertThrowsError(try dealer.setCurveServerKey("too-short"))
        // IMMEDIATE with no connection: the send is refused instead of queued.
        XCTAssertEqual(try dealer.send(frames: [bytes("x")]), .wouldBlock)
        dealer.close()
        XCTAssertThrowsError(try dealer.send(frames: [bytes("x")])) { error in
            XCTAssertEqual(error as? ZMQError, .closed(operation: "zmq_send"))
        }
    }

    func testSignalDuringReceiveSurfacesAsInterrupted() throws {
        signal(SIGUSR1) { _ in } // no-op handler: the signal only interrupts poll()
        let context = try ZMQContext()
        final class Shared: @unchecked Sendable {
            let lock = NSLock()
            var thread: pthread_t?
            var outcome: String?
            func set(_ body: (Shared) -> Void) { lock.lock(); body(self); lock.unlock() }
            func get<T>(_ body: (Shared) -> T) -> T { lock.lock(); defer { lock.unlock() }; return body(self) }
        }
        let shared = Shared()
        let worker = Thread {
            do {
                let socket = try ZMQSocket(context: context, kind: .dealer)
                shared.set { $0.thread = pthread_self() }
                let result = try socket.receive(timeoutMilliseconds: 3000)
                shared.set { $0.outcome = result == nil ? "timeout" : "message" }
            } catch ZMQError.interrupted {
                shared.set { $0.outcome = "interrupted" }
            } catch {
                shared.set { $0.outcome = "\(error)" }
            }
        }
        worker.start()
        let start = DispatchTime.now()
        while shared.get({ $0.outcome }) == nil && milliseconds(since: start) < 4000 {
            usleep(50_000)
            if let thread = shared.get({ $0.thread }), shared.get({ $0.outcome }) == nil {
                pthread_kill(thread, SIGUSR1)
            }
        }
        XCTAssertEqual(shared.get { $0.outcome }, "interrupted")
        XCTAssertLessThan(milliseconds(since: start), 1000)
    }
}

final class CurveTests: XCTestCase {
    func testCurveWithZAPAdmitsOnlyAllowedKeys() throws {
        try XCTSkipUnless(ZMQContext.hasCurve, "libzmq built without CURVE")
        let context = try ZMQContext()
        let server = try CurveKeyPair.generate()
        let trusted = try CurveKeyPair.generate()
        let stranger = try CurveKeyPair.generate()
        let authenticator = try ZAPAuthenticator(context: context, allowedPublicKeys: [trusted.publicKey], domain: "bard")

        let router = try ZMQSocket(context: context, kind: .router)
        try router.configureCurveServer(keyPair: server)
        try router.setZAPDomain("bard")
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint

        let good = try ZMQSocket(context: context, kind: .dealer)
        try good.configureCurveClient(keyPair: trusted, serverPublicKey: server.publicKey)
        try good.setRoutingID("good")
        try good.connect(endpoint)
        XCTAssertEqual(try good.send(frames: [bytes("hi")]), .sent)
        XCTAssertEqual(try router.receive(timeoutMilliseconds: 2000), [bytes("good"), bytes("hi")])
        XCTAssertEqual(try router.send(frames: [bytes("good"), bytes("welcome")]), .sent)
        XCTAssertEqual(try good.receive(timeoutMilliseconds: 2000), [bytes("welcome")])

        let unknown = try ZMQSocket(context: context, kind: .dealer)
        try unknown.configureCurveClient(keyPair: stranger, serverPublicKey: server.publicKey)
        try unknown.connect(endpoint)
        XCTAssertEqual(try unknown.send(frames: [bytes("let me in")]), .sent)

        let plaintext = try ZMQSocket(context: context, kind: .dealer)
        try plaintext.connect(endpoint)
        XCTAssertEqual(try plaintext.send(frames: [bytes("plain")]), .sent)

        XCTAssertNil(try router.receive(timeoutMilliseconds: 1000), "unauthorised peers must not get through")
        XCTAssertEqual(authenticator.admittedCount, 1)
        XCTAssertGreaterThanOrEqual(authenticator.deniedCount, 1)

        // A key allowed later is admitted on the next handshake.
        try authenticator.allow(publicKey: stranger.publicKey)
        let late = try ZMQSocket(context: context, kind: .dealer)
        try late.configureCurveClient(keyPair: stranger, serverPublicKey: server.publicKey)
        try late.setRoutingID("late")
        try late.connect(endpoint)
        XCTAssertEqual(try late.send(frames: [bytes("now?")]), .sent)
        // libzmq 4.3.4 does not reconnect a client after a ZAP denial, so `unknown` stays out;
        // tolerate it getting in anyway (other versions may retry), but "late" must arrive.
        var senders: [[UInt8]] = []
        let start = DispatchTime.now()
        while !senders.contains(bytes("late")) && milliseconds(since: start) < 2000 {
            if let frames = try router.receive(timeoutMilliseconds: 200) { senders.append(frames[0]) }
        }
        XCTAssertTrue(senders.contains(bytes("late")))

        router.close()
        authenticator.stop()
        authenticator.stop() // idempotent
    }

    func testZAPReplies() throws {
        let key = try CurveKeyPair.generate()
        let raw = try Z85.decodeKey(key.publicKey, label: "test")
        XCTAssertEqual(Z85.encodeKey(raw), key.publicKey)
        let context = try ZMQContext()
        let authenticator = try ZAPAuthenticator(context: context, allowedPublicKeys: [key.publicKey])
        // Talk to the handler directly like libzmq would.
        let client = try ZMQSocket(context: context, kind: .request)
        try client.connect(ZAPAuthenticator.endpoint)
        func ask(_ mechanism: String, _ credentials: [[UInt8]]) throws -> [[UInt8]]? {
            let request = [bytes("1.0"), bytes("7"), bytes(""), bytes("127.0.0.1"), bytes(""), bytes(mechanism)] + credentials
            XCTAssertEqual(try client.send(frames: request), .sent)
            return try client.receive(timeoutMilliseconds: 2000)
        }
        XCTAssertEqual(try ask("CURVE", [raw]), [bytes("1.0"), bytes("7"), bytes("200"), bytes("OK"), bytes(key.publicKey), []])
        XCTAssertEqual(try ask("CURVE", [[UInt8](repeating: 1, count: 32)])?[2], bytes("400"))
        XCTAssertEqual(try ask("NULL", [])?[2], bytes("400"))
        XCTAssertEqual(try ask("PLAIN", [bytes("user"), bytes("pass")])?[2], bytes("400"))
        XCTAssertEqual(authenticator.admittedCount, 1)
        XCTAssertEqual(authenticator.deniedCount, 3)

        // Only one handler per context: a second one fails cleanly (and does not hang in deinit).
        XCTAssertThrowsError(try ZAPAuthenticator(context: context, allowedPublicKeys: [])) { error in
            XCTAssertTrue("\(error)".contains("zmq_bind(inproc://zeromq.zap.01)"), "\(error)")
        }
        XCTAssertThrowsError(try ZAPAuthenticator(context: context, allowedPublicKeys: ["nope"]))
    }
}

final class KeyFileTests: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "bard-keys-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    func permissions(_ path: String) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return try XCTUnwrap(attributes[.posixPermissions] as? NSNumber).intValue & 0o777
    }

    func testKeyFileRoundTripWithOwnerOnlyPermissions() throws {
        let pair = try CurveKeyPair.generate()
        XCTAssertEqual(pair.publicKey.utf8.count, 40)
        XCTAssertEqual(pair.secretKey.utf8.count, 40)
        let path = directory + "/worker.key"
        try pair.write(to: path)
        XCTAssertEqual(try permissions(path), 0o600)
        XCTAssertEqual(try CurveKeyPair.load(from: path), pair)
        XCTAssertEqual(try CurveKeyPair.loadPublicKey(from: path), pair.publicKey)

        // Overwrite atomically with another pair; no temp files are left behind.
        let other = try CurveKeyPair.generate()
        try other.write(to: path)
        XCTAssertEqual(try CurveKeyPair.load(from: path), other)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory), ["worker.key"])
    }

    func testPublicOnlyKeyFile() throws {
        let pair = try CurveKeyPair.generate()
        let path = directory + "/server.pub"
        try CurveKeyPair.writePublicKey(pair.publicKey, to: path)
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "public=\(pair.publicKey)\n")
        XCTAssertEqual(try permissions(path), 0o600)
        XCTAssertEqual(try CurveKeyPair.loadPublicKey(from: path), pair.publicKey)
        XCTAssertThrowsError(try CurveKeyPair.load(from: path)) { error in
            XCTAssertTrue("\(error)".contains("no secret= line"), "\(error)")
        }
    }

    func testMalformedKeyFilesAreRejected() throws {
        let pair = try CurveKeyPair.generate()
        let other = try CurveKeyPair.generate()
        let cases: [(String, String)] = [
            ("", "no public= line"),
            ("public=abc\n", "40 Z85 characters"),
            ("public=\(pair.publicKey)\nsecret=\(pair.secretKey)\ncolor=blue\n", "unknown field 'color'"),
            ("public=\(pair.publicKey)\npublic=\(pair.publicKey)\n", "duplicate public="),
            ("public=\(pair.publicKey)\nsecret=\(other.secretKey)\n", "does not match"),
            ("just some text\n", "expected public=<z85>"),
            ("public=\(String(pair.publicKey.dropLast()))\"\n", "Z85 alphabet"),
        ]
        for (index, (contents, expected)) in cases.enumerated() {
            let path = directory + "/bad\(index).key"
            try contents.write(toFile: path, atomically: false, encoding: .utf8)
            XCTAssertThrowsError(try CurveKeyPair.load(from: path), "case \(index)") { error in
                guard case let ZMQError.keyFile(errorPath, reason)? = error as? ZMQError else {
                    return XCTFail("unexpected error \(error)")
                }
                XCTAssertEqual(errorPath, path)
                XCTAssertTrue(reason.contains(expected), "case \(index): \(reason)")
                XCTAssertFalse("\(error)".contains("\n"))
            }
        }
        XCTAssertThrowsError(try CurveKeyPair.load(from: directory + "/missing.key")) { error in
            XCTAssertTrue("\(error)".contains("No such file"), "\(error)")
        }
        // Comments and blank lines are fine.
        let commented = directory + "/commented.key"
        try "# worker 3\n\npublic=\(pair.publicKey)\nsecret=\(pair.secretKey)\n".write(toFile: commented, atomically: false, encoding: .utf8)
        XCTAssertEqual(try CurveKeyPair.load(from: commented), pair)
    }
}
