import BardNumerics

// The payloads of sharded coordinators' messages (issue 11; docs/protocol.md): between the lead and its shards, and
// between a worker and the shards it sends gradient slices to and takes parameter slices from.

/// A coordinator shard's whole state for its slice: what the lead seeds it with (`assign`) and what it returns when
/// the lead gathers a checkpoint (`gathered`).
public struct SliceState: Equatable, Sendable {
    /// This shard's place among `shards`, and its range of the flat parameter vector of `parameterCount`.
    public var index: Int
    public var shards: Int
    public var slice: Range<Int>
    public var parameterCount: Int
    /// `OptimizerKind`'s raw value (the receiver checks it against its enum).
    public var optimizer: String
    public var optimizerStep: Int
    /// The parameters' version: the step that made them.
    public var version: UInt64
    public var params: [Float]
    /// The moving average (`--ema`), empty when the run keeps none.
    public var average: [Float]
    /// Adam's moments, empty for SGD.
    public var m: [Float]
    public var v: [Float]

    public init(index: Int, shards: Int, slice: Range<Int>, parameterCount: Int, optimizer: String, optimizerStep: Int,
                version: UInt64, params: [Float], average: [Float], m: [Float], v: [Float]) {
        self.index = index; self.shards = shards; self.slice = slice; self.parameterCount = parameterCount
        self.optimizer = optimizer; self.optimizerStep = optimizerStep; self.version = version; self.params = params
        self.average = average; self.m = m; self.v = v
    }
}

/// Where a worker finds a shard, and which slice it owns.
public struct ShardEndpoint: Equatable, Sendable {
    /// A ZeroMQ endpoint (`tcp://host:port`) and the shard's CURVE server key ("" on a plaintext run).
    public var endpoint: String
    public var serverKey: String
    public var slice: Range<Int>
    public init(endpoint: String, serverKey: String, slice: Range<Int>) {
        self.endpoint = endpoint; self.serverKey = serverKey; self.slice = slice
    }

    /// `tcp://` and 1-255 printable ASCII characters without spaces: something to connect to and to log, nothing else.
    public static func isValid(endpoint e: String) -> Bool {
        let u = Array(e.utf8)
        return e.hasPrefix("tcp://") && u.count > 6 && u.count <= 255 && u.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }

    /// A Z85 CURVE key: 40 characters of Z85's alphabet, or "" for none.
    public static func isValid(key k: String) -> Bool {
        let u = Array(k.utf8)
        return u.isEmpty || (u.count == 40 && u.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != 0x22 && $0 != 0x27 && $0 != 0x2C && $0 != 0x3B && $0 != 0x5C && $0 != 0x5F && $0 != 0x60 && $0 != 0x7C && $0 != 0x7E })
    }
}

/// The lead's order to a shard to apply step `stepID`: the learning rate, the global gradient norm from every shard's
/// parts, the clipping and averaging settings, and the version the parameters then have.
public struct UpdateOrder: Equatable, Sendable {
    public var stepID: UInt64
    public var lr: Double
    public var norm: Double
    public var clip: Double
    public var decay: Double
    public var version: UInt64
    public init(stepID: UInt64, lr: Double, norm: Double, clip: Double, decay: Double, version: UInt64) {
        self.stepID = stepID; self.lr = lr; self.norm = norm; self.clip = clip; self.decay = decay; self.version = version
    }
}

