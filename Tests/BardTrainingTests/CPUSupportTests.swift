import BardTraining
import Foundation
import XCTest

final class CPUSupportTests: XCTestCase {
    func testMissingFlagsAreReadFromTheFirstProcessor() {
        let zen3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx f16c fma movbe popcnt abm bmi1 avx2 bmi2\n"
            + "processor\t: 1\nflags\t\t: fpu\n"
        XCTAssertEqual(CPUSupport.missing(CPUSupport.haswellFlags, cpuinfo: zen3), [])
        let sandyBridge = "processor\t: 0\nflags\t\t: fpu sse2 sse4_2 avx popcnt\n"
        XCTAssertEqual(CPUSupport.missing(CPUSupport.haswellFlags, cpuinfo: sandyBridge),
                       ["avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "f16c"])
        // No flags line (not Linux, or unreadable): nothing is known, so nothing is refused.
        XCTAssertEqual(CPUSupport.missing(CPUSupport.haswellFlags, cpuinfo: nil), [])
        XCTAssertEqual(CPUSupport.missing(CPUSupport.haswellFlags, cpuinfo: "processor\t: 0\n"), [])
    }

    /// The machine running this test runs the numeric modules, so its own /proc/cpuinfo must satisfy the check.
    func testThisMachinePassesItsOwnCheck() throws {
        guard let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else {
            throw XCTSkip("no /proc/cpuinfo")
        }
        XCTAssertNil(CPUSupport.complaint(cpuinfo: cpuinfo))
        #if arch(x86_64)
        XCTAssertEqual(CPUSupport.missing(CPUSupport.haswellFlags, cpuinfo: cpuinfo), [], "an x86 machine of ours has AVX2 and FMA")
        #endif
    }
}
