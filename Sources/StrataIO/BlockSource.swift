// Opening what Strata images: a block device or a regular (image) file. Learns its size (BLKGETSIZE64 or
// fstat), the alignment direct I/O needs (BLKSSZGET), whether O_DIRECT is allowed (tmpfs refuses it), the
// file's data ranges (SEEK_DATA/SEEK_HOLE: holes are never read) and whether a device is mounted read-write.
#if canImport(Glibc)
import Glibc
#endif
internal import CURing

public final class BlockSource {
    public let path: String
    public let fd: Int32
    public let size: UInt64
    public let isBlockDevice: Bool
    /// Whether reads bypass the page cache.
    public let direct: Bool
    /// Buffer address, length and offset multiple for reads.
    public let alignment: Int
    /// Whether the file lives on a FUSE filesystem. There, on Linux 6.18, an io_uring read that FUSE fails part
    /// way through can complete as if whole (docs/RELIABILITY.md), so capture reads such files with pread.
    public let onFUSE: Bool
    let rdev: UInt64
    /// A sample (`init(sampling:)`): where each piece starts on the source, and the pieces' size.
    private let pieces: [UInt64]?
    private let pieceSize: UInt64
    /// The source a sample reads through (its descriptor is that source's).
    private let owner: BlockSource?
    /// An NBD export's connection, where the source is one (`fd` is then -1: NBDQueue reads it).
    public let export: NBDExport?

    /// Opens `path` read-only, with O_DIRECT when `direct` and the filesystem allows it.
    public init(path: String, direct: Bool = true) throws {
        self.path = path
        let st = try Sys.stat(path)
        guard st.kind == .blockDevice || st.kind == .regular else {
            throw IOError("open", path: path, errno: st.kind == .directory ? EISDIR : EINVAL)
        }
        isBlockDevice = st.kind == .blockDevice
        var fd: Int32
        var isDirect = direct
        if direct {
            do {
                fd = try Sys.open(path, O_RDONLY | strata_O_DIRECT)
            } catch let e as IOError where e.errno == EINVAL {
                fd = try Sys.open(path, O_RDONLY)
                isDirect = false
            }
        } else {
            fd = try Sys.open(path, O_RDONLY)
        }
        self.fd = fd
        self.direct = isDirect
        rdev = st.deviceNumber
        if isBlockDevice {
            size = try Sys.blockDeviceSize(fd, path: path)
            alignment = max(512, (try? Sys.logicalBlockSize(fd, path: path)) ?? 4096)
        } else {
            size = try Sys.fstat(fd, path: path).size
            alignment = 4096
        }
        onFUSE = !isBlockDevice && (try? Sys.filesystemType(fd, path: path)) == 0x6573_5546  // FUSE_SUPER_MAGIC
        pieces = nil
        pieceSize = 0
        owner = nil
        export = nil
    }

    /// An NBD export, read through its connections (NBDQueue); `path` is its URI.
    public init(export: NBDExport) {
        path = export.uri
        fd = -1
        size = export.size
        isBlockDevice = false
        direct = true
        alignment = max(512, export.minimumBlockSize)
        onFUSE = false
        rdev = 0
        pieces = nil
        pieceSize = 0
        owner = nil
        self.export = export
    }

    /// `count` pieces of `source`, `pieceSize` bytes each (a multiple of the reads that will be made of it),
    /// spread evenly over it and read as one source of `count * pieceSize` bytes: what `strata bench` runs the
    /// real pipelines on. Holes are read like data.
    public init(sampling source: BlockSource, pieces count: Int, pieceSize: UInt64) {
        path = source.path
        fd = source.fd
        isBlockDevice = source.isBlockDevice
        direct = source.direct
        alignment = source.alignment
        onFUSE = source.onFUSE
        rdev = source.rdev
        let available = max(1, source.size / pieceSize)
        let n = UInt64(max(1, min(count, Int(available))))
        let stride = available / n
        pieces = (0..<n).map { $0 * stride * pieceSize }
        self.pieceSize = pieceSize
        size = min(n * pieceSize, source.size)
        owner = source
        export = source.export
    }

    deinit { if owner == nil && fd >= 0 { Sys.close(fd) } }

    /// Reads `count` bytes at `offset` of the source (not of a sample), waiting for them: the bad-sector
    /// rescue's reads. Returns the bytes read (fewer only at the end of a file).
    public func readSynchronously(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        guard let export else { return try Sys.preadFully(fd, buffer, count, offset, path: path) }
        let n = Int(min(UInt64(count), size - min(offset, size)))
        try export.read(into: buffer, count: n, at: offset)
        return n
    }

    /// Where byte `offset` of this source lies on the file or device (the same offset but for a sample). A read
    /// of a sample never crosses a piece: pieces are multiples of the reads made of them.
    @inline(__always)
    public func physical(_ offset: UInt64) -> UInt64 {
        guard let pieces else { return offset }
        return pieces[Int(offset / pieceSize)] + offset % pieceSize
    }

    /// The byte ranges that may hold data, in order, each aligned outward to `granule`. A block device is
    /// one range; a sparse file skips its holes.
    public func dataRanges(granule: UInt64) throws -> [Range<UInt64>] {
        if let export, pieces == nil { return try nbdDataRanges(export, granule: granule) }
        if isBlockDevice || size == 0 || pieces != nil { return size == 0 ? [] : [0..<size] }
        var ranges = [Range<UInt64>]()
        var at: UInt64 = 0
        while at < size, let start = try Sys.seekData(fd, from: at, path: path), start < size {
            let end = min(size, try Sys.seekHole(fd, from: start, path: path))
            let lo = start / granule * granule
            let hi = min(size, (end + granule - 1) / granule * granule)
            if let last = ranges.last, last.upperBound >= lo {
                ranges[ranges.count - 1] = last.lowerBound..<max(last.upperBound, hi)
            } else {
                ranges.append(lo..<hi)
            }
            at = max(end, start + 1)
        }
        return ranges
    }

    /// An export's ranges that are neither holes nor zeros (base:allocation: bit 0 hole, bit 1 reads as zeros), or
    /// the whole export where the server does not say.
    private func nbdDataRanges(_ export: NBDExport, granule: UInt64) throws -> [Range<UInt64>] {
        guard export.has(nbdAllocationContext) else { return size == 0 ? [] : [0..<size] }
        var ranges = [Range<UInt64>]()
        var at: UInt64 = 0
        while at < size {
            for e in try export.blockStatus(nbdAllocationContext, offset: at, length: size - at) {
                if e.flags & 2 == 0 {
                    let lo = at / granule * granule, hi = min(size, (at + e.length + granule - 1) / granule * granule)
                    if let last = ranges.last, last.upperBound >= lo {
                        ranges[ranges.count - 1] = last.lowerBound..<max(last.upperBound, hi)
                    } else {
                        ranges.append(lo..<hi)
                    }
                }
                at += e.length
            }
        }
        return ranges
    }

    /// Where this block device is mounted read-write, if it is.
    public func readWriteMountPoint() -> String? {
        guard isBlockDevice else { return nil }
        return BlockDevices.mountTable().first { $0.device == rdev && $0.readWrite }?.mountPoint
    }
}
