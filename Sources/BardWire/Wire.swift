import BardNumerics
import Foundation

/// Bard's cluster messages and their binary encoding (docs/protocol.md). A message is a ZeroMQ multipart message:
/// frame 0 is a header with the magic, protocol version, type and step id followed by the type's fixed fields;
/// further frames carry float32 or int32 arrays. `decode` checks every count, size and value before use.
public enum Wire {
    public static let magic: [UInt8] = Array("BARD".utf8)
    /// 2: typed refusals, the model's shape in `welcome`. 3: shared memory between processes of one host (the host in
    /// `hello`, an offer in `welcome`, flags in `step` and `result`). 4: sharded coordinators' messages (`join` to
    /// `gradient`, ShardMessages.swift). 5: the place of a step's parameters and a result's gradients may be the
    /// coordinator shards (2). 6: a worker's `result` and a shard's `applied` end with the bytes the process sent and
    /// received since its last one (`Traffic`).
    public static let version: UInt16 = 6
    /// Largest frame a peer may send (ZMQ_MAXMSGSIZE) before the run's shapes are known: a 64M-parameter model's gradient.
    public static let maxFrameBytes = 256 << 20
    /// Longest string we accept.
    static let maxString = 1 << 20

    /// The largest legitimate message a coordinator receives in a run of these shapes (a `result`: header, gradient
    /// sums, final h and c of a whole batch), for its receive limits; anything larger is dropped unread.
    public static func largestResultBytes(parameterCount: Int, stateFloats: Int) -> Int {
        Header.size + 128 + 4 * parameterCount + 2 * 4 * stateFloats  // the fields of frame 0 take 73 bytes
    }
}

/// Frame 0 of every message starts with this: the only part promised to stay the same in every version, so that two
/// releases can at least say why they cannot talk (with a `refuse`, whose reason string comes right after it).
/// `encode` writes it and `decode` reads it through this one definition.
public struct Header: Equatable, Sendable {
    public static let size = 7
    public var version: UInt16
    public var type: UInt8

    public init(type: MessageType) { version = Wire.version; self.type = type.rawValue }

    func write(into w: inout Writer) {
        w.bytes.append(contentsOf: Wire.magic); w.u16(version); w.u8(type)
    }

    /// Reads the header without judging its version or type.
    static func read(_ r: inout Reader) throws -> Header {
        guard Array(try r.take(4)) == Wire.magic else { throw WireError("bad magic (not a Bard peer)") }
        var h = Header(type: .heartbeat)
        h.version = try r.uint(UInt16.self)
        h.type = try r.u8()
        return h
    }
}

/// The bytes of messages (frames, without ZeroMQ's or TCP's framing) a process sent and received since it last said.
/// A worker reports it with each `result`, a shard with each `applied`, the report itself included: both end their
/// header frame with it, so the sender stamps it last (`Message.stampTraffic`).
public struct Traffic: Equatable, Sendable {
    public var sent: UInt64
    public var received: UInt64
    public init(sent: UInt64 = 0, received: UInt64 = 0) { self.sent = sent; self.received = received }
    static let size = 16
}

public enum MessageType: UInt8, Sendable {
    case hello = 1, welcome = 2, refuse = 3, step = 4, result = 5, done = 6, heartbeat = 7, fetch = 8, chunk = 9
    case join = 10, assign = 11, gathered = 12, gather = 13, plan = 14, summed = 15, apply = 16, applied = 17
    case shardMap = 18, want = 19, parameters = 20, gradient = 21
}

/// Why a peer was refused: what the receiver acts on. The text beside it is for people.
public enum RefusalCode: UInt16, Sendable, CaseIterable {
    /// Not an error: the coordinator does not know this worker (it restarted, or evicted it): say hello again.
    case reRegister = 1
    /// Another protocol version: nothing can be said beyond this refusal.
    case protocolVersion = 2
    /// The worker's `--data` is not the coordinator's corpus.
    case corpusMismatch = 3
    /// The worker's computation gave a non-finite loss or gradient.
    case diverged = 4
    /// The step needs parameters the worker does not have (it restarted): send them again.
    case staleParameters = 5
    /// The name is registered by another key.
    case nameTaken = 6
    /// The key's role does not allow this message (a fetch key saying hello as a worker).
    case wrongRole = 7
    /// The name is empty, too long or not printable.
    case badName = 8
    /// The coordinator has as many peers as it admits.
    case full = 9
    /// The request does not fit this side's model (shapes, tokens, sizes).
    case badRequest = 10
    /// The model is larger than this worker admits (`--max-parameters`).
    case modelTooLarge = 11
    /// The worker cannot open the shared memory it was offered (another user, another mount namespace): send it the
    /// parameters by message from now on.
    case noSharedMemory = 12
    /// A code this release does not know (a newer peer).
    case unknown = 0xFFFF

