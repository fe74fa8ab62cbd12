import Foundation

/// Whether this CPU has the instruction sets the numeric modules were compiled for (Package.swift: Haswell's on
/// x86-64, unless built with BARD_PORTABLE=1). `bard` asks first thing, so that an older CPU gets one line instead of
/// an illegal instruction. This module itself is compiled for any x86-64.
public enum CPUSupport {
    /// The /proc/cpuinfo flags of what LLVM's `haswell` target may emit (abm is LZCNT).
    public static let haswellFlags = ["avx", "avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "popcnt", "f16c"]

    /// The flags this build needs: Haswell's when it was compiled for it, none otherwise.
    public static var required: [String] {
        #if BARD_HASWELL
        return haswellFlags
        #else
        return []
        #endif
    }

    /// The required flags missing from the first processor's `flags` line; none when there is no such line (not
    /// Linux), since then nothing is known.
    public static func missing(_ required: [String] = required, cpuinfo: String?) -> [String] {
        guard let line = cpuinfo?.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return [] }
        let have = Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
        return required.filter { !have.contains($0) }
    }

    /// The one-line complaint for `missing`, or nil when nothing is missing.
    public static func complaint(cpuinfo: String? = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) -> String? {
        let lacking = missing(cpuinfo: cpuinfo)
        guard !lacking.isEmpty else { return nil }
        return "this bard was built for x86-64 CPUs with AVX2 and FMA (Haswell or newer), and this CPU lacks "
            + "\(lacking.joined(separator: ", ")); rebuild it with BARD_PORTABLE=1 swift build -c release"
    }
}
