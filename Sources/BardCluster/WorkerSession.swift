import BardModel
import Foundation

/// Why a worker stopped without the coordinator's `done`.
public enum WorkerStop: Error, CustomStringConvertible, Equatable {
    case signalled
    /// No word from any coordinator for the idle timeout: exit 75, "restart me" to a supervisor.
    case coordinatorSilent(seconds: Double)
    /// The coordinator refused this worker for a reason a restart cannot cure: exit 77.
    case refused(String)
    public var description: String {
        switch self {
        case .signalled: return "stopped by signal"
        case .coordinatorSilent(let s): return "no message from a coordinator for \(Int(s)) s; giving up"
        case .refused(let why): return why
        }
    }
}

/// The worker's protocol as a state machine: registration, heartbeats, the queue of step requests, the idle
/// timeout. Takes messages and the current time, returns actions; does no I/O, reads no clock and computes nothing.
public struct WorkerSession {
    public enum Action: Equatable {
        case send(Message)
        /// Build the model of this shape (checked already), dropping whatever was built before (shared memory too).
        case build(ModelShape)
        /// Open the shared memory offered (nil: close what is open), after the step in flight, if any, was abandoned.
        case attach(SharedOffer?)
        /// Take parameters from, and send gradients to, these coordinator shards (after the step in flight, if any,
        /// was abandoned).
        case useShards([ShardEndpoint])
        /// Compute this request (only ever one at a time).
        case compute(StepRequest)
        /// Wait for the step in flight and drop its reply.
        case abandon
        case log(String)
        /// Training is over.
        case finish
        case stop(WorkerStop)
    }

    public let name: String
    public let fingerprint: String
    /// The host this worker tells the coordinator it runs on, for shared memory ("" = it takes none).
    public var host = ""
    /// Seconds without any message from the coordinator after which the worker gives up.
    public var idleTimeout: Double = 120
    /// Seconds between heartbeats (hellos while unregistered); sent while computing too, so the coordinator can
    /// tell a busy worker from a dead one.
    public var heartbeatInterval: Double = 1
    /// Largest model this worker builds (`--max-parameters`): a `welcome` is checked before anything is allocated.
    public var maxParameters: Int
    public private(set) var registered = false
    public private(set) var shape: ModelShape?
    /// The shared memory of the last welcome.
    public private(set) var offer: SharedOffer?
    public private(set) var queue: [StepRequest] = []
    /// The step being computed.
    public private(set) var computing: UInt64?
    var lastHeard: Double
    var lastSent = -Double.infinity
    /// Messages from the coordinator that did not decode or did not belong.
    public private(set) var rejected = 0

    public init(name: String, fingerprint: String, maxParameters: Int, now: Double) {
        self.name = name; self.fingerprint = fingerprint; self.maxParameters = maxParameters; lastHeard = now
    }

    /// Time passing: hellos or heartbeats, and the idle timeout.
    public mutating func tick(now: Double) -> [Action] {
        if now - lastHeard > idleTimeout { return [.stop(.coordinatorSilent(seconds: idleTimeout))] }
        guard now - lastSent >= heartbeatInterval else { return [] }
        lastSent = now
        // Unregistered: hello (a ROUTER drops messages to a peer it has not finished handshaking with, and a
        // restarted coordinator needs it). Registered: a heartbeat.
        return [.send(registered ? .heartbeat : .hello(name: name, fingerprint: fingerprint, host: host))]
    }

    /// A message that did not decode.
    public mutating func undecodable(_ why: String, now: Double) -> [Action] {
        lastHeard = now
        rejected += 1
        return [.log("rejected a message from the coordinator: \(why)")]
    }

