import Foundation

/// Elementwise activations used by the recurrent cells. Written as plain loops over raw pointers so the compiler
/// vectorises them; the derivatives are expressed through the outputs (sigma' = s(1-s), tanh' = 1-t^2).
public enum Kernels {
    @inline(__always) public static func sigmoid(_ x: Float) -> Float { 1 / (1 + expf(-x)) }
    /// tanh through expf: glibc's tanhf (via expm1f) cost more than all other pointwise work together.
    /// Absolute error about 1e-7; saturates cleanly to +-1 (exp overflow gives 1 - 0).
    @inline(__always) public static func tanh(_ x: Float) -> Float { 1 - 2 / (1 + expf(2 * x)) }

    /// y[i] += b[i % n] for a (rows x n) row-major matrix.
    public static func addRowVector(_ y: UnsafeMutablePointer<Float>, rows: Int, n: Int, _ b: UnsafePointer<Float>) {
        for r in 0..<rows {
            let row = y + r * n
            for j in 0..<n { row[j] += b[j] }
        }
    }

    /// b[j] += sum over rows of y[r, j].
    public static func addColumnSums(_ y: UnsafePointer<Float>, rows: Int, n: Int, into b: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let row = y + r * n
            for j in 0..<n { b[j] += row[j] }
        }
    }
}
