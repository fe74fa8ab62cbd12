import BardModel
import BardNumerics
import BardTraining
import Foundation

/// Why a worker stopped without the coordinator's `done`.
public enum WorkerStop: Error, CustomStringConvertible {
    case signalled
    case coordinatorSilent(seconds: Double)
    public var description: String {
        switch self {
        case .signalled: return "stopped by signal"
        case .coordinatorSilent(let s): return "no message from the coordinator for \(Int(s)) s; giving up"
        }
    }
}

/// A worker: registers, then computes windows for whatever shard each step request names, from the parameters and
/// the shard's state that come with it (so any worker can take over any columns), and replies with gradient sums.
public final class WorkerCore {
    let transport: ClientTransport
    let name: String
    let fingerprint: String
    let threads: Int
    let log: (String) -> Void
    var model: Model?
    var params: FloatBuffer?
    var grads: FloatBuffer?
    var parameterVersion: UInt64 = .max
    var runner: ColumnParallel?
    var runnerShape = (steps: 0, columns: 0)
    public private(set) var stepsComputed = 0
    /// Seconds without any message from the coordinator after which the worker gives up.
    public var idleTimeout: Double = 120

    public init(transport: ClientTransport, name: String, fingerprint: String, threads: Int, log: @escaping (String) -> Void) {
        self.transport = transport; self.name = name; self.fingerprint = fingerprint; self.threads = threads; self.log = log
    }

    /// Seconds between the worker's heartbeats: sent while it computes too, so the coordinator can tell a busy worker
    /// from a dead or stopped one.
    public var heartbeatInterval: Double = 1

    /// Runs until the coordinator says done (returns) or refuses us / goes silent (throws). The socket is used from
    /// this thread only; a step is computed on a background thread so heartbeats keep flowing meanwhile.
    public func run() throws {
        var lastHeard = Date()
        var lastSent = Date.distantPast
        var queue: [StepRequest] = []
        let done = DispatchSemaphore(value: 0)
        var inFlight: (request: StepRequest, slot: ComputeSlot)?
        var registered = false
        /// Waits for the step in flight, dropping its reply: needed before the model or registration changes.
        func abandonInFlight() {
            if inFlight != nil { done.wait(); inFlight = nil }
        }
        while true {
            if stopRequested != 0 { throw WorkerStop.signalled }
            if Date().timeIntervalSince(lastSent) >= heartbeatInterval {
                // Unregistered: hello (a ROUTER drops messages to a peer it has not finished handshaking with, and a
                // restarted coordinator needs it). Registered: a heartbeat.
                let m: Message = registered ? .heartbeat : .hello(name: name, fingerprint: fingerprint)
                _ = transport.send(m.encode())
                lastSent = Date()
            }
            if let (request, slot) = inFlight, done.wait(timeout: .now()) == .success {
                inFlight = nil
                if let error = slot.error { throw error }
                if registered, let reply = slot.reply { send(reply, for: request) }
            }
            if inFlight == nil, registered, !queue.isEmpty {
                let request = queue.removeFirst()
                let slot = ComputeSlot()
                inFlight = (request, slot)
                DispatchQueue.global().async {
                    do { slot.reply = try self.compute(request) } catch { slot.error = error }
                    done.signal()
                }
            }
            // While a step computes, poll briefly: its result goes out within a millisecond of being ready.
            guard let frames = try transport.receive(timeout: inFlight == nil ? 0.2 : 0.001) else {
                if Date().timeIntervalSince(lastHeard) > idleTimeout { throw WorkerStop.coordinatorSilent(seconds: idleTimeout) }
                continue
            }
            lastHeard = Date()
            let message: Message
            do { message = try Message.decode(frames) } catch {
                if let (version, reason) = Message.foreignRefusal(frames) {
                    throw BardError.refused("the coordinator speaks protocol version \(version), this worker \(Wire.version), and refused it: \(reason)")
                }
                rejected += 1
                log("rejected a message from the coordinator: \(error)")
                continue
            }
            switch message {
            case .welcome(let configJSON, let vocab, _):
                guard let data = configJSON.data(using: .utf8), let cfg = try? JSONDecoder().decode(Config.self, from: data),
                      (try? cfg.validate()) != nil, vocab >= 1, vocab <= 1 << 21 else {
                    rejected += 1
                    log("rejected a welcome with an invalid configuration")
                    continue
                }
                if let model, model.config != cfg || model.vocabularySize != vocab {
                    // A different run (a new coordinator): wait for the step in flight, then start afresh.
                    abandonInFlight()
                    self.model = nil
                }
                if model == nil {
                    let m = Model(config: cfg, vocabularySize: vocab)
                    params = FloatBuffer(count: m.parameterCount)
                    grads = FloatBuffer(count: m.parameterCount)
                    parameterVersion = .max
                    runner = nil
                    model = m
                    log("registered: \(cfg.cell) \(cfg.layers)x\(cfg.hidden), \(m.parameterCount) parameters")
                }
                registered = true
            case .refuse(let reason):
                if reason.hasPrefix(Coordinator.reRegister) {
                    // The coordinator does not know us (it restarted, or evicted us): register again. Work queued for
                    // the old registration is void.
                    if registered { log("the coordinator asks this worker to register again") }
                    abandonInFlight()
                    registered = false; queue.removeAll(); lastSent = .distantPast
                    parameterVersion = .max
                    continue
                }
                throw BardError.refused("the coordinator refused this worker: \(reason)")
            case .done:
                abandonInFlight()
                log("training is over after \(stepsComputed) steps computed here")
                return
            case .heartbeat:
                break
            case .step(let request):
                // A newer step supersedes queued ones (the coordinator redid a step); parameters they carried stay.
                var request = request
                for old in queue where !old.parameters.isEmpty && old.parameterVersion == request.parameterVersion
                    && request.parameters.isEmpty {
                    request.parameters = old.parameters
                }
                queue.removeAll { $0.stepID < request.stepID }
                queue.append(request)
            case .hello, .result, .fetch, .chunk:
                rejected += 1
                log("ignored an unexpected \(message.type) message")
            }
        }
    }