extension Message {
    func encodeShardMessage(_ w: inout Writer) -> [[UInt8]]? {
        switch self {
        case .join(let name, let endpoint, let key):
            w.string(name); w.string(endpoint); w.string(key)
            return [w.bytes]
        case .assign(let s), .gathered(let s):
            w.u32(UInt32(s.index)); w.u32(UInt32(s.shards)); w.u64(UInt64(s.slice.lowerBound)); w.u64(UInt64(s.slice.upperBound))
            w.u64(UInt64(s.parameterCount)); w.string(s.optimizer); w.u64(UInt64(s.optimizerStep)); w.u64(s.version)
            w.u64(UInt64(s.average.count)); w.u64(UInt64(s.m.count))
            return [w.bytes, floatFrame(s.params), floatFrame(s.average), floatFrame(s.m), floatFrame(s.v)]
        case .gather(let version):
            w.u64(version)
            return [w.bytes]
        case .plan(let stepID, let meanOver, let columns, let owners):
            w.u64(stepID); w.u64(UInt64(meanOver)); w.u32(UInt32(columns.count))
            for (c, owner) in zip(columns, owners) {
                w.u32(UInt32(c.lowerBound)); w.u32(UInt32(c.upperBound)); w.u8(UInt8(truncatingIfNeeded: owner.count))
                w.bytes.append(contentsOf: owner.prefix(255))
            }
            return [w.bytes]
        case .summed(let stepID, let parts):
            w.u64(stepID); w.u32(UInt32(parts.count))
            for p in parts { w.f64(p) }
            return [w.bytes]
        case .apply(let o):
            w.u64(o.stepID); w.f64(o.lr); w.f64(o.norm); w.f64(o.clip); w.f64(o.decay); w.u64(o.version)
            return [w.bytes]
        case .applied(let stepID, let version, let paramsFinite, let momentsFinite, let traffic):
            w.u64(stepID); w.u64(version); w.u8(paramsFinite ? 1 : 0); w.u8(momentsFinite ? 1 : 0)
            w.u64(traffic.sent); w.u64(traffic.received)  // last in the frame: see `Message.stampTraffic`
            return [w.bytes]
        case .shardMap(let shards):
            w.u32(UInt32(shards.count))
            for s in shards {
                w.string(s.endpoint); w.string(s.serverKey); w.u64(UInt64(s.slice.lowerBound)); w.u64(UInt64(s.slice.upperBound))
            }
            return [w.bytes]
        case .want(let version):
            w.u64(version)
            return [w.bytes]
        case .parameters(let version, let values):
            w.u64(version)
            return [w.bytes, floatFrame(values)]
        case .gradient(let stepID, let columns, let values):
            w.u64(stepID); w.u32(UInt32(columns.lowerBound)); w.u32(UInt32(columns.upperBound))
            return [w.bytes, floatFrame(values)]
        default:
            return nil
        }
    }

