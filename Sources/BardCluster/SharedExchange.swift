import BardModel
import BardNumerics
import Foundation

/// The coordinator's shared memory with the workers on its own host: one region that holds the trainer's parameters
/// (its update writes them once per step) where every local worker reads them, and one region per local worker's registration where it writes its
/// gradient sums and the coordinator reduces them. Control stays on the socket.
///
/// Each region holds the model's table after the parameters (`SharedLayout`): the coordinator makes layer 0's input
/// table once per step for all its local workers, and each worker leaves its window's gradient of the table there
/// instead of the embedding's and W_ih0's, which the coordinator makes once from their sum (`TableReduction`).
///
/// A gradient region lives as long as the registration it was made for: a restarted, evicted or re-registered worker
/// gets a new one, so a process of an old registration that is still computing can never write into memory the
/// coordinator reads. Names are removed when a region is dropped and when the coordinator closes; what a killed
/// coordinator left is removed by the next one (`PosixSharedMemory.removeStale`).
public final class SharedExchange {
    let memory: SharedMemory
    let model: Model
    let layout: SharedLayout
    let parameters: SharedRegion
    var gradients: [PeerID: SharedRegion] = [:]
    var log: (String) -> Void
    var loggedFailure = false
    /// The parameter version whose table the parameters region holds.
    var tableVersion: UInt64?

    public init(memory: SharedMemory, model: Model, log: @escaping (String) -> Void) throws {
        self.memory = memory; self.model = model; layout = SharedLayout(model); self.log = log
        // The table and its gradients are made on threads of their own (`publish`, `TableReduction`); OpenBLAS's
        // would spin beside them.
        BLAS.setThreads(1)
        // One secret for all of this coordinator's regions: a worker checks it in each region it opens.
        parameters = try memory.create(count: layout.count, token: UInt64.random(in: 1...UInt64.max))
    }

    /// A region for a worker that just registered on `peer` from `host`, if that is this host; nil otherwise (or when
    /// the region cannot be made: then messages, and one log line).
    func offer(to peer: PeerID, host: String) -> SharedOffer? {
        drop(peer)
        guard !host.isEmpty, host == memory.host else { return nil }
        do {
            let region = try memory.create(count: layout.count, token: parameters.token)
            gradients[peer] = region
            return SharedOffer(parameters: parameters.name, gradients: region.name, token: region.token)
        } catch {
            if !loggedFailure { log("cannot make shared memory for a local worker (\(error)); it gets messages") }
            loggedFailure = true
            return nil
        }
    }

    /// The gradient region of a worker that uses shared memory.
    func region(for peer: PeerID) -> SharedRegion? { gradients[peer] }

    /// The worker's registration ended, or it cannot open what it was offered (then it gets messages until it
    /// registers again).
    func drop(_ peer: PeerID) {
        if let region = gradients.removeValue(forKey: peer) { memory.remove(region) }
    }

    /// Drops the regions of connections that are no longer members.
    func keep(only peers: Set<PeerID>) {
        for peer in gradients.keys where !peers.contains(peer) { drop(peer) }
    }

    /// The parameter region as a buffer for the trainer's parameters (`Trainer(parameterStorage:)`), which a
    /// coordinator with local workers must use: the update writes them where the workers read them, and publishing
    /// copies nothing. It keeps the region mapped.
    public var parameterStorage: FloatBuffer { parameters.retainingBuffer(count: layout.parameterCount) }

    /// Makes the table of the parameters in the region (the trainer's own, `parameterStorage`) on `threads` threads,
    /// once per version, and stamps `version` on both for the local workers.
    func publish(_ params: FloatBuffer, version: UInt64, threads: Int) {
        precondition(params.pointer == parameters.floats, "SharedExchange: the trainer's parameters are not in the shared region (Trainer(parameterStorage:))")
        if tableVersion != version {
            let (model, p, table, parts) = (model, UnsafePointer(params.pointer), layout.table(in: parameters), SharedLayout.productParts)
            ThreadTeam.parallel(parts: parts, threads: threads) { part in
                model.makeTable(params: p, into: table, part: part, of: parts)
            }
            tableVersion = version
        }
        parameters.version = version
    }

    /// Removes every name this exchange made (at the coordinator's exit).
    public func close() {
        for peer in Array(gradients.keys) { drop(peer) }
        memory.remove(parameters)
    }
}
