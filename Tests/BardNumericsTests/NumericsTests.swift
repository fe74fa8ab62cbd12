import BardNumerics
import XCTest

final class BLASTests: XCTestCase {
    /// OpenBLAS sgemm against the naive triple loop, all transpose combinations, odd sizes, alpha and beta.
    func testGemmMatchesNaiveReference() {
        var rng = RNG(seed: 1)
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (17, 9, 33), (32, 2048, 64)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let a = FloatBuffer((0..<(m * k)).map { _ in rng.uniform(-1, 1) })
                    let b = FloatBuffer((0..<(k * n)).map { _ in rng.uniform(-1, 1) })
                    let c0 = (0..<(m * n)).map { _ in rng.uniform(-1, 1) }
                    let fast = FloatBuffer(c0), slow = FloatBuffer(c0)
                    let lda = ta ? m : k, ldb = tb ? k : n
                    BLAS.gemm(transA: ta, transB: tb, m: m, n: n, k: k, alpha: 0.7, a: a.pointer, lda: lda, b: b.pointer,
                              ldb: ldb, beta: 0.3, c: fast.pointer, ldc: n)
                    BLAS.naiveGemm(transA: ta, transB: tb, m: m, n: n, k: k, alpha: 0.7, a: a.pointer, lda: lda,
                                   b: b.pointer, ldb: ldb, beta: 0.3, c: slow.pointer, ldc: n)
                    for i in 0..<(m * n) {
                        XCTAssertEqual(fast[i], slow[i], accuracy: 1e-4 * Float(k).squareRoot(), "\(m)x\(n)x\(k) \(ta) \(tb)")
                    }
                }
            }
        }
    }

    func testRNGIsDeterministicAndUniform() {
        var a = RNG(seed: 9), b = RNG(seed: 9)
        XCTAssertEqual((0..<10).map { _ in a.next() }, (0..<10).map { _ in b.next() })
        var mean = 0.0
        for _ in 0..<100_000 { mean += a.uniform() }
        XCTAssertEqual(mean / 100_000, 0.5, accuracy: 0.01)
        let r = CounterRandom(key: CounterRandom.key(1, 2, 3))
        XCTAssertEqual(r.uniform(at: 77), CounterRandom(key: CounterRandom.key(1, 2, 3)).uniform(at: 77))
        XCTAssertNotEqual(r.uniform(at: 77), CounterRandom(key: CounterRandom.key(1, 3, 3)).uniform(at: 77))
    }
}
