import Foundation

/// OpenBLAS 0.3.21 takes Zen 4 cores for Cooperlake and picks kernels up to 40% slower for Bard's small-M GEMMs
/// (../shared/reference). OpenBLAS reads OPENBLAS_CORETYPE when it loads, before main, so Bard re-executes itself
/// once with Haswell kernels on AVX2/FMA cores. An OPENBLAS_CORETYPE already set (or BARD_NO_REEXEC=1) is respected.
enum OpenBLASCore {
    static func preferFastKernels() {
        let env = ProcessInfo.processInfo.environment
        guard env["OPENBLAS_CORETYPE"] == nil, env["BARD_NO_REEXEC"] == nil else { return }
        guard let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              cpuinfo.contains("AuthenticAMD"), cpuinfo.contains(" avx2"), cpuinfo.contains(" fma") else { return }
        setenv("OPENBLAS_CORETYPE", "Haswell", 1)
        setenv("BARD_NO_REEXEC", "1", 1)
        let args = CommandLine.arguments.map { strdup($0) } + [nil]
        execv("/proc/self/exe", args)
        // execv only returns on failure; carry on with the default kernels.
    }
}
