import BardModel
import BardNumerics
import BardTraining
import Foundation

/// A worker process's driver around `WorkerSession`: the socket, the clock, and the model's buffers. Computes the
/// windows of whatever columns each step request names, from the parameters and the shard's state that come with it
/// (so any worker can take over any columns), and replies with gradient sums.
public final class WorkerCore {
    let transport: ClientTransport
    let threads: Int
    let log: (String) -> Void
    let clock: () -> Double
    public private(set) var session: WorkerSession
    var computer: ColumnComputer?
    var params: FloatBuffer?
    var parameterVersion: UInt64 = .max
    /// Shared memory with a coordinator on this host (nil: messages only, `--no-shm`).
    let sharedMemory: SharedMemory?
    /// The coordinator's parameters region (read only) and this worker's gradient region, when attached, and the
    /// views of them a step uses (`SharedLayout`).
    var shared: (parameters: SharedRegion, gradients: SharedRegion, params: FloatBuffer, grads: FloatBuffer, table: SharedTable)?
    /// Why the last offer could not be used.
    var sharedProblem = "no shared memory was offered"
    public private(set) var stepsComputed = 0
    /// Connects to a coordinator shard of the lead's shard map (ZeroMQ with its server key in `bard worker`,
    /// in-memory in tests); nil: this worker cannot join a sharded run.
    public var shardConnector: ((ShardEndpoint) throws -> ClientTransport)?
    /// The shards of the map, with the version of the slice this worker holds from each.
    var shardLinks: [(endpoint: ShardEndpoint, transport: ClientTransport, version: UInt64?)] = []
    var shardProblem = "no coordinator shard map"
    /// Seconds to wait for a parameter slice from a shard (below the lead's shortest step deadline, 10 s).
    public var shardTimeout: Double = 8
    /// Set while the main thread waits to abandon the step in flight, so a wait for slices ends at once.
    let abandoning = Flag()
    /// Bytes sent and received on every socket since the last result.
    let traffic = TrafficCounter()

    final class Flag: @unchecked Sendable {
        let lock = NSLock()
        var raised = false
        var value: Bool {
            get { lock.lock(); defer { lock.unlock() }; return raised }
            set { lock.lock(); raised = newValue; lock.unlock() }
        }
    }

    public init(transport: ClientTransport, name: String, fingerprint: String, threads: Int,
                maxParameters: Int = WorkerCore.defaultMaxParameters, sharedMemory: SharedMemory? = nil,
                clock: @escaping () -> Double = monotonicSeconds, log: @escaping (String) -> Void) {
        self.transport = transport; self.threads = threads; self.clock = clock; self.log = log
        self.sharedMemory = sharedMemory
        session = WorkerSession(name: name, fingerprint: fingerprint, maxParameters: maxParameters, now: clock())
        session.host = sharedMemory?.host ?? ""
        transport.limits = .control
    }

    /// 256M parameters: 1 GiB per buffer, and a worker holds a few.
    public static let defaultMaxParameters = 1 << 28

    public var idleTimeout: Double {
        get { session.idleTimeout }
        set { session.idleTimeout = newValue }
    }
    public var heartbeatInterval: Double {
        get { session.heartbeatInterval }
        set { session.heartbeatInterval = newValue }
    }
    public var rejected: Int { session.rejected }
    /// Whether this worker exchanges parameters and gradients through shared memory.
    public var usesSharedMemory: Bool { shared != nil }

    /// How often the socket is read while a step computes (heartbeats, the next request, a `welcome` or `done` that
    /// ends the step).
    static let busyPoll = 0.02

    /// A step computed on the background thread; read only after its semaphore is signalled.
    final class ComputeSlot: @unchecked Sendable {
        let request: StepRequest
        var reply: [[UInt8]]?
        init(_ r: StepRequest) { request = r }
    }

    /// Sends to the lead, counted; a result carries what this worker sent and received since its last one.
    func toLead(_ frames: [[UInt8]]) {
        var frames = frames
        traffic.report(in: &frames)
        _ = transport.send(frames)
    }

