import BardNumerics
import Foundation

/// Global-norm clipping as torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1.
/// Returns the norm before clipping.
///
/// The norm is summed in Double (`sumOfSquares`): a single Float value above 1.8e19 already squares to infinity, and a
/// finite gradient must clip, not be called diverged. The scaling is done in Double too, because for gradients near
/// Float's maximum the factor itself (max_norm / 1e38) is below Float's normal range and would lose its precision.
@discardableResult
public func clipGradientNorm(_ grads: FloatBuffer, maxNorm: Double) -> Double {
    let norm = grads.sumOfSquares().squareRoot()
    if maxNorm > 0 {
        let coef = maxNorm / (norm + 1e-6)
        if coef < 1 {
            let g = grads.pointer
            for i in 0..<grads.count { g[i] = Float(Double(g[i]) * coef) }
        }
    }
    return norm
}

/// SGD (no momentum) or Adam with PyTorch's defaults (betas 0.9, 0.999, eps 1e-8, no weight decay), over the flat
/// parameter buffer. The moments and the step count are saved with checkpoints so a resumed run continues exactly.
public final class Optimizer {
    public let kind: OptimizerKind
    public var lr: Double
    public private(set) var step: Int = 0
    public let m: FloatBuffer
    public let v: FloatBuffer
    let beta1 = 0.9, beta2 = 0.999, eps = 1e-8

    public init(kind: OptimizerKind, lr: Double, parameterCount n: Int) {
        self.kind = kind; self.lr = lr
        m = FloatBuffer(count: kind == .adam ? n : 0)
        v = FloatBuffer(count: kind == .adam ? n : 0)
    }

    public func restore(step: Int, lr: Double, m: [Float], v: [Float]) throws {
        guard m.count == self.m.count, v.count == self.v.count else {
            throw BardError.badCheckpoint("optimiser state has \(m.count) moments, the model needs \(self.m.count)")
        }
        self.step = step; self.lr = lr
        self.m.copy(from: FloatBuffer(m)); self.v.copy(from: FloatBuffer(v))
    }

    /// params -= update(grads), in place.
    public func apply(params: FloatBuffer, grads: FloatBuffer) {
        precondition(params.count == grads.count, "params \(params.count) vs grads \(grads.count)")
        step += 1
        let p = params.pointer, g = grads.pointer, n = params.count
        switch kind {
        case .sgd:
            let a = Float(lr)
            for i in 0..<n { p[i] -= a * g[i] }
        case .adam:
            // torch.optim.Adam (single-tensor, non-amsgrad): p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
            let b1 = Float(beta1), b2 = Float(beta2)
            let bc1 = 1 - pow(beta1, Double(step)), bc2 = 1 - pow(beta2, Double(step))
            let stepSize = Float(lr / bc1), bc2Sqrt = Float(bc2.squareRoot()), e = Float(eps)
            let mp = m.pointer, vp = v.pointer
            for i in 0..<n {
                let gi = g[i]
                mp[i] = b1 * mp[i] + (1 - b1) * gi
                vp[i] = b2 * vp[i] + (1 - b2) * gi * gi
                p[i] -= stepSize * mp[i] / (vp[i].squareRoot() / bc2Sqrt + e)
            }
        }
    }
}
