// Filesystems' own maps of the blocks they use, read with the library made for each: libext2fs's block bitmaps
// for ext2/3/4 (Sources/CExt2fs), libntfs-3g's $Bitmap for NTFS (Sources/CNtfs), and for XFS, which no library
// reads, its free-space B+trees by hand with xfslibs-dev's headers (Sources/CXfs), once its log is found clean. What `capture --used-blocks`
// reads instead of the free space; and for a mounted ext4 or XFS under --freeze, the kernel's own map of used
// space (FS_IOC_GETFSMAP), taken while the filesystem is frozen. A map that cannot be trusted (a filesystem that
// needs journal recovery, is not clean, or whose bitmaps disagree with its group descriptors; an NTFS hibernated,
// dirty, or whose bitmap does not cover its own metadata) is not given: the caller reads that filesystem whole.
internal import CExt2fs
internal import CNtfs
internal import CXfs
internal import CURing

/// A filesystem's map of used blocks, in bytes from its start.
public struct UsedMap: Sendable, Equatable {
    /// The filesystem's size as it says (its blocks times its block size).
    public var size: UInt64
    /// The runs it uses, in order, disjoint.
    public var used: [Range<UInt64>]
    public var usedBytes: UInt64 { used.reduce(0) { $0 + UInt64($1.count) } }
}

public enum FilesystemMaps {
    /// The used blocks of the ext2/3/4 filesystem at byte `offset` of `path`; or why it must be read whole.
    public static func ext2(path: String, offset: UInt64) -> Result<UsedMap, MapRefusal> {
        var info = strata_ext2_info()
        return collect { emit, context, why, length in
            strata_ext2_used(path, offset, &info, emit, context, why, length)
        }.map { UsedMap(size: info.blocks * info.blockSize, used: $0) }
    }

    /// The used clusters of the NTFS volume of `size` bytes at byte `offset` of `path`; or why it must be read
    /// whole.
    public static func ntfs(path: String, offset: UInt64, size: UInt64) -> Result<UsedMap, MapRefusal> {
        var info = strata_ntfs_info()
        return collect { emit, context, why, length in
            strata_ntfs_used(path, offset, size, &info, emit, context, why, length)
        }.map { UsedMap(size: info.clusters * info.clusterSize, used: $0) }
    }

    /// The used blocks of the XFS of `size` bytes at byte `offset` of `path`, not mounted: every block its
    /// free-space B+trees do not hold (Sources/CXfs); or why it must be read whole (its log not clean, a block that
    /// fails its checks, a tree that disagrees with its group's header).
    public static func xfs(path: String, offset: UInt64, size: UInt64) -> Result<UsedMap, MapRefusal> {
        var info = strata_xfs_info()
        return collect { emit, context, why, length in
            strata_xfs_used_path(path, offset, size, &info, emit, context, why, length)
        }.map { UsedMap(size: info.blocks * info.blockSize, used: $0) }
    }

