/// Tolerances of the cluster's in-memory tests, in one place (relative, over a whole parameter vector).
enum Tolerance {
    /// N workers against one process after a few Adam steps: another split of columns, another summation order.
    static let cluster = 1e-5
    /// The same sums in the same order (sharded coordinators against the star), or one step's reduction against
    /// its reference in another order (the tables' gradients summed before their products, not after).
    static let sameSums = 1e-6
    static let reduction = 1e-6
}

/// The relative difference of two parameter vectors over the whole vector: |a - reference| / |reference| (infinite
/// when their sizes differ).
func relativeDifference(_ a: [Float], from reference: [Float]) -> Double {
    guard a.count == reference.count else { return .infinity }
    var diff = 0.0, norm = 0.0
    for i in a.indices { diff += Double(a[i] - reference[i]) * Double(a[i] - reference[i]); norm += Double(reference[i]) * Double(reference[i]) }
    return (diff / norm).squareRoot()
}