    public mutating func receive(_ message: Message, now: Double) -> [Action] {
        lastHeard = now
        switch message {
        case .welcome(let offered, _, let shared):
            if let problem = WorkerSession.problem(with: offered, maxParameters: maxParameters) {
                if problem.code == .modelTooLarge {
                    return [.send(.refuse(.modelTooLarge, reason: problem.text)), .stop(.refused(problem.text))]
                }
                rejected += 1
                return [.log("rejected a welcome: \(problem.text)")]
            }
            var actions: [Action] = []
            if offered != shape {
                // A different run (a new coordinator): the step in flight and the queue belong to the old one.
                if computing != nil { actions.append(.abandon); computing = nil }
                queue.removeAll()
                shape = offered
                actions.append(.build(offered))
                offer = nil  // building lets go of the old model's shared memory
            }
            if shared != offer {
                // Another coordinator or registration: what is in flight wrote to memory nobody reads any more.
                if computing != nil { actions.append(.abandon); computing = nil; queue.removeAll() }
                offer = shared
                actions.append(.attach(shared))
            }
            registered = true
            return actions + next()
        case .refuse(let code, let reason):
            if code == .reRegister {
                // The coordinator does not know us (it restarted, or evicted us): register again at once. Work queued
                // for the old registration is void.
                var actions: [Action] = registered ? [.log("the coordinator asks this worker to register again")] : []
                if computing != nil { actions.append(.abandon); computing = nil }
                registered = false; queue.removeAll(); lastSent = -.infinity
                return actions
            }
            if code.isFinal {
                return [.stop(.refused("the coordinator refused this worker: \(LogText.escape(reason))"))]
            }
            registered = false; queue.removeAll()
            return [.log("the coordinator refused this worker for now (\(code)): \(LogText.escape(reason)); trying again")]
        case .done:
            var actions: [Action] = computing != nil ? [.abandon] : []
            computing = nil
            actions.append(.finish)
            return actions
        case .heartbeat:
            return []
        case .step(var request):
            guard registered else { rejected += 1; return [.log("ignored a step request before a welcome")] }
            // A newer step supersedes queued ones (the coordinator redid a step); parameters they carried stay.
            for old in queue where !old.parameters.isEmpty && old.parameterVersion == request.parameterVersion
                && request.parameters.isEmpty {
                request.parameters = old.parameters
            }
            queue.removeAll { $0.stepID < request.stepID }
            queue.append(request)
            return next()
        case .shardMap(let map):
            guard registered else { rejected += 1; return [.log("ignored a shard map before a welcome")] }
            let parameters = shape.flatMap { s in WorkerSession.config(for: s).map { ParameterLayout(config: $0, vocabularySize: s.vocabularySize).total } }
            guard let parameters, map.last?.slice.upperBound == parameters else {
                rejected += 1
                return [.log("rejected a shard map that does not cover the model's parameters")]
            }
            var actions: [Action] = []
            if computing != nil { actions.append(.abandon); computing = nil }
            return actions + [.useShards(map)] + next()
        case .hello, .result, .fetch, .chunk, .join, .assign, .gather, .gathered, .plan, .summed, .apply, .applied,
             .want, .parameters, .gradient:
            rejected += 1
            return [.log("ignored an unexpected \(message.type) message")]
        }
    }

    /// The step in flight is done; whether its reply should go out (it is still this registration's work).
    public mutating func computed(stepID: UInt64) -> (send: Bool, actions: [Action]) {
        guard computing == stepID else { return (false, next()) }
        computing = nil
        return (registered, next())
    }

    mutating func next() -> [Action] {
        guard computing == nil, registered, !queue.isEmpty else { return [] }
        let request = queue.removeFirst()
        computing = request.stepID
        return [.compute(request)]
    }

    /// What is wrong with an offered model, before anything is allocated for it.
    public static func problem(with s: ModelShape, maxParameters: Int) -> (code: RefusalCode, text: String)? {
        guard let config = config(for: s) else { return (.badRequest, "the model shape is not one this release builds") }
        let count = ParameterLayout(config: config, vocabularySize: s.vocabularySize).total
        if count > maxParameters {
            return (.modelTooLarge, "the coordinator's model has \(count) parameters, more than this worker's --max-parameters \(maxParameters)")
        }
        return nil
    }

    /// The model configuration of a shape, if it is a valid one.
    public static func config(for s: ModelShape) -> Config? {
        guard let cell = CellKind(rawValue: s.cell), let activation = Activation(rawValue: s.activation),
              s.vocabularySize >= 1, s.vocabularySize <= 1 << 21 else { return nil }
        var c = Config()
        c.cell = cell; c.activation = activation; c.layers = s.layers; c.embed = s.embed; c.hidden = s.hidden
        c.dropout = s.dropout; c.outputBias = s.outputBias; c.bptt = s.steps; c.batch = s.columns
        guard (try? c.validate()) != nil else { return nil }
        return c
    }
}
