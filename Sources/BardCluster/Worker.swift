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
    /// The coordinator's parameters region (read only) and this worker's gradient region, when attached.
    var shared: (parameters: SharedRegion, gradients: SharedRegion)?
    /// Why the last offer could not be used.
    var sharedProblem = "no shared memory was offered"
    public private(set) var stepsComputed = 0

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

    /// A step computed on the background thread; read only after its semaphore is signalled.
    final class ComputeSlot: @unchecked Sendable {
        let request: StepRequest
        var reply: [[UInt8]]?
        init(_ r: StepRequest) { request = r }
    }

    /// Runs until the coordinator says done (returns) or refuses us, goes silent, or a signal comes (throws
    /// `WorkerStop`). The socket is used from this thread only; a step is computed on a background thread so
    /// heartbeats keep flowing meanwhile.
    public func run() throws {
        let done = DispatchSemaphore(value: 0)
        var inFlight: ComputeSlot?
        func abandon() {
            if inFlight != nil { done.wait(); inFlight = nil }
        }
        func perform(_ actions: [WorkerSession.Action]) throws -> Bool {
            for action in actions {
                switch action {
                case .send(let m): _ = transport.send(m.encode())
                case .log(let line): log(line)
                case .abandon: abandon()
                case .build(let shape): build(shape)
                case .attach(let offer): attach(offer)
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
        while true {
            if stopRequested != 0 { abandon(); throw WorkerStop.signalled }
            if try perform(session.tick(now: clock())) { return }
            if let slot = inFlight, done.wait(timeout: .now()) == .success {
                inFlight = nil
                let (send, actions) = session.computed(stepID: slot.request.stepID)
                if send, let reply = slot.reply { _ = transport.send(reply) }
                if try perform(actions) { return }
            }
            // While a step computes, poll briefly: its result goes out within a millisecond of being ready.
            guard let frames = try transport.receive(timeout: inFlight == nil ? 0.2 : 0.001) else { continue }
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
        let count = computer.model.parameterCount
        do {
            shared = (try memory.open(offer.parameters, count: count, token: offer.token, writable: false),
                      try memory.open(offer.gradients, count: count, token: offer.token, writable: true))
            log("on the coordinator's host: parameters and gradients go through shared memory")
        } catch {
            sharedProblem = "cannot open the shared memory offered: \(error)"
            log(sharedProblem + "; using messages")
        }
    }

    /// One window for one shard, as the frames of the reply: a result, or a refusal the coordinator acts on.
    func compute(_ r: StepRequest) -> [[UInt8]] {
        guard let computer, let params, r.steps == computer.model.config.bptt, r.totalColumns == computer.model.config.batch,
              computer.fits(r) else {
            log("rejected step \(r.stepID): shapes do not fit the model")
            return Message.refuse(.badRequest, reason: "step \(r.stepID) does not fit the model").encode()
        }
        // The parameters in shared memory (and the gradient sums go there too), or the copy messages brought.
        let source: (params: FloatBuffer, grads: FloatBuffer)
        if r.sharedParameters {
            guard let (parameters, gradients) = shared else {
                return Message.refuse(.noSharedMemory, reason: sharedProblem).encode()
            }
            guard parameters.version == r.parameterVersion else {
                return Message.refuse(.staleParameters, reason: "the shared parameters are version \(parameters.version), step \(r.stepID) needs \(r.parameterVersion)").encode()
            }
            source = (parameters.buffer, gradients.buffer)
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
            source = (params, computer.grads)
        }
        // Gradients in shared memory are checked by the coordinator as it adds them, and a non-finite one is
        // computed there again, as a reported divergence would be: no second pass over them here.
        var (result, finite) = computer.compute(r, params: source.params, into: source.grads, checkGradients: !r.sharedParameters)
        guard finite else {
            return Message.refuse(.diverged, reason: "non-finite loss or gradient at step \(r.dropoutStep &+ 1)").encode()
        }
        stepsComputed += 1
        result.sharedGradients = r.sharedParameters
        return Message.encodeResult(result, gradientFrame: r.sharedParameters ? [] : floatFrame(source.grads.pointer, count: source.grads.count))
    }
}
