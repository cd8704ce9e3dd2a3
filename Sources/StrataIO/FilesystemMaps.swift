// Filesystems' own maps of the blocks they use, read with the library made for each: libext2fs's block bitmaps
// for ext2/3/4 (Sources/CExt2fs), libntfs-3g's $Bitmap for NTFS (Sources/CNtfs). What `capture --used-blocks`
// reads instead of the free space. A map that cannot be trusted (a filesystem that needs journal recovery, is not
// clean, or whose bitmaps disagree with its group descriptors; an NTFS hibernated, dirty, or whose bitmap does not
// cover its own metadata) is not given: the caller reads that filesystem whole.
internal import CExt2fs
internal import CNtfs

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
                    let runs = Unmanaged<Runs>.fromOpaque(context!).takeUnretainedValue()
                    if let last = runs.used.last, last.upperBound == start {
                        runs.used[runs.used.count - 1] = last.lowerBound..<start + length
                    } else {
                        runs.used.append(start..<start + length)
                    }
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