    /// Whether the refused peer must stop (exit 77) rather than try again.
    public var isFinal: Bool {
        switch self {
        case .reRegister, .staleParameters, .diverged, .full, .badRequest, .noSharedMemory, .unknown: return false
        case .protocolVersion, .corpusMismatch, .nameTaken, .wrongRole, .badName, .modelTooLarge: return true
        }
    }
}

/// What a worker needs to build the model: its shape and the window's, not the training recipe.
public struct ModelShape: Equatable, Sendable {
    /// `CellKind` and `Activation` raw values (the receiver checks them against its enums).
    public var cell: String
    public var activation: String
    public var layers: Int
    public var embed: Int
    public var hidden: Int
    public var dropout: Float
    public var outputBias: Bool
    public var vocabularySize: Int
    /// Window length (bptt) and total columns (batch) of every step.
    public var steps: Int
    public var columns: Int
    public init(cell: String, activation: String, layers: Int, embed: Int, hidden: Int, dropout: Float, outputBias: Bool,
                vocabularySize: Int, steps: Int, columns: Int) {
        self.cell = cell; self.activation = activation; self.layers = layers; self.embed = embed; self.hidden = hidden
        self.dropout = dropout; self.outputBias = outputBias; self.vocabularySize = vocabularySize; self.steps = steps
        self.columns = columns
    }
}

/// Shared memory a coordinator offers a worker on its own host: the parameters' region, which every local worker
/// reads, and this worker's own region for its gradient sums. Both carry `token` in their header, so a worker that
/// opens them knows they are this coordinator's (a name alone could be anyone's file).
public struct SharedOffer: Equatable, Sendable {
    public var parameters: String
    public var gradients: String
    public var token: UInt64
    public init(parameters: String, gradients: String, token: UInt64) {
        self.parameters = parameters; self.gradients = gradients; self.token = token
    }

    /// A region's name: 1-64 of [A-Za-z0-9._-], not starting with a dot, so it names a file in the shared-memory
    /// directory and nothing else.
    public static func isValidName(_ name: String) -> Bool {
        let u = Array(name.utf8)
        return !u.isEmpty && u.count <= 64 && u[0] != UInt8(ascii: ".")
            && u.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2E || $0 == 0x2D || $0 == 0x5F }
    }
}

/// The messages of the protocol.
public enum Message: Equatable, Sendable {
    /// Worker -> coordinator: protocol version (in the header), a name, the corpus fingerprint it holds ("" = none),
    /// and the host it runs on, for shared memory ("" = it does not take shared memory, `--no-shm`).
    case hello(name: String, fingerprint: String, host: String = "")
    /// Coordinator -> worker: the model's shape, the coordinator's corpus fingerprint, and shared memory when the
    /// worker is on the coordinator's host.
    case welcome(ModelShape, fingerprint: String, shared: SharedOffer? = nil)
    /// Either side: why, as a code to act on and a line for people.
    case refuse(RefusalCode, reason: String)
    /// Coordinator -> worker: compute one window for the global columns lo..<hi of `totalColumns`.
    case step(StepRequest)
    /// Worker -> coordinator.
    case result(StepResult)
    /// Coordinator -> worker: training is over; exit. Sent only after the final step.
    case done
    case heartbeat
    /// Client -> coordinator: bytes of the latest checkpoint from `offset`; `final` asks for the end-of-training one.
    case fetch(offset: Int, final: Bool)
    /// Coordinator -> client: a piece of the checkpoint of `step`, with the whole file's size and sha256.
    case chunk(Chunk)

