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

    /// Runs until the coordinator says done (returns) or refuses us / goes silent (throws).
    public func run() throws {
        var lastHeard = Date()
        var lastHello = Date.distantPast
        while true {
            if stopRequested != 0 { throw WorkerStop.signalled }
            if model == nil, Date().timeIntervalSince(lastHello) > 1 {
                // A ROUTER drops messages to peers it has not finished handshaking with: say hello until welcomed.
                _ = transport.send(Message.hello(name: name, fingerprint: fingerprint).encode())
                lastHello = Date()
            }
            guard let frames = try transport.receive(timeout: 0.5) else {
                if Date().timeIntervalSince(lastHeard) > idleTimeout { throw WorkerStop.coordinatorSilent(seconds: idleTimeout) }
                continue
            }
            lastHeard = Date()
            let message: Message
            do { message = try Message.decode(frames) } catch {
                log("rejected a message from the coordinator: \(error)")
                continue
            }
            switch message {
            case .welcome(let configJSON, let vocab, _):
                guard let data = configJSON.data(using: .utf8), let cfg = try? JSONDecoder().decode(Config.self, from: data),
                      (try? cfg.validate()) != nil, vocab >= 1, vocab <= 1 << 21 else {
                    throw BardError.badInput("the coordinator's welcome carries an invalid configuration")
                }
                if model == nil {
                    let m = Model(config: cfg, vocabularySize: vocab)
                    model = m
                    params = FloatBuffer(count: m.parameterCount)
                    grads = FloatBuffer(count: m.parameterCount)
                    log("registered: \(cfg.cell) \(cfg.layers)x\(cfg.hidden), \(m.parameterCount) parameters")
                }
            case .refuse(let reason):
                if reason.hasPrefix(Coordinator.reRegister) {
                    // The coordinator does not know us (it restarted, or evicted us): register again.
                    log("the coordinator asks this worker to register again")
                    model = nil; lastHello = .distantPast
                    continue
                }
                throw BardError.badInput("the coordinator refused this worker: \(reason)")
            case .done:
                log("training is over after \(stepsComputed) steps computed here")
                return
            case .heartbeat:
                _ = transport.send(Message.heartbeat.encode())
            case .step(let request):
                guard let reply = try compute(request) else { continue }
                if case .result(let r) = reply, let grads, r.stepID == request.stepID, request.training {
                    _ = transport.send(Message.encodeResult(r, gradientFrame: floatFrame(grads.pointer, count: grads.count)))
                } else {
                    _ = transport.send(reply.encode())
                }
            case .hello, .result, .fetch, .chunk:
                log("ignored an unexpected \(message.type) message")
            }
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
