import BardNumerics
import CPUCheck
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

    /// Blocks of rows transposed into the middle of a wider matrix (ld larger than the block), the rest untouched,
    /// over the sizes OpenBLAS's kernel treats apart (16/8/4/2/1 columns, 4/2/1 rows, 384-row blocks, and ldb near a
    /// multiple of 1024, where it turns its widest path off), against a plain loop.
    func testTransposeOfARowBlockLandsInItsColumns() {
        var rng = RNG(seed: 2)
        for rows in [1, 2, 3, 5, 7, 389] {
            for cols in [1, 2, 3, 4, 5, 8, 9, 15, 16, 17, 31, 33] {
                let first = 2, lda = cols + 1
                for ldb in [first + rows + 3, 1023, 1024, 2048] {
                    let a = FloatBuffer((0..<((first + rows) * lda)).map { _ in rng.uniform(-1, 1) })
                    let b = FloatBuffer(count: cols * ldb)
                    b.pointer.update(repeating: -9, count: b.count)
                    BLAS.transpose(rows: rows, cols: cols, a: a.pointer + first * lda, lda: lda, b: b.pointer + first, ldb: ldb)
                    var wrong = 0
                    for i in 0..<cols {
                        for j in 0..<ldb where b[i * ldb + j] != ((first..<(first + rows)).contains(j) ? a[j * lda + i] : -9) {
                            wrong += 1
                        }
                    }
                    XCTAssertEqual(wrong, 0, "\(rows) x \(cols), ldb \(ldb)")
                }
            }
        }
    }

    /// The CPU check that runs before main (Sources/CPUCheck) finds nothing missing on a machine of ours, which
    /// runs this suite's numeric code compiled for it.
    func testThisMachineHasTheInstructionSetsOfTheBuild() {
        var text = [CChar](repeating: 1, count: 256)
        XCTAssertEqual(bard_missing_instruction_sets(&text, text.count), 0, String(cString: text))
        XCTAssertEqual(text[0], 0, "an empty list")
    }

    /// The kernels bard forces, from /proc/cpuinfo: SkylakeX on full-width AVX-512 AMD cores (Zen 5, family 26),
    /// Haswell on other AMD AVX2 cores (Zen 3; Zen 4's half-width AVX-512), OpenBLAS's own choice elsewhere, and an
    /// operator's OPENBLAS_CORETYPE always.
    func testPreferredKernelsFollowTheCPU() {
        func cpu(_ vendor: String, family: Int, flags: String) -> String {
            (0..<2).map { "processor\t: \($0)\nvendor_id\t: \(vendor)\ncpu family\t: \(family)\nmodel\t\t: 2\nflags\t\t: fpu \(flags) sse2\n\n" }.joined()
        }
        let zen3 = cpu("AuthenticAMD", family: 25, flags: "avx fma avx2 bmi2")
        let zen4 = cpu("AuthenticAMD", family: 25, flags: "avx fma avx2 avx512f avx512bw")
        let zen5 = cpu("AuthenticAMD", family: 26, flags: "avx fma avx2 avx512f avx512bw avx512_vp2intersect")
        XCTAssertEqual(OpenBLASCore.preferredCoreType(environment: [:], cpuinfo: zen3), "Haswell")
        XCTAssertEqual(OpenBLASCore.preferredCoreType(environment: [:], cpuinfo: zen4), "Haswell")
        XCTAssertEqual(OpenBLASCore.preferredCoreType(environment: [:], cpuinfo: zen5), "SkylakeX")
        XCTAssertNil(OpenBLASCore.preferredCoreType(environment: [:], cpuinfo: cpu("AuthenticAMD", family: 26, flags: "avx sse4_2")))
        XCTAssertNil(OpenBLASCore.preferredCoreType(environment: [:], cpuinfo: cpu("GenuineIntel", family: 6, flags: "avx fma avx2 avx512f")))
        XCTAssertNil(OpenBLASCore.preferredCoreType(environment: [:], cpuinfo: nil))
        XCTAssertEqual(OpenBLASCore.preferredCoreType(environment: ["OPENBLAS_CORETYPE": "Zen"], cpuinfo: zen5), "Zen")
    }

    /// Threads' shares: contiguous, covering 0..<count once, sizes within one of each other, or with `multipleOf`
    /// every inner boundary a multiple (some shares empty when there are more parts than multiples).
    func testPartsCoverTheRangeInOrder() {
        for count in [0, 1, 5, 16, 37, 2048] {
            for n in [1, 2, 3, 8] {
                for multiple in [nil, 16] {
                    let parts = (0..<n).map { i in
                        multiple.map { Range(part: i, of: n, in: count, multipleOf: $0) } ?? Range(part: i, of: n, in: count)
                    }
                    let what = "count \(count) parts \(n) multiple \(multiple.map(String.init) ?? "none")"
                    XCTAssertEqual(parts.first?.lowerBound, 0, what)
                    XCTAssertEqual(parts.last?.upperBound, count, what)
                    for (a, b) in zip(parts, parts.dropFirst()) { XCTAssertEqual(a.upperBound, b.lowerBound, what) }
                    if let m = multiple {
                        for p in parts.dropLast() { XCTAssertEqual(p.upperBound % m == 0 || p.upperBound == count, true, what) }
                    } else {
                        XCTAssertLessThanOrEqual(parts.map(\.count).max()! - parts.map(\.count).min()!, 1, what)
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

    /// The bit-level finiteness check against Float.isFinite: extremes and subnormals are finite; NaN (quiet and
    /// signalling, either sign) and both infinities anywhere in the array are not.
    func testAllFiniteMatchesIsFinite() {
        let finite: [Float] = [0, -0.0, 1, -1, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude,
                               .leastNormalMagnitude, 3.4e38, 1e-45]
        let special: [Float] = [.nan, -.nan, .signalingNaN, .infinity, -.infinity, Float(bitPattern: 0x7F80_0001)]
        for n in [1, 7, 8, 33, 1000] {
            var values = (0..<n).map { finite[$0 % finite.count] }
            XCTAssertTrue(Kernels.allFinite(values, count: n))
            for s in special {
                for at in [0, n / 2, n - 1] {
                    let old = values[at]
                    values[at] = s
                    XCTAssertFalse(Kernels.allFinite(values, count: n), "\(s) at \(at) of \(n)")
                    XCTAssertFalse(values.allSatisfy(\.isFinite))
                    values[at] = old
                }
            }
        }
    }

    /// The vectorised sigmoid and tanh (a branch-free exp inside) against Double's, densely over the range where they
    /// are not saturated and out to +-200, where they must saturate exactly; and against the scalar versions.
    func testVectorisedSigmoidAndTanhMatchDouble() {
        var xs: [Float] = [-200, -100, -88.5, -87.3, -44, 44, 87.3, 88.5, 100, 200, 0, -0.0, 1e-7, -1e-7]
        var x: Float = -45
        while x <= 45 { xs.append(x); x += x.magnitude < 3 ? 0.000_61 : 0.0137 }
        var s = xs, t = xs
        Kernels.sigmoidInPlace(&s, count: xs.count)
        Kernels.tanh(xs, into: &t, count: xs.count)
        var worstSigmoid = 0.0, worstTanh = 0.0
        for (k, x) in xs.enumerated() {
            let exactS = 1 / (1 + Foundation.exp(-Double(x))), exactT = Foundation.tanh(Double(x))
            // (Below 1e-30 a float sigmoid is a flush towards zero, not an error of the method.)
            if exactS > 1e-30 { worstSigmoid = max(worstSigmoid, abs(Double(s[k]) - exactS) / exactS) }
            worstTanh = max(worstTanh, abs(Double(t[k]) - exactT))
            XCTAssertEqual(s[k], Kernels.sigmoid(x), accuracy: 3e-7 * max(s[k], 1e-30), "sigmoid \(x)")
            XCTAssertEqual(t[k], Kernels.tanh(x), accuracy: 3e-7, "tanh \(x)")
        }
        XCTAssertLessThan(worstSigmoid, 4e-7, "sigmoid relative error")
        XCTAssertLessThan(worstTanh, 3e-7, "tanh absolute error")
        // NaN in, NaN out (the training loop's divergence check relies on it), for either sign.
        var nan: [Float] = [.nan, -.nan, 1]
        Kernels.sigmoidInPlace(&nan, count: 3)
        XCTAssertTrue(nan[0].isNaN && nan[1].isNaN && nan[2] == Kernels.sigmoid(1))
        var tanhNaN: [Float] = [0, 0]
        Kernels.tanh([.nan, -.nan], into: &tanhNaN, count: 2)
        XCTAssertTrue(tanhNaN[0].isNaN && tanhNaN[1].isNaN)
        for (k, x) in xs.enumerated() where x.magnitude >= 44 {
            XCTAssertEqual(t[k], x > 0 ? 1 : -1, "tanh saturates at \(x)")
            if x > 0 { XCTAssertEqual(s[k], 1, "sigmoid saturates at \(x)") }
        }
    }
}
