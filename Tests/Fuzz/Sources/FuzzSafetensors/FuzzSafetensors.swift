import BardModel

/// A small valid checkpoint file, mutated by the fuzzer as well as raw bytes.
let template: [UInt8] = Safetensors.encode(
    [Tensor(name: "a", shape: [2, 3], values: [1, 2, 3, 4, 5, 6]), Tensor(name: "b.weight", shape: [1], values: [7])],
    metadata: ["format": "bard-1", "step": "3"])

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // Files without a checksum are warned about; millions of warnings would only slow the fuzzer.
    Safetensors.warningHandler = { _ in }
    var bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let mode = bytes.first, mode >= 128 {
        // Edit the template: (offset, value) pairs; the header is where the decoding logic lives.
        var file = template
        var rest = bytes.dropFirst()
        while rest.count >= 2 {
            let at = Int(rest.removeFirst()) % file.count, value = rest.removeFirst()
            file[at] = value
        }
        // Half the time, stamp the whole-file checksum again, so edits reach the structural checks behind it.
        if mode & 1 == 1 { Safetensors.seal(&file) }
        bytes = file
    }
    _ = try? Safetensors.decode(bytes, name: "fuzz")
    return 0
}