    // Sharded coordinators (ShardMessages.swift).
    /// Shard -> lead: a shard's name, the endpoint its workers connect to, and its CURVE server key ("" if plaintext).
    case join(name: String, endpoint: String, serverKey: String)
    /// Lead -> shard: the slice to own, with its parameters and optimiser state.
    case assign(SliceState)
    /// Lead -> shard: send back the slice's state, which must be at `version` (for a checkpoint).
    case gather(version: UInt64)
    /// Shard -> lead: the slice's state, in answer to `gather`.
    case gathered(SliceState)
    /// Lead -> shard: step `stepID` is under way; the workers' column ranges whose gradient slices it waits for, each
    /// with the routing identity of the worker that owes it (only that connection may send it), and the targets the
    /// loss is summed over.
    case plan(stepID: UInt64, meanOver: Int, columns: [Range<Int>], owners: [[UInt8]])
    /// Shard -> lead: every slice of the step is in; its blocks' parts of the squared gradient norm.
    case summed(stepID: UInt64, parts: [Double])
    /// Lead -> shard: apply the step.
    case apply(UpdateOrder)
    /// Shard -> lead: the step is applied; whether what it wrote is finite; what the shard sent and received since its
    /// last `applied`, this one included.
    case applied(stepID: UInt64, version: UInt64, paramsFinite: Bool, momentsFinite: Bool, traffic: Traffic = Traffic())
    /// Lead -> worker: the shards, in slice order.
    case shardMap([ShardEndpoint])
    /// Worker -> shard: its parameter slice of `version`.
    case want(version: UInt64)
    /// Shard -> worker: its parameter slice at `version`.
    case parameters(version: UInt64, [Float])
    /// Worker -> shard: its gradient sums over the shard's slice for its columns of step `stepID`.
    case gradient(stepID: UInt64, columns: Range<Int>, [Float])
}

public struct StepRequest: Equatable, Sendable {
    public var stepID: UInt64
    public var parameterVersion: UInt64
    public var columns: Range<Int>
    public var totalColumns: Int
    public var steps: Int
    public var dropoutSeed: UInt64
    public var dropoutStep: UInt64
    public var training: Bool
    /// The full parameter vector when the worker's copy is stale, else empty.
    public var parameters: [Float]
    /// (steps + 1) x columns tokens, time-major, of this shard only.
    public var tokens: [Int32]
    /// The shard's carried state: h and c as (layers, columns, hidden); c empty for GRU and RNN.
    public var h: [Float]
    public var c: [Float]
    /// The parameters of `parameterVersion` are in the shared region offered in `welcome` (`parameters` is empty).
    public var sharedParameters: Bool
    /// The parameters of `parameterVersion` come from the coordinator shards of the `shardMap`, slice by slice, and
    /// the gradient goes back to them (sharded coordinators; `parameters` is empty).
    public var fromShards: Bool

    public init(stepID: UInt64, parameterVersion: UInt64, columns: Range<Int>, totalColumns: Int, steps: Int,
                dropoutSeed: UInt64, dropoutStep: UInt64, training: Bool, parameters: [Float], tokens: [Int32],
                h: [Float], c: [Float], sharedParameters: Bool = false, fromShards: Bool = false) {
        self.stepID = stepID; self.parameterVersion = parameterVersion; self.columns = columns
        self.totalColumns = totalColumns; self.steps = steps; self.dropoutSeed = dropoutSeed
        self.dropoutStep = dropoutStep; self.training = training; self.parameters = parameters; self.tokens = tokens
        self.h = h; self.c = c; self.sharedParameters = sharedParameters; self.fromShards = fromShards
    }
}

public struct StepResult: Equatable, Sendable {
    public var stepID: UInt64
    public var columns: Range<Int>
    public var lossSum: Double
    /// Seconds the worker spent computing (for the coordinator's compute/communication split).
    public var computeSeconds: Double
    /// Sum over the shard's characters of the loss gradient (not a mean).
    public var gradients: [Float]
    public var h: [Float]
    public var c: [Float]
    /// The gradient sums are in the worker's shared region (`gradients` is empty).
    public var sharedGradients: Bool
    /// The gradient sums went to the coordinator shards, slice by slice (`gradients` is empty).
    public var toShards: Bool
    /// What the worker sent and received since its last result, this one included (stamped as it is sent).
    public var traffic: Traffic

