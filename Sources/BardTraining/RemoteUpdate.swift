import BardModel
import BardNumerics

/// Where the update is made when the parameters live outside this process: coordinator shards (issue 11), each
/// owning a slice of the parameters, of their average and of the optimiser's state. The trainer still decides
/// everything (the rate, the clipping, what a non-finite norm means, when to validate and checkpoint); this carries
/// its decisions out and brings the state back when the trainer needs it.
public protocol RemoteUpdate: AnyObject {
    /// Hands the owners the trainer's parameters, average and optimiser state (the start of a run, or a resume).
    func seed(params: FloatBuffer, average: FloatBuffer?, optimizer: Optimizer) throws
    /// The update of the step whose gradient was just computed: the global norm from the owners' parts, `checkNorm`
    /// on it (if it throws, nothing is written), then the clipped update with `lr` and the average on every owner.
    func update(lr: Double, clip: Double, decay: Double, checkNorm: (Double) throws -> Void) throws -> Optimizer.StepReport
    /// Copies the owners' parameters, average and optimiser state into the trainer's buffers.
    func gather(params: FloatBuffer, average: FloatBuffer?, optimizer: Optimizer) throws
    /// Whether the owners should be seeded again (new ones joined) as soon as the trainer's buffers are current.
    var wantsSeed: Bool { get }
}

/// Thrown by a `RemoteUpdate` (or the gradient computer beside it) that lost part of the state it holds: an owner
/// died, restarted or was cut off. The trainer goes back to its last checkpoint (kept in memory), seeds the owners
/// that remain with it and goes on; `reason` says what was lost, for the log.
public struct RemoteStateLost: Error, CustomStringConvertible {
    public let reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { reason }
}
