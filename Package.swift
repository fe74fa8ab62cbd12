// swift-tools-version:6.0
import PackageDescription

// The numeric loops (activations, the optimiser, sums) are compiled for Haswell's instruction sets, AVX2 and FMA, so
// that they run eight floats wide instead of four; every x86-64 machine Bard is meant for has them, and `bard` says
// in one line when the CPU it runs on does not (Sources/CPUCheck, before any Swift code runs). BARD_PORTABLE=1 at
// build time compiles for any x86-64 (and so must a cross-compilation from x86-64 to another architecture: this
// tests the machine that builds). -fno-math-errno lets squareRoot() be the instruction rather than a call that may
// set errno, so that the optimiser's loop vectorises too (the values are the same: only errno would differ).
// BARD_FMA tells Swift code that asks for fused multiply-adds outright (StripProduct) that they are instructions here.
#if arch(x86_64)
let haswell = Context.environment["BARD_PORTABLE"] != "1"
#else
let haswell = false
#endif
let numericFlags = ["-Ounchecked", "-Xcc", "-fno-math-errno"] + (haswell ? ["-target-cpu", "haswell", "-D", "BARD_FMA"] : [])

// Dependencies flow one way: numerics -> model -> training -> cluster -> transport -> bard; the wire format
// (BardWire) depends on numerics only;
// plot -> monitor (metrics and dashboard over HTTP) -> bard.
let package = Package(
    name: "Bard",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "bard", targets: ["bard"]),
        // For the fuzz targets in Tests/Fuzz (a package of their own, built with --sanitize=fuzzer).
        .library(name: "BardModel", targets: ["BardModel"]),
        .library(name: "BardCluster", targets: ["BardCluster"]),
        .library(name: "BardWire", targets: ["BardWire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZMQ", path: "Sources/CZMQ", pkgConfig: "libzmq",
                       providers: [.apt(["libzmq3-dev"])]),
        .target(name: "BardNumerics", dependencies: ["CBLAS"], swiftSettings: [.unsafeFlags(numericFlags)]),
        .target(name: "BardModel", dependencies: ["BardNumerics", .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: [.unsafeFlags(numericFlags)]),
        // A step's metrics record: written by the trainer, shown by the monitor, read by plot (no dependencies).
        .target(name: "BardMetrics"),
        .target(name: "BardTraining", dependencies: ["BardModel", "BardMetrics"]),
        // Refuses, in one line, a CPU without the instruction sets the numeric modules were compiled for (C, for any
        // x86-64, run as a constructor).
        .target(name: "CPUCheck", cSettings: haswell ? [.define("BARD_HASWELL")] : []),
        // The wire format: what peers send each other, and nothing else (numerics only).
        .target(name: "BardWire", dependencies: ["BardNumerics"]),
        .target(name: "BardCluster", dependencies: ["BardWire", "BardTraining", "BardModel"]),
        .target(name: "BardTransport", dependencies: ["CZMQ", "BardCluster"]),
        .target(name: "BardPlot", dependencies: ["BardMetrics"]),
        .target(name: "BardMonitor", dependencies: [
            "BardPlot", .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        .executableTarget(name: "bard", dependencies: [
            "CPUCheck", "BardTraining", "BardModel", "BardNumerics", "BardMetrics", "BardCluster", "BardTransport", "BardPlot", "BardMonitor",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "BardNumericsTests", dependencies: ["BardNumerics", "CPUCheck"]),
        .testTarget(name: "BardModelTests", dependencies: ["BardModel"]),
        .testTarget(name: "BardTrainingTests", dependencies: ["BardTraining", "BardMetrics"]),
        .testTarget(name: "BardClusterTests", dependencies: ["BardCluster", "BardTraining", "BardMetrics"]),
        .testTarget(name: "BardCLITests", dependencies: ["BardMetrics", "BardModel", "BardTraining", "BardCluster", "BardTransport"]),
        .testTarget(name: "BardTransportTests", dependencies: ["BardTransport"]),
        .testTarget(name: "BardMonitorTests", dependencies: ["BardMonitor", "BardPlot", "BardMetrics"]),
    ],
    swiftLanguageModes: [.v5]
)