    public init(stepID: UInt64, columns: Range<Int>, lossSum: Double, computeSeconds: Double, gradients: [Float],
                h: [Float], c: [Float], sharedGradients: Bool = false, toShards: Bool = false, traffic: Traffic = Traffic()) {
        self.stepID = stepID; self.columns = columns; self.lossSum = lossSum; self.computeSeconds = computeSeconds
        self.gradients = gradients; self.h = h; self.c = c; self.sharedGradients = sharedGradients; self.toShards = toShards
        self.traffic = traffic
    }
}

public struct Chunk: Equatable, Sendable {
    public var step: Int
    public var final: Bool
    public var totalBytes: Int
    public var offset: Int
    public var sha256: String
    public var bytes: [UInt8]
    public init(step: Int, final: Bool, totalBytes: Int, offset: Int, sha256: String, bytes: [UInt8]) {
        self.step = step; self.final = final; self.totalBytes = totalBytes; self.offset = offset; self.sha256 = sha256
        self.bytes = bytes
    }
}

/// A malformed message: rejected with this reason, counted, never a crash.
public struct WireError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ d: String) { description = d }
}

// MARK: - Encoding

struct Writer {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func f64(_ v: Double) { u64(v.bitPattern) }
    mutating func string(_ s: String) { let u = Array(s.utf8); u32(UInt32(u.count)); bytes.append(contentsOf: u) }
}

struct Reader {
    let bytes: [UInt8]
    var at = 0
    init(_ b: [UInt8]) { bytes = b }
    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, at + n <= bytes.count else { throw WireError("truncated header (\(bytes.count) bytes)") }
        defer { at += n }
        return bytes[at..<(at + n)]
    }
    mutating func u8() throws -> UInt8 { try take(1).first ?? 0 }
    mutating func uint<T: FixedWidthInteger>(_: T.Type) throws -> T {
        var v: T = 0
        for (i, b) in try take(MemoryLayout<T>.size).enumerated() { v |= T(b) << (8 * i) }
        return v
    }
    mutating func f64() throws -> Double { Double(bitPattern: try uint(UInt64.self)) }
    mutating func string() throws -> String {
        let n = Int(try uint(UInt32.self))
        guard n <= Wire.maxString else { throw WireError("string of \(n) bytes") }
        guard let s = String(validating: try take(n), as: UTF8.self) else { throw WireError("string is not UTF-8") }
        return s
    }
    func finish() throws { if at != bytes.count { throw WireError("\(bytes.count - at) unexpected trailing header bytes") } }
}

func floatFrame(_ a: [Float]) -> [UInt8] { a.withUnsafeBytes { Array($0) } }
/// The bytes of a float buffer, one copy.
public func floatFrame(_ p: UnsafePointer<Float>, count: Int) -> [UInt8] {
    Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(p), count: count * 4))
}
func int32Frame(_ a: [Int32]) -> [UInt8] { a.withUnsafeBytes { Array($0) } }

func floats(_ frame: [UInt8], count: Int, name: String, finite: Bool = true) throws -> [Float] {
    guard frame.count == count * 4 else { throw WireError("\(name): \(frame.count) bytes, expected \(count * 4)") }
    // One copy into uninitialised storage and a vectorised check: this runs on 8.8 MB twice a step at LSTM 512.
    let out = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
        frame.withUnsafeBytes { src in UnsafeMutableRawBufferPointer(buffer).copyMemory(from: src) }
        initialized = count
    }
    if finite, !out.withUnsafeBufferPointer({ $0.baseAddress.map { Kernels.allFinite($0, count: count) } ?? true }) {
        throw WireError("\(name): non-finite values")
    }
    return out
}

extension Message {
    public var type: MessageType {
        switch self {
        case .hello: return .hello
        case .welcome: return .welcome
        case .refuse: return .refuse
        case .step: return .step
        case .result: return .result
        case .done: return .done
        case .heartbeat: return .heartbeat
        case .fetch: return .fetch
        case .chunk: return .chunk
        case .join: return .join
        case .assign: return .assign
        case .gather: return .gather
        case .gathered: return .gathered
        case .plan: return .plan
        case .summed: return .summed
        case .apply: return .apply
        case .applied: return .applied
        case .shardMap: return .shardMap
        case .want: return .want
        case .parameters: return .parameters
        case .gradient: return .gradient
        }
    }

