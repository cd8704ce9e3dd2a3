// One preallocated, aligned block of memory cut into equal slots: the only buffers the hot paths use, so
// per-block work allocates nothing and every slot satisfies O_DIRECT's alignment rules.
#if canImport(Glibc)
import Glibc
#endif

public final class AlignedSlab {
    public let base: UnsafeMutableRawPointer
    public let slotSize: Int
    public let slotCount: Int
    public var byteCount: Int { slotSize * slotCount }

    /// `alignment` must be a power of two; slots are rounded up to it.
    public init(slotSize: Int, slotCount: Int, alignment: Int = 4096) {
        let rounded = (slotSize + alignment - 1) / alignment * alignment
        var p: UnsafeMutableRawPointer? = nil
        let r = posix_memalign(&p, alignment, max(rounded * slotCount, alignment))
        precondition(r == 0 && p != nil, "out of memory allocating \(rounded * slotCount) bytes")
        base = p!
        self.slotSize = rounded
        self.slotCount = slotCount
    }

    deinit { free(base) }

    @inline(__always)
    public func slot(_ i: Int) -> UnsafeMutableRawPointer { base + i * slotSize }
}
