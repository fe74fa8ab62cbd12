import Foundation

/// Which OpenBLAS kernels Bard computes with. OpenBLAS 0.3.21 takes Zen 4 cores for Cooperlake and picks kernels up to
/// 40% slower for Bard's small-M GEMMs (../shared/reference): Zen 4 runs AVX-512 at half width. Zen 5 (family 26) runs it
/// at full width, but OpenBLAS 0.3.21 does not know it and falls back to Haswell, which trains 1.4-1.6x slower there
/// than its SkylakeX kernels (docs/scaling.md). So Bard prefers SkylakeX on AMD cores from family 26 with AVX-512, and
/// Haswell on other AMD AVX2/FMA cores.
/// OpenBLAS reads OPENBLAS_CORETYPE when it loads, before main, so the choice must be in a process's environment when
/// it starts: `bard` re-executes itself once with it, and tests start `bard` processes with the kernels they use
/// themselves (`childEnvironment`), so that results two processes compare come from the same kernels.
public enum OpenBLASCore {
    /// The one decision: the core type to force, or nil for OpenBLAS's own choice. An OPENBLAS_CORETYPE already set
    /// is respected.
    public static func preferredCoreType(environment: [String: String] = ProcessInfo.processInfo.environment,
                                         cpuinfo: String? = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) -> String? {
        if let set = environment["OPENBLAS_CORETYPE"], !set.isEmpty { return set }
        guard let cpuinfo, cpuinfo.contains("AuthenticAMD") else { return nil }
        // The first processor's fields; every core of a machine is the same model.
        func field(_ name: String) -> String? {
            for line in cpuinfo.split(separator: "\n", omittingEmptySubsequences: true) {
                let parts = line.split(separator: ":", maxSplits: 1)
                if parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == name {
                    return parts[1].trimmingCharacters(in: .whitespaces)
                }
            }
            return nil
        }
        let flags = Set((field("flags") ?? "").split(separator: " ").map(String.init))
        guard flags.contains("avx2"), flags.contains("fma") else { return nil }
        if flags.contains("avx512f"), let family = field("cpu family").flatMap({ Int($0) }), family >= 26 { return "SkylakeX" }
        return "Haswell"
    }

    /// Re-executes this process once with the preferred kernels if it was started without them (BARD_NO_REEXEC=1
    /// prevents it).
    public static func preferFastKernels() {
        let env = ProcessInfo.processInfo.environment
        guard env["OPENBLAS_CORETYPE"] == nil, env["BARD_NO_REEXEC"] == nil, let core = preferredCoreType(environment: env) else { return }
        setenv("OPENBLAS_CORETYPE", core, 1)
        setenv("BARD_NO_REEXEC", "1", 1)
        let args = CommandLine.arguments.map { strdup($0) } + [nil]
        execv("/proc/self/exe", args)
        // execv only returns on failure; carry on with the default kernels.
    }

    /// The environment for a child process that must compute with the same kernels as this one: the kernels this
    /// process's OpenBLAS actually runs.
    public static func childEnvironment() -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_CORETYPE"] = BLAS.coreName
        env["BARD_NO_REEXEC"] = "1"
        return env
    }
}
