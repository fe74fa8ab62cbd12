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

    /// The step count of moments written into `m` and `v` from elsewhere (the slices gathered from coordinator shards).
    public func setStep(_ n: Int) { step = n }

    /// params -= update(grads), in place: one step over the whole buffer on this thread (the reference that
    /// `step` is tested against).
    public func apply(params: FloatBuffer, grads: FloatBuffer) {
        precondition(params.count == grads.count, "params \(params.count) vs grads \(grads.count)")
        step += 1
        update(params: params, grads: grads, range: 0..<params.count, clip: nil)
    }

    /// What one training step's update found: the gradient norm before clipping, and whether what it wrote is finite.
    public struct StepReport: Sendable {
        public let norm: Double
        public let paramsFinite: Bool
        public let momentsFinite: Bool
        public init(norm: Double, paramsFinite: Bool, momentsFinite: Bool) {
            self.norm = norm; self.paramsFinite = paramsFinite; self.momentsFinite = momentsFinite
        }
    }

    /// One training step on `grads`, the gradient of a loss summed over `meanOver` targets, in two passes over the
    /// parameters, each spread over `threads` threads in fixed blocks (`Blocks`), so the result is the same bits for
    /// any thread count: (1) the mean (grads /= meanOver) and its global norm, summed in Double per block; (2) for
    /// each block, the clipped gradient (as `clipGradientNorm`), the optimiser's update, the moving average's (`average`
    /// += (1 - decay) (params - average)) and the finiteness checks of what was written, while the block is in cache.
    /// `checkNorm` sees the norm between the passes and may refuse the step. The clipped gradient is not written back. Replaces a pass per operation on one core (mean, norm, clip, update,
    /// average and three finiteness checks) when the cores that computed the gradients are idle.
    public func step(params: FloatBuffer, grads: FloatBuffer, meanOver n: Int, clip maxNorm: Double,
                     average: FloatBuffer? = nil, decay: Double = 0, threads: Int,
                     checkNorm: (Double) throws -> Void) rethrows -> StepReport {
        precondition(params.count == grads.count && (average?.count ?? params.count) == params.count, "step: sizes differ")
        return try step(params: params, mean: grads, squares: Optimizer.mean(grads, over: n, threads: threads), clip: maxNorm,
                        average: average, decay: decay, threads: threads, checkNorm: checkNorm)
    }

    /// `step` on a gradient already divided by its targets (`mean`), given the sums of squares of its blocks (the
    /// first pass, made elsewhere: `GradientComputer.meanGradients`).
    public func step(params: FloatBuffer, mean grads: FloatBuffer, squares: [Double], clip maxNorm: Double,
                     average: FloatBuffer? = nil, decay: Double = 0, threads: Int,
                     checkNorm: (Double) throws -> Void) rethrows -> StepReport {
        let norm = squares.reduce(0, +).squareRoot()
        try checkNorm(norm)  // before anything is written: a refused step leaves the parameters as they were
        return update(params: params, grads: grads, norm: norm, clip: maxNorm, average: average, decay: decay, threads: threads)
    }

    /// The first pass of `step`: grads /= n, and the sum of squares of each block of `Blocks` (in Double), in block
    /// order. Their sum in that order is the squared norm; a shard that owns a block-aligned slice of the parameters
    /// returns its blocks' parts, and the lead adds every shard's in order to the same bits.
    public static func mean(_ grads: FloatBuffer, over n: Int, threads: Int) -> [Double] {
        let g = grads.pointer, scale = meanScale(over: n)
        return Blocks.parts(grads.count, threads: threads) { _, r in
            Kernels.scaleSumOfSquares(g + r.lowerBound, count: r.count, scale: scale)
        }
    }

    /// The factor that turns a gradient summed over `n` targets into their mean.
    public static func meanScale(over n: Int) -> Float { Float(1 / Double(max(1, n))) }

    /// The second pass of `step`, given the global gradient norm: counts the step, then for each block the clipped
    /// gradient, the update, the average and the finiteness checks of what was written.
    public func update(params: FloatBuffer, grads: FloatBuffer, norm: Double, clip maxNorm: Double,
                       average: FloatBuffer? = nil, decay: Double = 0, threads: Int) -> StepReport {
        precondition(params.count == grads.count && (average?.count ?? params.count) == params.count, "update: sizes differ")
        let count = params.count
        let coef = maxNorm / (norm + 1e-6)
        let clip: Double? = maxNorm > 0 && coef < 1 ? coef : nil
        step += 1
        var flags = [UInt8](repeating: 0, count: Blocks.count(count))  // bit 0: parameters, bit 1: moments not finite
        flags.withUnsafeMutableBufferPointer { f in
            guard let fb = f.baseAddress else { return }
            Blocks.forEach(count, threads: threads) { b, r in
                update(params: params, grads: grads, range: r, clip: clip)
                let p = params.pointer + r.lowerBound
                if let average {
                    let a = average.pointer + r.lowerBound, d = Float(decay)
                    for i in 0..<r.count { a[i] = d * a[i] + (1 - d) * p[i] }
                }
                var bad: UInt8 = Kernels.allFinite(p, count: r.count) ? 0 : 1
                if kind == .adam && !(Kernels.allFinite(m.pointer + r.lowerBound, count: r.count)
                                      && Kernels.allFinite(v.pointer + r.lowerBound, count: r.count)) { bad |= 2 }
                fb[b] = bad
            }
        }
        let all = flags.reduce(0, |)
        return StepReport(norm: norm, paramsFinite: all & 1 == 0, momentsFinite: all & 2 == 0)
    }

    /// `step` with every norm accepted.
    public func step(params: FloatBuffer, grads: FloatBuffer, meanOver n: Int, clip maxNorm: Double,
                     average: FloatBuffer? = nil, decay: Double = 0, threads: Int) -> StepReport {
        step(params: params, grads: grads, meanOver: n, clip: maxNorm, average: average, decay: decay, threads: threads,
             checkNorm: { _ in })
    }

    /// The update of the current step (`step` already counted) over `range`, the gradient first multiplied by `clip`
    /// in Double when given (as `clipGradientNorm` does in place).
    func update(params: FloatBuffer, grads: FloatBuffer, range: Range<Int>, clip: Double?) {
        if let c = clip {
            update(params: params, grads: grads, range: range) { Float(Double($0) * c) }
        } else {
            update(params: params, grads: grads, range: range) { $0 }
        }
    }

    @inline(__always)
    private func update(params: FloatBuffer, grads: FloatBuffer, range: Range<Int>, _ gradient: (Float) -> Float) {
        let p = params.pointer, g = grads.pointer
        switch kind {
        case .sgd:
            let a = Float(lr)
            for i in range { p[i] -= a * gradient(g[i]) }
        case .adam:
            // torch.optim.Adam (single-tensor, non-amsgrad): p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
            let b1 = Float(beta1), b2 = Float(beta2)
            let bc1 = 1 - pow(beta1, Double(step)), bc2 = 1 - pow(beta2, Double(step))
            let stepSize = Float(lr / bc1), bc2Sqrt = Float(bc2.squareRoot()), e = Float(eps)
            let mp = m.pointer, vp = v.pointer
            for i in range {
                let gi = gradient(g[i])
                mp[i] = b1 * mp[i] + (1 - b1) * gi
                vp[i] = b2 * vp[i] + (1 - b2) * gi * gi
                p[i] -= stepSize * mp[i] / (vp[i].squareRoot() / bc2Sqrt + e)
            }
        }
    }
}
