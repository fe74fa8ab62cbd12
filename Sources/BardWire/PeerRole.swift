/// What an authenticated key may do, as `authorized_keys` grants it (`KEY ROLE [name]`). A key registers only in its
/// own role: a fetch key on an operator's laptop cannot join as a worker. New roles are added here.
public enum PeerRole: String, Sendable, CaseIterable, Codable {
    /// Computes gradients for the coordinator's steps.
    case worker
    /// Downloads checkpoints (`bard fetch`), nothing else.
    case fetch
    /// Holds a slice of the parameters (sharded coordinators).
    case shard
}