    public func encode() -> [[UInt8]] {
        var w = Message.header(type)
        switch self {
        case .hello(let name, let fp, let host):
            w.string(name); w.string(fp); w.string(host)
            return [w.bytes]
        case .welcome(let m, let fp, let shared):
            w.string(m.cell); w.string(m.activation)
            for v in [m.layers, m.embed, m.hidden, m.vocabularySize, m.steps, m.columns] { w.u32(UInt32(truncatingIfNeeded: v)) }
            w.u32(m.dropout.bitPattern); w.u8(m.outputBias ? 1 : 0); w.string(fp)
            // No offer: two empty names.
            w.string(shared?.parameters ?? ""); w.string(shared?.gradients ?? ""); w.u64(shared?.token ?? 0)
            return [w.bytes]
        case .refuse(let code, let reason):
            // The reason first: where every version keeps it.
            w.string(reason); w.u16(code.rawValue)
            return [w.bytes]
        case .done, .heartbeat:
            return [w.bytes]
        case .fetch(let offset, let final):
            w.u64(UInt64(offset)); w.u8(final ? 1 : 0)
            return [w.bytes]
        case .chunk(let c):
            w.u64(UInt64(c.step)); w.u8(c.final ? 1 : 0); w.u64(UInt64(c.totalBytes)); w.u64(UInt64(c.offset))
            w.string(c.sha256)
            return [w.bytes, c.bytes]
        case .step(let s):
            return Message.encodeStep(s, parameterFrame: floatFrame(s.parameters))
        case .result(let r):
            return Message.encodeResult(r, gradientFrame: floatFrame(r.gradients))
        default:
            guard let frames = encodeShardMessage(&w) else { preconditionFailure("no encoding for \(type)") }
            return frames
        }
    }

    static func header(_ type: MessageType) -> Writer {
        var w = Writer()
        Header(type: type).write(into: &w)
        return w
    }

    /// A step request whose parameters are already a frame (s.parameters is ignored): the coordinator encodes
    /// the parameters once per step and shares the frame among all workers.
    public static func encodeStep(_ s: StepRequest, parameterFrame: [UInt8]) -> [[UInt8]] {
        var w = header(.step)
        w.u64(s.stepID); w.u64(s.parameterVersion)
        w.u32(UInt32(s.columns.lowerBound)); w.u32(UInt32(s.columns.upperBound)); w.u32(UInt32(s.totalColumns))
        w.u32(UInt32(s.steps)); w.u64(s.dropoutSeed); w.u64(s.dropoutStep); w.u8(s.training ? 1 : 0)
        w.u64(UInt64(parameterFrame.count / 4)); w.u64(UInt64(s.h.count)); w.u64(UInt64(s.c.count))
        w.u8(s.sharedParameters ? 1 : s.fromShards ? 2 : 0)  // where the parameters are: message, shared memory, shards
        return [w.bytes, parameterFrame, int32Frame(s.tokens), floatFrame(s.h), floatFrame(s.c)]
    }

    /// A result whose gradients are already a frame (r.gradients is ignored), to spare the worker a copy.
    public static func encodeResult(_ r: StepResult, gradientFrame: [UInt8]) -> [[UInt8]] {
        var w = header(.result)
        w.u64(r.stepID); w.u32(UInt32(r.columns.lowerBound)); w.u32(UInt32(r.columns.upperBound))
        w.f64(r.lossSum); w.f64(r.computeSeconds)
        w.u64(UInt64(gradientFrame.count / 4)); w.u64(UInt64(r.h.count)); w.u64(UInt64(r.c.count))
        w.u8(r.sharedGradients ? 1 : r.toShards ? 2 : 0)  // where the gradients are: message, shared memory, shards
        w.u64(r.traffic.sent); w.u64(r.traffic.received)  // last in the frame: see `stampTraffic`
        return [w.bytes, gradientFrame, floatFrame(r.h), floatFrame(r.c)]
    }

    /// Writes `traffic`, plus the bytes of `frames` themselves as sent, into an encoded `result` or `applied`, whose
    /// header frames end with it; other messages are left alone. Returns whether it stamped.
    @discardableResult
    public static func stampTraffic(_ frames: inout [[UInt8]], _ traffic: Traffic) -> Bool {
        guard let head = frames.first, head.count >= Header.size + Traffic.size, Array(head.prefix(4)) == Wire.magic,
              head[6] == MessageType.result.rawValue || head[6] == MessageType.applied.rawValue else { return false }
        let own = UInt64(frames.reduce(0) { $0 + $1.count })
        var w = Writer()
        w.u64(traffic.sent &+ own); w.u64(traffic.received)
        frames[0].replaceSubrange((head.count - Traffic.size)..<head.count, with: w.bytes)
        return true
    }