    /// Runs until the coordinator says done (returns) or refuses us, goes silent, or a signal comes (throws
    /// `WorkerStop`). The socket is used from this thread only; a step is computed on a background thread so
    /// heartbeats keep flowing meanwhile.
    public func run() throws {
        let done = DispatchSemaphore(value: 0)
        var inFlight: ComputeSlot?
        func abandon() {
            if inFlight != nil { abandoning.value = true; done.wait(); inFlight = nil; abandoning.value = false }
        }
        func perform(_ actions: [WorkerSession.Action]) throws -> Bool {
            for action in actions {
                switch action {
                case .send(let m): toLead(m.encode())
                case .log(let line): log(line)
                case .abandon: abandon()
                case .build(let shape): build(shape)
                case .attach(let offer): attach(offer)
                case .useShards(let map): useShards(map)
                case .compute(let request):
                    let slot = ComputeSlot(request)
                    inFlight = slot
                    DispatchQueue.global().async {
                        slot.reply = self.compute(request)
                        done.signal()
                    }
                case .finish:
                    log("training is over after \(stepsComputed) steps computed here")
                    return true
                case .stop(let why): throw why
                }
            }
            return false
        }
        // Whether the last read of the socket returned no message (none waiting, one dropped for its size, a signal).
        var lastReadEmpty = false
        while true {
            if stopRequested != 0 { abandon(); throw WorkerStop.signalled }
            if try perform(session.tick(now: clock())) { return }
            // While a step computes, this thread sleeps on the step's semaphore, which wakes it the moment the result
            // is ready, and reads the socket every `busyPoll` seconds (or at once while messages keep coming), so it
            // takes no time from the computation's cores (docs/scaling.md).
            if let slot = inFlight, done.wait(timeout: .now() + (lastReadEmpty ? WorkerCore.busyPoll : 0)) == .success {
                inFlight = nil
                let (send, actions) = session.computed(stepID: slot.request.stepID)
                if send, let reply = slot.reply { toLead(reply) }
                if try perform(actions) { return }
            }
            let frames = try transport.receive(timeout: inFlight == nil ? 0.2 : 0)
            lastReadEmpty = frames == nil
            guard let frames else { continue }
            traffic.received(frames)
            let message: Message
            do { message = try Message.decode(frames) } catch {
                if let (version, reason) = Message.foreignRefusal(frames) {
                    abandon()
                    throw WorkerStop.refused("the coordinator speaks protocol version \(version), this worker \(Wire.version), and refused it: \(LogText.escape(reason))")
                }
                if try perform(session.undecodable("\(error)", now: clock())) { return }
                continue
            }
            if try perform(session.receive(message, now: clock())) { return }
        }
    }

    func build(_ shape: ModelShape) {
        guard let config = WorkerSession.config(for: shape) else { return }
        let model = Model(config: config, vocabularySize: shape.vocabularySize)
        computer = ColumnComputer(model: model, threads: threads)
        params = FloatBuffer(count: model.parameterCount)
        shared = nil
        parameterVersion = .max
        for i in shardLinks.indices { shardLinks[i].version = nil }
        let state = shape.layers * shape.columns * shape.hidden
        // A step request: header, parameters, tokens, h, c; nothing larger is legitimate.
        transport.limits = ReceiveLimits(maxFrames: 5, maxBytes: Header.size + 128 + 4 * model.parameterCount
                                         + 4 * (shape.steps + 1) * shape.columns + 2 * 4 * state)
        log("registered: \(shape.cell) \(shape.layers)x\(shape.hidden), \(model.parameterCount) parameters")
    }

