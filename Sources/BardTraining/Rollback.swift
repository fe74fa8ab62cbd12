import BardNumerics

/// The trainer's state at its last checkpoint, kept in memory while the update is made elsewhere (coordinator
/// shards): when an owner of the state is lost (`RemoteStateLost`), the run goes back to it, as a `--resume` would,
/// without leaving the process. Everything a checkpoint pair holds that the steps since have changed.
struct Rollback {
    let params: FloatBuffer, average: FloatBuffer?, m: FloatBuffer, v: FloatBuffer, optimizerStep: Int
    let h: FloatBuffer, c: FloatBuffer
    let step: Int, epoch: Int, window: Int, chars: Int, minLoss: Double, rng: RNG, lastValLoss: Double?

    /// The trainer's state now (its buffers must be current: brought back from where the updates are made).
    init(of t: Trainer) {
        func copy(_ b: FloatBuffer) -> FloatBuffer { let c = FloatBuffer(count: b.count); c.copy(from: b); return c }
        params = copy(t.params); average = t.average.map(copy); m = copy(t.optimizer.m); v = copy(t.optimizer.v)
        optimizerStep = t.optimizer.step; h = copy(t.state.h); c = copy(t.state.c)
        step = t.step; epoch = t.epoch; window = t.window; chars = t.chars; minLoss = t.minLoss; rng = t.rng
        lastValLoss = t.lastValLoss
    }

    func restore(into t: Trainer) {
        t.params.copy(from: params)
        if let average { t.average?.copy(from: average) }
        t.optimizer.m.copy(from: m); t.optimizer.v.copy(from: v); t.optimizer.setStep(optimizerStep)
        t.state.h.copy(from: h); t.state.c.copy(from: c)
        t.step = step; t.epoch = epoch; t.window = window; t.chars = chars; t.minLoss = minLoss; t.rng = rng
        t.lastValLoss = lastValLoss
    }
}