    /// The protocol version a message claims when it starts with Bard's magic but is not this side's version. Only the
    /// magic, the version, the type byte and a refusal's reason after them are promised to stay where they are in
    /// every version, so that two releases can at least say why they cannot talk.
    public static func foreignVersion(_ frames: [[UInt8]]) -> UInt16? {
        guard let head = frames.first else { return nil }
        var r = Reader(head)
        guard let h = try? Header.read(&r), h.version != Wire.version else { return nil }
        return h.version
    }

    /// A refusal sent by a peer of another protocol version, with its reason.
    public static func foreignRefusal(_ frames: [[UInt8]]) -> (version: UInt16, reason: String)? {
        guard frames.count == 1, let head = frames.first else { return nil }
        var r = Reader(head)
        guard let h = try? Header.read(&r), h.version != Wire.version, h.type == MessageType.refuse.rawValue,
              let reason = try? r.string() else { return nil }
        return (h.version, reason)
    }

    /// Decodes and validates a multipart message. Semantic checks that need the run's shapes (does the gradient have
    /// the model's size, is the step current) are the receiver's.
    public static func decode(_ frames: [[UInt8]]) throws -> Message {
        guard let head = frames.first else { throw WireError("empty message") }
        var r = Reader(head)
        let header = try Header.read(&r)
        guard header.version == Wire.version else { throw WireError("protocol version \(header.version), this side speaks \(Wire.version)") }
        guard let type = MessageType(rawValue: header.type) else { throw WireError("unknown message type") }
        func expectFrames(_ n: Int) throws {
            guard frames.count == n else { throw WireError("\(type) message with \(frames.count) frames, expected \(n)") }
        }
        /// Where a step's parameters or a result's gradients are: 0 in the message, 1 shared memory, 2 the shards.
        func place(_ r: inout Reader, _ name: String) throws -> UInt8 {
            let v = try r.u8()
            guard v <= 2 else { throw WireError("\(name) place \(v)") }
            return v
        }
        func count(_ v: UInt64, _ name: String, max: Int = Wire.maxFrameBytes / 4) throws -> Int {
            guard v <= UInt64(max) else { throw WireError("\(name) count \(v) too large") }
            return Int(v)
        }
        let message: Message
        switch type {
        case .hello:
            try expectFrames(1)
            message = .hello(name: try r.string(), fingerprint: try r.string(), host: try r.string())
        case .welcome:
            try expectFrames(1)
            let cell = try r.string(), activation = try r.string()
            var n: [Int] = []
            for _ in 0..<6 { n.append(Int(try r.uint(UInt32.self))) }
            let dropout = Float(bitPattern: try r.uint(UInt32.self)), bias = try r.u8() != 0
            guard dropout.isFinite else { throw WireError("non-finite dropout") }
            let fingerprint = try r.string()
            let parameters = try r.string(), gradients = try r.string(), token = try r.uint(UInt64.self)
            var shared: SharedOffer?
            if !parameters.isEmpty || !gradients.isEmpty {
                guard SharedOffer.isValidName(parameters), SharedOffer.isValidName(gradients) else {
                    throw WireError("shared memory offered under names that are not region names")
                }
                shared = SharedOffer(parameters: parameters, gradients: gradients, token: token)
            }
            message = .welcome(ModelShape(cell: cell, activation: activation, layers: n[0], embed: n[1], hidden: n[2],
                                          dropout: dropout, outputBias: bias, vocabularySize: n[3], steps: n[4], columns: n[5]),
                               fingerprint: fingerprint, shared: shared)
        case .refuse:
            try expectFrames(1)
            let reason = try r.string()
            message = .refuse(RefusalCode(rawValue: try r.uint(UInt16.self)) ?? .unknown, reason: reason)
        case .done:
            try expectFrames(1); message = .done
        case .heartbeat:
            try expectFrames(1); message = .heartbeat
        case .fetch:
            try expectFrames(1)
            let offset = try count(try r.uint(UInt64.self), "offset", max: Int.max)
            message = .fetch(offset: offset, final: try r.u8() != 0)
        case .chunk:
            try expectFrames(2)
            let step = try count(try r.uint(UInt64.self), "step", max: Int.max), final = try r.u8() != 0
            let total = try count(try r.uint(UInt64.self), "size", max: Int.max)
            let offset = try count(try r.uint(UInt64.self), "offset", max: Int.max)
            let sha = try r.string()
            guard offset <= total, frames[1].count <= total - offset else { throw WireError("chunk past the end of the file") }
            message = .chunk(Chunk(step: step, final: final, totalBytes: total, offset: offset, sha256: sha, bytes: frames[1]))
        case .step:
            try expectFrames(5)
            let id = try r.uint(UInt64.self), version = try r.uint(UInt64.self)
            let lo = Int(try r.uint(UInt32.self)), hi = Int(try r.uint(UInt32.self)), total = Int(try r.uint(UInt32.self))
            let steps = Int(try r.uint(UInt32.self))
            let seed = try r.uint(UInt64.self), dstep = try r.uint(UInt64.self), training = try r.u8() != 0
            let np = try count(try r.uint(UInt64.self), "parameter"), nh = try count(try r.uint(UInt64.self), "h")
            let nc = try count(try r.uint(UInt64.self), "c")
            let parametersAt = try place(&r, "parameters")
            guard parametersAt == 0 || np == 0 else { throw WireError("parameters both elsewhere and sent") }
            guard lo < hi, hi <= total, total <= 1 << 20 else { throw WireError("bad column range \(lo)..<\(hi) of \(total)") }
            guard steps >= 1, steps <= 100_000 else { throw WireError("bad window length \(steps)") }
            let ntok = (steps + 1) * (hi - lo)
            guard frames[2].count == ntok * 4 else { throw WireError("tokens: \(frames[2].count) bytes, expected \(ntok * 4)") }
            var tokens = [Int32](repeating: 0, count: ntok)
            tokens.withUnsafeMutableBytes { d in frames[2].withUnsafeBytes { d.copyMemory(from: $0) } }
            guard tokens.allSatisfy({ $0 >= 0 }) else { throw WireError("negative token") }
            message = .step(StepRequest(stepID: id, parameterVersion: version, columns: lo..<hi, totalColumns: total,
                                        steps: steps, dropoutSeed: seed, dropoutStep: dstep, training: training,
                                        parameters: try floats(frames[1], count: np, name: "parameters"), tokens: tokens,
                                        h: try floats(frames[3], count: nh, name: "h"), c: try floats(frames[4], count: nc, name: "c"),
                                        sharedParameters: parametersAt == 1, fromShards: parametersAt == 2))
        case .result:
            try expectFrames(4)
            let id = try r.uint(UInt64.self)
            let lo = Int(try r.uint(UInt32.self)), hi = Int(try r.uint(UInt32.self))
            let loss = try r.f64(), seconds = try r.f64()
            let ng = try count(try r.uint(UInt64.self), "gradient"), nh = try count(try r.uint(UInt64.self), "h")
            let nc = try count(try r.uint(UInt64.self), "c")
            let gradientsAt = try place(&r, "gradients")
            let traffic = Traffic(sent: try r.uint(UInt64.self), received: try r.uint(UInt64.self))
            guard gradientsAt == 0 || ng == 0 else { throw WireError("gradients both elsewhere and sent") }
            guard lo < hi else { throw WireError("bad column range \(lo)..<\(hi)") }
            guard loss.isFinite, seconds.isFinite, seconds >= 0 else { throw WireError("non-finite loss or time") }
            message = .result(StepResult(stepID: id, columns: lo..<hi, lossSum: loss, computeSeconds: seconds,
                                         gradients: try floats(frames[1], count: ng, name: "gradients"),
                                         h: try floats(frames[2], count: nh, name: "h"), c: try floats(frames[3], count: nc, name: "c"),
                                         sharedGradients: gradientsAt == 1, toShards: gradientsAt == 2, traffic: traffic))
        default:
            guard let m = try decodeShardMessage(type, &r, frames) else { throw WireError("unknown message type") }
            message = m
        }
        try r.finish()
        return message
    }
}
