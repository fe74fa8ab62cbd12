// swift-tools-version:6.0
import PackageDescription

// libFuzzer targets for the two decoders that read bytes from outside: cluster frames and safetensors files.
// Built and run by scripts/fuzz.sh with `swift build --sanitize=fuzzer --sanitize=address`.
let fuzzerEntry: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]  // libFuzzer provides main()

let package = Package(
    name: "BardFuzz",
    dependencies: [.package(name: "Bard", path: "../..")],
    targets: [
        .executableTarget(name: "FuzzFrames", dependencies: [.product(name: "BardWire", package: "Bard")],
                          swiftSettings: fuzzerEntry),
        .executableTarget(name: "FuzzSafetensors", dependencies: [.product(name: "BardModel", package: "Bard")],
                          swiftSettings: fuzzerEntry),
    ],
    swiftLanguageModes: [.v5]
)
