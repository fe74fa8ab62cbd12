import Foundation

/// glibc serves every block above its mmap threshold with a fresh mapping and unmaps it on free, so each message
/// buffer of a cluster step (the parameters and the gradients, 8.8 MB each for LSTM 512) was page-faulted in again:
/// about 25 ms of a 170-200 ms step. Raising the threshold to glibc's maximum and not trimming the heap lets those
/// blocks be reused. Measured with scripts/bench-cluster.sh.
enum Allocator {
    static func reuseLargeBlocks() {
        // mallopt is declared in malloc.h, which Swift's Glibc module does not export; look it up instead.
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }  // RTLD_DEFAULT
        let mallopt = unsafeBitCast(symbol, to: (@convention(c) (Int32, Int32) -> Int32).self)
        let trimThreshold: Int32 = -1, mmapThreshold: Int32 = -3  // M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
        _ = mallopt(mmapThreshold, 32 << 20)  // the largest value glibc accepts; bigger blocks are still mapped
        _ = mallopt(trimThreshold, 512 << 20)
    }
}