    /// Opens the regions a coordinator on this host offered (a step in flight has been abandoned), or lets go of them.
    /// A region that cannot be opened or is not the one offered leaves this worker on messages: its next step with
    /// shared parameters is refused (`noSharedMemory`), and the coordinator sends them instead.
    func attach(_ offer: SharedOffer?) {
        shared = nil
        guard let offer, let memory = sharedMemory, let computer else {
            sharedProblem = offer == nil ? "no shared memory was offered" : "this worker takes no shared memory (--no-shm)"
            return
        }
        let layout = SharedLayout(computer.model)
        do {
            let parameters = try memory.open(offer.parameters, count: layout.count, token: offer.token, writable: false)
            let gradients = try memory.open(offer.gradients, count: layout.count, token: offer.token, writable: true)
            shared = (parameters, gradients,
                      FloatBuffer(viewing: parameters.floats, count: layout.parameterCount),
                      FloatBuffer(viewing: gradients.floats, count: layout.parameterCount),
                      SharedTable(table: layout.table(in: parameters), gradient: layout.table(in: gradients)))
            log("on the coordinator's host: parameters and gradients go through shared memory")
        } catch {
            sharedProblem = "cannot open the shared memory offered: \(error)"
            log(sharedProblem + "; using messages")
        }
    }

    /// Connects to the coordinator shards of a map (a step in flight has been abandoned); the same map keeps its links,
    /// and a shard at the same endpoint with the same key keeps its link when its slice changes (a re-planned run).
    func useShards(_ map: [ShardEndpoint]) {
        guard map != shardLinks.map(\.endpoint) else { return }
        let old = shardLinks
        shardLinks = []
        guard let connector = shardConnector else {
            shardProblem = "this worker cannot connect to coordinator shards"
            log(shardProblem)
            return
        }
        do {
            for s in map {
                let kept = old.first { $0.endpoint.endpoint == s.endpoint && $0.endpoint.serverKey == s.serverKey }?.transport
                // What a kept link still holds answers the old plan (a slice, a refusal): not this one's.
                while let kept, (try? kept.receive(timeout: 0)) != nil {}
                let t = try kept ?? connector(s)
                // A parameter slice is the largest legitimate message from a shard.
                t.limits = ReceiveLimits(maxFrames: 2, maxBytes: Header.size + 64 + 4 * s.slice.count)
                shardLinks.append((s, t, nil))
            }
            log("coordinator shards: \(map.map { "\(LogText.escape($0.endpoint)) \($0.slice)" }.joined(separator: ", "))")
        } catch {
            shardLinks = []
            shardProblem = "cannot connect to the coordinator shards: \(error)"
            log(shardProblem)
        }
    }

    /// The parameter slices of `version` from every shard this worker holds an older one of, into `params`; nil when
    /// all are in, else why not: `badRequest` when this worker has no links to the shards (its own problem: the lead
    /// quarantines it), `staleParameters` when a shard did not serve it in time or refused (the shard's).
    func fetchSlices(version: UInt64, into params: FloatBuffer) -> (code: RefusalCode, reason: String)? {
        guard !shardLinks.isEmpty, shardLinks.last?.endpoint.slice.upperBound == params.count else { return (.badRequest, shardProblem) }
        if let problem = receiveSlices(version: version, into: params) { return (.staleParameters, problem) }
        return nil
    }

    func receiveSlices(version: UInt64, into params: FloatBuffer) -> String? {
        var missing = Set(shardLinks.indices.filter { shardLinks[$0].version != version })
        for i in missing {
            let want = Message.want(version: version).encode()
            traffic.sent(want)
            _ = shardLinks[i].transport.send(want)
        }
        let end = clock() + shardTimeout
        while !missing.isEmpty {
            if abandoning.value { return "the step was abandoned" }
            guard clock() < end else {
                return "no parameters of version \(version) from shard(s) \(missing.sorted().map { LogText.escape(shardLinks[$0].endpoint.endpoint) }.joined(separator: ", ")) within \(Int(shardTimeout)) s"
            }
            for i in missing.sorted() {
                let link = shardLinks[i]
                guard let frames = try? link.transport.receive(timeout: missing.count == 1 ? 0.05 : 0.001) else { continue }
                traffic.received(frames)
                switch try? Message.decode(frames) {
                case .parameters(let v, let values)? where v == version && values.count == link.endpoint.slice.count:
                    values.withUnsafeBufferPointer { b in
                        if let base = b.baseAddress { (params.pointer + link.endpoint.slice.lowerBound).update(from: base, count: b.count) }
                    }
                    shardLinks[i].version = version
                    missing.remove(i)
                case .refuse(_, let reason)?:
                    return "coordinator shard \(LogText.escape(link.endpoint.endpoint)) refused: \(LogText.escape(reason))"
                default:
                    continue  // a slice of an older version, or noise
                }
            }
        }
        return nil
    }

