import BardModel

/// Where things are in a shared region: a parameters region holds the parameters and then their table (V, G*H), a
/// gradient region the gradient sums and then the gradient of the table. The embedding's and W_ih0's places in a
/// gradient region are not written (`Model.tableParameterRanges`).
public struct SharedLayout: Sendable {
    public let parameterCount: Int
    public let tableCount: Int
    public init(_ model: Model) { parameterCount = model.parameterCount; tableCount = model.tableCount }
    /// The table's products are made in this many parts whatever the thread count, so that their bits do not depend
    /// on it.
    public static let productParts = 4
    /// Floats in a region.
    public var count: Int { parameterCount + tableCount }
    public func table(in region: SharedRegion) -> UnsafeMutablePointer<Float> { region.floats + parameterCount }
}
