import BardWire

/// Valid messages of every kind: the fuzzer mutates these as well as raw bytes, to get past the magic and version.
let templates: [[[UInt8]]] = [
    Message.hello(name: "w0", fingerprint: "abc").encode(),
    Message.welcome(ModelShape(cell: "lstm", activation: "tanh", layers: 2, embed: 8, hidden: 16, dropout: 0.25,
                               outputBias: true, vocabularySize: 65, steps: 10, columns: 4), fingerprint: "f").encode(),
    Message.refuse(.nameTaken, reason: "no").encode(),
    Message.heartbeat.encode(),
    Message.fetch(offset: 10, final: true).encode(),
    Message.chunk(Chunk(step: 3, final: false, totalBytes: 8, offset: 4, sha256: "00", bytes: [1, 2, 3, 4])).encode(),
    Message.step(StepRequest(stepID: 1, parameterVersion: 2, columns: 1..<3, totalColumns: 4, steps: 2, dropoutSeed: 5,
                             dropoutStep: 6, training: true, parameters: [1, 2, 3], tokens: [0, 1, 2, 3, 4, 5],
                             h: [0.5, 0.25], c: [])).encode(),
    Message.result(StepResult(stepID: 1, columns: 0..<2, lossSum: 3, computeSeconds: 0.1, gradients: [1, 2],
                              h: [1, 2], c: [3, 4])).encode(),
    // Sharded coordinators.
    Message.join(name: "s0", endpoint: "tcp://h:5601", serverKey: "").encode(),
    Message.assign(SliceState(index: 0, shards: 2, slice: 1..<3, parameterCount: 4, optimizer: "adam", optimizerStep: 2,
                              version: 2, params: [1, 2], average: [1, 2], m: [0, 1], v: [1, 1])).encode(),
    Message.plan(stepID: 3, meanOver: 8, columns: [0..<1, 1..<4], owners: [[1], [2, 3]]).encode(),
    Message.summed(stepID: 3, parts: [0.5, 2]).encode(),
    Message.apply(UpdateOrder(stepID: 3, lr: 0.001, norm: 2, clip: 5, decay: 0.9, version: 3)).encode(),
    Message.applied(stepID: 3, version: 3, paramsFinite: true, momentsFinite: true).encode(),
    Message.shardMap([ShardEndpoint(endpoint: "tcp://a:1", serverKey: "", slice: 0..<2),
                      ShardEndpoint(endpoint: "tcp://b:1", serverKey: "", slice: 2..<4)]).encode(),
    Message.parameters(version: 3, [1, 2]).encode(),
    Message.gradient(stepID: 3, columns: 0..<2, [1, 2]).encode(),
]

/// Input layout: byte 0 picks raw mode (frames cut from the input by 1-byte lengths) or a template whose bytes are
/// overwritten, truncated or extended by the rest of the input.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let mode = input.first else { return 0 }
    var rest = input.dropFirst()
    var frames: [[UInt8]] = []
    if mode < 64 {
        while !rest.isEmpty && frames.count < 8 {
            let n = Int(rest.removeFirst())
            frames.append(Array(rest.prefix(n)))
            rest = rest.dropFirst(n)
        }
    } else {
        frames = templates[Int(mode) % templates.count]
        while rest.count >= 3 {
            let f = Int(rest.removeFirst()) % frames.count, at = Int(rest.removeFirst()), value = rest.removeFirst()
            if at < frames[f].count { frames[f][at] = value } else if value & 1 == 0 { frames[f].append(value) } else {
                frames[f].removeLast(min(frames[f].count, at - frames[f].count))
            }
        }
    }
    if let message = try? Message.decode(frames) {
        // Whatever decodes must encode and decode to itself.
        precondition((try? Message.decode(message.encode())) == message, "round trip changed \(message.type)")
    }
    return 0
}