    /// One window for one shard, as the frames of the reply: a result, or a refusal the coordinator acts on.
    func compute(_ r: StepRequest) -> [[UInt8]] {
        guard let computer, let params, r.steps == computer.model.config.bptt, r.totalColumns == computer.model.config.batch,
              computer.fits(r) else {
            log("rejected step \(r.stepID): shapes do not fit the model")
            return Message.refuse(.badRequest, reason: "step \(r.stepID) does not fit the model").encode()
        }
        // The parameters in shared memory (and the gradient sums go there too), or the copy messages brought.
        let source: (params: FloatBuffer, grads: FloatBuffer, table: SharedTable?)
        if r.fromShards {
            if let (code, problem) = fetchSlices(version: r.parameterVersion, into: params) {
                return Message.refuse(code, reason: problem).encode()
            }
            parameterVersion = .max  // the buffer now holds the shards' slices, not a whole message's parameters
            source = (params, computer.grads, nil)
        } else if r.sharedParameters {
            guard let shared else {
                return Message.refuse(.noSharedMemory, reason: sharedProblem).encode()
            }
            guard shared.parameters.version == r.parameterVersion else {
                return Message.refuse(.staleParameters, reason: "the shared parameters are version \(shared.parameters.version), step \(r.stepID) needs \(r.parameterVersion)").encode()
            }
            source = (shared.params, shared.grads, shared.table)
        } else {
            if !r.parameters.isEmpty {
                guard r.parameters.count == computer.model.parameterCount else {
                    log("rejected step \(r.stepID): \(r.parameters.count) parameters, the model has \(computer.model.parameterCount)")
                    return Message.refuse(.badRequest, reason: "step \(r.stepID) carries the wrong number of parameters").encode()
                }
                r.parameters.withUnsafeBufferPointer { if let b = $0.baseAddress { params.pointer.update(from: b, count: $0.count) } }
                parameterVersion = r.parameterVersion
            }
            guard parameterVersion == r.parameterVersion else {
                return Message.refuse(.staleParameters, reason: "stale parameters (have version \(parameterVersion), step needs \(r.parameterVersion))").encode()
            }
            source = (params, computer.grads, nil)
        }
        // Gradients in shared memory are checked by the coordinator as it adds them, and a non-finite one is
        // computed there again, as a reported divergence would be: no second pass over them here.
        var (result, finite) = computer.compute(r, params: source.params, into: source.grads, checkGradients: !r.sharedParameters,
                                                table: source.table)
        guard finite else {
            return Message.refuse(.diverged, reason: "non-finite loss or gradient at step \(r.dropoutStep &+ 1)").encode()
        }
        stepsComputed += 1
        if r.fromShards {
            // Each shard gets the gradient sums over its slice; the lead gets the loss and the state.
            for link in shardLinks {
                let slice = link.endpoint.slice
                let frames = Message.encodeGradient(stepID: r.stepID, columns: r.columns, source.grads.pointer + slice.lowerBound,
                                                    count: slice.count)
                traffic.sent(frames)
                _ = link.transport.send(frames)
            }
            result.toShards = true
            return Message.encodeResult(result, gradientFrame: [])
        }
        result.sharedGradients = r.sharedParameters
        return Message.encodeResult(result, gradientFrame: r.sharedParameters ? [] : floatFrame(source.grads.pointer, count: source.grads.count))
    }
}
