// One preallocated, aligned block of memory cut into equal slots: the only buffers the hot paths use, so
// per-block work allocates nothing and every slot satisfies O_DIRECT's alignment rules. Slabs of 1 MiB or more
// are mapped directly (mmap) and unmapped when freed: through malloc, the slabs a merge makes for each window
// stayed in its arenas after being freed, and its peak RSS grew with the number of windows (46 MB at 1 GiB, 75
// MB at 8 GiB of the alternating source of Tools/scale-check).
#if canImport(Glibc)
import Glibc
#endif

public final class AlignedSlab: @unchecked Sendable {  // fixed memory; who may touch a slot is the pipeline's hand-off, under its lock
    public let base: UnsafeMutableRawPointer
    public let slotSize: Int
    public let slotCount: Int
    private let mapped: Int
    public var byteCount: Int { slotSize * slotCount }

    /// `alignment` must be a power of two; slots are rounded up to it.
    public init(slotSize: Int, slotCount: Int, alignment: Int = 4096) {
        let rounded = (slotSize + alignment - 1) / alignment * alignment
        let bytes = max(rounded * slotCount, alignment)
        self.slotSize = rounded
        self.slotCount = slotCount
        if bytes >= 1 << 20 && alignment <= 4096 {
            let length = (bytes + 4095) / 4096 * 4096
            let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            precondition(p != MAP_FAILED && p != nil, "out of memory mapping \(length) bytes")
            base = p!
            mapped = length
        } else {
            var p: UnsafeMutableRawPointer? = nil
            let r = posix_memalign(&p, alignment, bytes)
            precondition(r == 0 && p != nil, "out of memory allocating \(bytes) bytes")
            base = p!
            mapped = 0
        }
    }

    deinit {
        if mapped > 0 { munmap(base, mapped) } else { free(base) }
    }

    @inline(__always)
    public func slot(_ i: Int) -> UnsafeMutableRawPointer { base + i * slotSize }
}