    /// The used space of the filesystem mounted at `mountPoint`, whose data device is `device` (its st_dev) and
    /// `size` bytes long, as the kernel's FS_IOC_GETFSMAP reports it: in bytes from the device's start. Valid for
    /// the instant it is read; the caller holds the filesystem frozen. Free is what the records give the special
    /// owner FMR_OWN_FREE; every other record (file data, metadata, the log, an unknown owner) and any gap between
    /// records is used. Checked: the free records in order and apart from each other and from used ones, all of
    /// them inside the device, and no more free than statfs counts: for ext4 exactly (its map counts blocks
    /// preallocated to files as used, statfs as free), for XFS (`xfs`), which keeps a reserve pool (5%, at most
    /// 8192 blocks) and a few blocks per group out of statfs's count, with a sixteenth of the size to spare.
    public static func fsmap(mountPoint: String, device: UInt64, size: UInt64, type: String) -> Result<UsedMap, MapRefusal> {
        do {
            let fd = try Sys.open(mountPoint, .readOnly)
            let count = 1024
            let headSize = Int(strata_fsmap_head_size), recordSize = Int(strata_fsmap_size)
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: headSize + count * recordSize, alignment: 8)
            defer { buffer.deallocate() }
            // fmr_device is the kernel's encoding of the device number (new_encode_dev).
            let major = BlockDevices.major(device), minor = BlockDevices.minor(device)
            let encoded = UInt32(truncatingIfNeeded: (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12))
            let ownFree: UInt64 = 1, specialOwner: UInt32 = 0x10, last: UInt32 = 0x20
            var low = [UInt8](repeating: 0, count: recordSize)
            var used: [Range<UInt64>] = []
            var free: UInt64 = 0, at: UInt64 = 0, records = 0
            func addUsed(_ r: Range<UInt64>) { if !r.isEmpty { used.appendJoining(r) } }
            reading: while true {
                buffer.initializeMemory(as: UInt8.self, repeating: 0, count: headSize)
                buffer.storeBytes(of: UInt32(count), toByteOffset: 8, as: UInt32.self)  // fmh_count
                low.withUnsafeBytes { buffer.advanced(by: 64).copyMemory(from: $0.baseAddress!, byteCount: recordSize) }  // fmh_keys[0]
                let high = buffer.advanced(by: 64 + recordSize)  // fmh_keys[1]: everything (its length 0, as XFS asks)
                high.storeBytes(of: UInt32.max, toByteOffset: 0, as: UInt32.self)
                high.storeBytes(of: UInt32.max, toByteOffset: 4, as: UInt32.self)
                for field in [8, 16, 24] { high.storeBytes(of: UInt64.max, toByteOffset: field, as: UInt64.self) }
                try Sys.filesystemMap(fd, buffer, path: mountPoint)
                let entries = Int(buffer.load(fromByteOffset: 12, as: UInt32.self))
                if entries == 0 { break }
                for i in 0..<min(entries, count) {
                    let rec = buffer.advanced(by: headSize + i * recordSize)
                    let dev = rec.load(fromByteOffset: 0, as: UInt32.self), flags = rec.load(fromByteOffset: 4, as: UInt32.self)
                    let physical = rec.load(fromByteOffset: 8, as: UInt64.self), owner = rec.load(fromByteOffset: 16, as: UInt64.self)
                    let length = rec.load(fromByteOffset: 32, as: UInt64.self)
                    if i == entries - 1 {
                        low.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: rec, byteCount: recordSize) }
                    }
                    if dev == encoded {
                        records += 1
                        guard physical <= size, length <= size - physical else {
                            return .failure(MapRefusal(reason: "the kernel's map of its used space reaches past its \(size) bytes"))
                        }
                        if flags & specialOwner != 0 && owner == ownFree {
                            guard physical >= at, used.last.map({ $0.upperBound <= physical }) ?? true else {
                                return .failure(MapRefusal(reason: "the kernel's map of its used space has free space out of order or overlapping"))
                            }
                            addUsed(at..<physical)  // a gap: used, as far as anything says
                            free += length
                        } else {
                            // Used: records may overlap (blocks shared by reflinked files have one record per owner).
                            addUsed(max(at, physical)..<max(at, physical + length))
                        }
                        at = max(at, physical + length)
                    }
                    if i == entries - 1, flags & last != 0 { break reading }
                }
                if entries < count { break }
            }
            guard records > 0 else { return .failure(MapRefusal(reason: "the kernel's map of its used space holds nothing for its device")) }
            addUsed(at..<size)
            let counted = try Sys.filesystemSpace(mountPoint).free
            let spare = type == "xfs" ? size / 16 : 0
            guard free <= counted + spare else {
                return .failure(MapRefusal(reason: "the kernel's map of its used space counts \(free) bytes free, more than statfs's \(counted)"))
            }
            return .success(UsedMap(size: size, used: used))
        } catch let e as IOError {
            return .failure(MapRefusal(reason: e.errno == ENOTTY || e.errno == EOPNOTSUPP
                ? "its filesystem gives no map of its used space (FS_IOC_GETFSMAP)" : "\(e.operation) failed: \(e.reason)"))
        } catch {
            return .failure(MapRefusal(reason: "\(error)"))
        }
    }

    /// Runs a C map reader that gives its used runs in order to a callback (adjacent runs joined here), or a
    /// reason in `why` and a nonzero status.
    private static func collect(
        _ read: (@convention(c) (UnsafeMutableRawPointer?, UInt64, UInt64) -> Void, UnsafeMutableRawPointer, UnsafeMutablePointer<CChar>, Int) -> Int32
    ) -> Result<[Range<UInt64>], MapRefusal> {
        final class Runs { var used: [Range<UInt64>] = [] }
        let runs = Runs()
        var why = [CChar](repeating: 0, count: 512)
        let status = withExtendedLifetime(runs) {
            why.withUnsafeMutableBufferPointer { buffer in
                read({ context, start, length in
                    Unmanaged<Runs>.fromOpaque(context!).takeUnretainedValue().used.appendJoining(start..<start + length)
                }, Unmanaged.passUnretained(runs).toOpaque(), buffer.baseAddress!, buffer.count)
            }
        }
        guard status == 0 else { return .failure(MapRefusal(reason: String(cString: why))) }
        return .success(runs.used)
    }
}

/// Why a filesystem's map is not used: it is then read whole.
public struct MapRefusal: Error, Sendable, Equatable {
    public var reason: String
}