    /// A step computed on the background thread; read only after its semaphore is signalled.
    final class ComputeSlot: @unchecked Sendable {
        var reply: Message?
        var error: Error?
    }

    /// Messages from the coordinator that did not decode or did not belong.
    public private(set) var rejected = 0

    func send(_ reply: Message, for request: StepRequest) {
        if case .result(let r) = reply, let grads, r.stepID == request.stepID, request.training {
            _ = transport.send(Message.encodeResult(r, gradientFrame: floatFrame(grads.pointer, count: grads.count)))
        } else {
            _ = transport.send(reply.encode())
        }
    }

    /// One window for one shard. Returns nil (and logs) for a request that does not fit this run.
    func compute(_ r: StepRequest) throws -> Message? {
        guard let model, let params, let grads else { return nil }
        let cfg = model.config, n = r.columns.count
        let stateCount = cfg.layers * n * cfg.hidden
        // Only windows of this run's shape: a request for anything else (a hostile peer) must not size our buffers.
        guard r.steps == cfg.bptt, r.totalColumns == cfg.batch, r.columns.upperBound <= cfg.batch,
              r.h.count == stateCount, r.c.count == (cfg.cell == .lstm ? stateCount : 0),
              r.tokens.allSatisfy({ Int($0) < model.vocabularySize }) else {
            log("rejected step \(r.stepID): shapes do not fit the model")
            return nil
        }
        if !r.parameters.isEmpty {
            guard r.parameters.count == model.parameterCount else {
                log("rejected step \(r.stepID): \(r.parameters.count) parameters, the model has \(model.parameterCount)")
                return nil
            }
            r.parameters.withUnsafeBufferPointer { if let b = $0.baseAddress { params.pointer.update(from: b, count: $0.count) } }
            parameterVersion = r.parameterVersion
        }
        guard parameterVersion == r.parameterVersion else {
            return .refuse(reason: "stale parameters (have version \(parameterVersion), step needs \(r.parameterVersion))")
        }
        let t0 = Date()
        if runner == nil || runnerShape != (r.steps, n) {
            runner = ColumnParallel(model: model, steps: r.steps, columns: 0..<n, threads: threads)
            runnerShape = (r.steps, n)
        }
        guard let runner else { return nil }
        let state = model.makeState(columns: n)
        state.h.copy(from: FloatBuffer(r.h))
        if state.c.count > 0 { state.c.copy(from: FloatBuffer(r.c)) }
        grads.zero()
        let dropout = r.training ? DropoutKey(seed: r.dropoutSeed, step: Int(truncatingIfNeeded: r.dropoutStep), columnBase: r.columns.lowerBound,
                                              globalColumns: r.totalColumns) : nil
        let loss = r.tokens.withUnsafeBufferPointer { w -> Double in
            guard let base = w.baseAddress else { return .nan }
            return runner.run(params: params, grads: r.training ? grads : nil, window: base, steps: r.steps,
                              totalColumns: n, state: state, dropout: dropout)
        }
        guard loss.isFinite, grads.allFinite else {
            return .refuse(reason: "diverged: non-finite loss or gradient at step \(r.dropoutStep &+ 1)")
        }
        stepsComputed += 1
        return .result(StepResult(stepID: r.stepID, columns: r.columns, lossSum: loss,
                                  computeSeconds: Date().timeIntervalSince(t0),
                                  gradients: [], h: state.h.array, c: state.c.array))
    }
}