    /// Decodes the sharded coordinators' messages; nil for any other type.
    static func decodeShardMessage(_ type: MessageType, _ r: inout Reader, _ frames: [[UInt8]]) throws -> Message? {
        func expectFrames(_ n: Int) throws {
            guard frames.count == n else { throw WireError("\(type) message with \(frames.count) frames, expected \(n)") }
        }
        func size(_ v: UInt64, _ name: String) throws -> Int {
            guard v <= UInt64(Wire.maxFrameBytes / 4) else { throw WireError("\(name) \(v) too large") }
            return Int(v)
        }
        func range(_ lo: Int, _ hi: Int, within n: Int, _ name: String) throws -> Range<Int> {
            guard lo < hi, hi <= n else { throw WireError("bad \(name) \(lo)..<\(hi) of \(n)") }
            return lo..<hi
        }
        switch type {
        case .join:
            try expectFrames(1)
            let name = try r.string(), endpoint = try r.string(), key = try r.string()
            guard ShardEndpoint.isValid(endpoint: endpoint) else { throw WireError("a shard endpoint that is not tcp://host:port") }
            guard ShardEndpoint.isValid(key: key) else { throw WireError("a shard server key that is not a Z85 key") }
            return .join(name: name, endpoint: endpoint, serverKey: key)
        case .assign, .gathered:
            try expectFrames(5)
            let index = Int(try r.uint(UInt32.self)), shards = Int(try r.uint(UInt32.self))
            let lo = try size(try r.uint(UInt64.self), "slice start"), hi = try size(try r.uint(UInt64.self), "slice end")
            let n = try size(try r.uint(UInt64.self), "parameter count")
            let optimizer = try r.string(), optimizerStep = try size(try r.uint(UInt64.self), "optimiser step")
            let version = try r.uint(UInt64.self)
            let averageCount = try size(try r.uint(UInt64.self), "average"), momentCount = try size(try r.uint(UInt64.self), "moments")
            guard shards >= 1, shards <= 1024, index < shards else { throw WireError("shard \(index) of \(shards)") }
            let slice = try range(lo, hi, within: n, "slice")
            guard averageCount == 0 || averageCount == slice.count, momentCount == 0 || momentCount == slice.count else {
                throw WireError("a slice state whose average or moments do not fit its slice")
            }
            let s = SliceState(index: index, shards: shards, slice: slice, parameterCount: n, optimizer: optimizer,
                               optimizerStep: optimizerStep, version: version,
                               params: try floats(frames[1], count: slice.count, name: "parameters"),
                               average: try floats(frames[2], count: averageCount, name: "average"),
                               m: try floats(frames[3], count: momentCount, name: "first moments"),
                               v: try floats(frames[4], count: momentCount, name: "second moments"))
            return type == .assign ? .assign(s) : .gathered(s)
        case .gather:
            try expectFrames(1)
            return .gather(version: try r.uint(UInt64.self))
        case .plan:
            try expectFrames(1)
            let stepID = try r.uint(UInt64.self), meanOver = try size(try r.uint(UInt64.self), "targets")
            let count = Int(try r.uint(UInt32.self))
            guard count >= 1, count <= 1 << 16, meanOver >= 1 else { throw WireError("a plan of \(count) column ranges over \(meanOver) targets") }
            var columns: [Range<Int>] = [], owners: [[UInt8]] = []
            for _ in 0..<count {
                let lo = Int(try r.uint(UInt32.self)), hi = Int(try r.uint(UInt32.self))
                columns.append(try range(lo, hi, within: 1 << 20, "column range"))
                let n = Int(try r.u8())
                guard n >= 1 else { throw WireError("a column range without its worker") }
                owners.append(Array(try r.take(n)))
            }
            return .plan(stepID: stepID, meanOver: meanOver, columns: columns, owners: owners)
        case .summed:
            try expectFrames(1)
            let stepID = try r.uint(UInt64.self), count = Int(try r.uint(UInt32.self))
            guard count <= Wire.maxFrameBytes / 4 / 8 else { throw WireError("\(count) norm parts") }
            var parts: [Double] = []
            for _ in 0..<count {
                // +infinity is a real outcome (finite gradients whose squares overflow): the lead calls it a divergence.
                let p = try r.f64()
                guard !p.isNaN, p >= 0 else { throw WireError("a norm part that is negative or not a number") }
                parts.append(p)
            }
            return .summed(stepID: stepID, parts: parts)
        case .apply:
            try expectFrames(1)
            let o = UpdateOrder(stepID: try r.uint(UInt64.self), lr: try r.f64(), norm: try r.f64(), clip: try r.f64(),
                                decay: try r.f64(), version: try r.uint(UInt64.self))
            guard [o.lr, o.norm, o.clip, o.decay].allSatisfy({ $0.isFinite && $0 >= 0 }), o.decay < 1 else {
                throw WireError("an update order with a negative or non-finite rate, norm, clip or decay")
            }
            return .apply(o)
        case .applied:
            try expectFrames(1)
            let stepID = try r.uint(UInt64.self), version = try r.uint(UInt64.self)
            let p = try r.u8(), m = try r.u8()
            let traffic = Traffic(sent: try r.uint(UInt64.self), received: try r.uint(UInt64.self))
            guard p <= 1, m <= 1 else { throw WireError("finiteness flags \(p), \(m)") }
            return .applied(stepID: stepID, version: version, paramsFinite: p == 1, momentsFinite: m == 1, traffic: traffic)
        case .shardMap:
            try expectFrames(1)
            let count = Int(try r.uint(UInt32.self))
            guard count >= 1, count <= 1024 else { throw WireError("a map of \(count) shards") }
            var shards: [ShardEndpoint] = []
            for _ in 0..<count {
                let endpoint = try r.string(), key = try r.string()
                let lo = try size(try r.uint(UInt64.self), "slice start"), hi = try size(try r.uint(UInt64.self), "slice end")
                guard ShardEndpoint.isValid(endpoint: endpoint), ShardEndpoint.isValid(key: key) else {
                    throw WireError("a shard map with an endpoint or key that is not one")
                }
                let slice = try range(lo, hi, within: Wire.maxFrameBytes / 4, "slice")
                guard slice.lowerBound == (shards.last?.slice.upperBound ?? 0) else { throw WireError("a shard map with gaps or overlaps") }
                shards.append(ShardEndpoint(endpoint: endpoint, serverKey: key, slice: slice))
            }
            return .shardMap(shards)
        case .want:
            try expectFrames(1)
            return .want(version: try r.uint(UInt64.self))
        case .parameters:
            try expectFrames(2)
            let version = try r.uint(UInt64.self)
            return .parameters(version: version, try floats(frames[1], count: frames[1].count / 4, name: "parameters"))
        case .gradient:
            try expectFrames(2)
            let stepID = try r.uint(UInt64.self)
            let lo = Int(try r.uint(UInt32.self)), hi = Int(try r.uint(UInt32.self))
            let columns = try range(lo, hi, within: 1 << 20, "column range")
            return .gradient(stepID: stepID, columns: columns, try floats(frames[1], count: frames[1].count / 4, name: "gradients"))
        default:
            return nil
        }
    }
}

extension Message {
    /// A `gradient` straight from a worker's gradient buffer (one copy, into the frame), as `.gradient(...).encode()`.
    public static func encodeGradient(stepID: UInt64, columns: Range<Int>, _ values: UnsafePointer<Float>, count: Int) -> [[UInt8]] {
        var w = header(.gradient)
        w.u64(stepID); w.u32(UInt32(columns.lowerBound)); w.u32(UInt32(columns.upperBound))
        return [w.bytes, floatFrame(values, count: count)]
    }
}
