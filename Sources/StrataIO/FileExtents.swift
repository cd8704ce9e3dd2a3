// Where a file's bytes lie on its filesystem (FS_IOC_FIEMAP), read forward a batch of extents at a time, so a
// file of millions of extents costs one batch of memory. Two reflink clones of one file share an extent until
// either is written: comparing the extents of last night's clone with tonight's says which ranges can have
// changed (Strata's reflink deltas). Only plain extents can be compared: one whose place is unknown, delayed
// (delalloc), unwritten, encoded (compressed), inline, tail-packed, encrypted or unaligned says nothing.
#if canImport(Glibc)
import Glibc
#endif

public struct FileExtent: Sendable, Equatable {
    public var logical: UInt64
    public var physical: UInt64
    public var length: UInt64
    public var flags: UInt32

    public init(logical: UInt64, physical: UInt64, length: UInt64, flags: UInt32) {
        (self.logical, self.physical, self.length, self.flags) = (logical, physical, length, flags)
    }

    public var end: UInt64 { logical + length }

    static let last: UInt32 = 0x1
    /// FIEMAP_EXTENT_UNKNOWN, DELALLOC, ENCODED, DATA_ENCRYPTED, NOT_ALIGNED, DATA_INLINE, DATA_TAIL, UNWRITTEN.
    static let notComparable: UInt32 = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800

    /// Whether `physical` says where the bytes are, so that the same extent in two files means the same bytes.
    public var isComparable: Bool { flags & Self.notComparable == 0 }
}

/// A file's extents in logical order, read with FIEMAP in batches. The first batch asks FIEMAP_FLAG_SYNC, so the
/// file's dirty pages are written (and placed) before they are mapped.
public final class FileExtents {
    private let fd: Int32
    private let path: String
    private let end: UInt64
    private var position: UInt64 = 0
    private var batch: [FileExtent] = []
    private var taken = 0
    private var finished = false
    private var synced = false
    private static let batchSize = 512
    static let request: UInt = 0xC020_660B  // _IOWR('f', 11, struct fiemap)

    /// The extents of the open file `fd` (`path` for messages) from offset 0 to `size`.
    public init(fd: Int32, path: String, size: UInt64) {
        self.fd = fd
        self.path = path
        end = size
    }

    /// The next extent (holes are the gaps between them), or nil after the last. Throws `IOError` ("map extents
    /// of"): EOPNOTSUPP where the filesystem cannot say.
    public func next() throws -> FileExtent? {
        if taken == batch.count {
            guard !finished, position < end else { return nil }
            try fill()
            guard taken < batch.count else { return nil }
        }
        taken += 1
        return batch[taken - 1]
    }

    private func fill() throws {
        // struct fiemap (32 bytes) then fiemap_extent records (56 bytes each).
        let bytes = 32 + Self.batchSize * 56
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        buffer.storeBytes(of: position, toByteOffset: 0, as: UInt64.self)
        buffer.storeBytes(of: end - position, toByteOffset: 8, as: UInt64.self)
        buffer.storeBytes(of: synced ? 0 : 1, toByteOffset: 16, as: UInt32.self)  // FIEMAP_FLAG_SYNC
        buffer.storeBytes(of: UInt32(Self.batchSize), toByteOffset: 24, as: UInt32.self)
        _ = try Sys.deviceControl(fd, Self.request, buffer, "map extents of", path: path)
        synced = true
        let mapped = Int(buffer.load(fromByteOffset: 20, as: UInt32.self))
        batch.removeAll(keepingCapacity: true)
        taken = 0
        for i in 0..<min(mapped, Self.batchSize) {
            let r = buffer + 32 + i * 56
            let e = FileExtent(
                logical: r.load(fromByteOffset: 0, as: UInt64.self), physical: r.load(fromByteOffset: 8, as: UInt64.self),
                length: r.load(fromByteOffset: 16, as: UInt64.self), flags: r.load(fromByteOffset: 40, as: UInt32.self))
            // A filesystem that answers out of order or with nothing would loop forever: stop instead.
            guard e.length > 0, e.logical >= (batch.last?.end ?? 0) else { finished = true; break }
            batch.append(e)
            if e.flags & FileExtent.last != 0 { finished = true }
        }
        if let last = batch.last { position = max(position, last.end) } else { finished = true }
    }
}
