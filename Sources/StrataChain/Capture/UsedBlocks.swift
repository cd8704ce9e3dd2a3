// A chain of used blocks (`capture --used-blocks`): what of the source its filesystems use, found before the
// capture reads. The partition table and each partition's content come from libblkid (StrataIO/DiskProbe); each
// filesystem's map from the library made for it (StrataIO/FilesystemMaps: libext2fs's bitmaps for ext2/3/4,
// libntfs-3g's $Bitmap for NTFS, XFS's free-space B+trees read with its own headers), swap keeps its header. Everything else is read whole: the tables themselves,
// the gaps between partitions, an entry that cannot be right, a filesystem Strata has no map for (or whose map it
// does not trust: one that needs journal recovery or is not clean, bitmaps that disagree with their group
// descriptors, an NTFS hibernated or dirty, an XFS whose log is not clean, a filesystem larger than its partition), LUKS, anything unknown. A
// mounted ext4 or XFS that --freeze names is read by the kernel's map of the frozen instant. What is not used is
// announced to the pipeline as free without a read (UsedPlan): the point holds free zero extents there, so every
// reader (restore, verify, merge, mount, serve) restores zeros, and restore --delta leaves them. Memory: the
// used runs (16 bytes each, joined only where they touch: a free block between two runs is never read, or its
// stale bytes would be kept where the promise is zeros).
import StrataFormat
import StrataIO

/// What a capture of used blocks read of one region of the source.
public struct UsedRegion: Sendable, Equatable {
    /// The partition's number; 0 for a disk without a partition table; nil for what lies outside every partition
    /// (the tables, the gaps between partitions).
    public var partition: Int?
    public var offset: UInt64
    public var size: UInt64
    /// What libblkid found there ("ext4", "swap", "xfs"...), nil for nothing it knows.
    public var content: String?
    /// How its used blocks were found: `bitmap` (the filesystem's own map), `fsmap` (the kernel's map of a mounted
    /// filesystem, frozen), `swap-header` (a swap area: its header), `whole` (all of it read).
    public var method: String
    /// Bytes of it read as used.
    public var usedBytes: UInt64
    /// Why a region that holds something was read whole.
    public var reason: String?

    public static let bitmap = "bitmap", fsmap = "fsmap", swapHeader = "swap-header", whole = "whole"
}

enum UsedBlocks {
    /// What of a swap area is kept: its header page, at most 64 KiB (the largest page size).
    static let swapHeader: UInt64 = 64 << 10

    /// A filesystem frozen for the capture (--freeze): where it is mounted, and its device number.
    struct Frozen {
        var mountPoint: String
        var device: UInt64
    }

    /// Whether the filesystem on device `device` is the source's region `range` (partition `number`, 0 for a
    /// disk without a table): the source device itself, or a partition of it that starts where the region does.
    static func holds(_ device: UInt64, source: UInt64?, at range: Range<UInt64>, number: Int) -> Bool {
        guard let source else { return false }
        if number == 0 { return device == source }
        guard let place = BlockDevices.partitionPlace(device) else { return false }
        return place.disk == source && place.offset == range.lowerBound
    }

    /// The used byte ranges of the source at `path` (`size` bytes), sorted and disjoint, and what each region gave.
    /// `frozen`, a filesystem of the source mounted and frozen now, is read by the kernel's map.
    static func find(path: String, size: UInt64, frozen: Frozen? = nil) throws -> (used: [Range<UInt64>], regions: [UsedRegion]) {
        let sourceDevice = BlockDevices.deviceNumber(path)
        // libblkid reads through the page cache with unaligned buffers: its own descriptor, without O_DIRECT.
        let file: FileDescriptor
        do { file = try Sys.open(path, .readOnly) } catch let e as IOError {
            throw ChainError.sourceUnavailable(path: path, reason: e.reason)
        }
        var regions: [UsedRegion] = []
        var mapped: [(range: Range<UInt64>, used: [Range<UInt64>])] = []
        var inPartitions: UInt64 = 0
        func region(_ number: Int, _ range: Range<UInt64>) {
            inPartitions += UInt64(range.count)
            let content = DiskProbe.content(fd: file.rawValue, offset: range.lowerBound, size: UInt64(range.count))
            var r = UsedRegion(partition: number, offset: range.lowerBound, size: UInt64(range.count), content: content?.type, method: UsedRegion.whole, usedBytes: UInt64(range.count))
            func use(_ found: Result<UsedMap, MapRefusal>, method: String = UsedRegion.bitmap) {
                switch found {
                case .success(let map) where map.size <= UInt64(range.count):
                    // The map's runs, and what lies past the filesystem's end in its partition, whole.
                    var used = map.used.map { (range.lowerBound + $0.lowerBound)..<(range.lowerBound + $0.upperBound) }
                    if map.size < UInt64(range.count) { used.append((range.lowerBound + map.size)..<range.upperBound) }
                    r.method = method
                    r.usedBytes = used.reduce(0) { $0 + UInt64($1.count) }
                    mapped.append((range, used))
                case .success(let map):
                    r.reason = "its filesystem says it is \(map.size) bytes, larger than its \(range.count)"
                case .failure(let refusal):
                    r.reason = refusal.reason
                }
            }
            // The filesystem frozen for this capture, mounted: the kernel's map, of the frozen instant (on disk, an
            // ext4 in use needs journal recovery and an XFS has a log to replay).
            if let frozen, let type = content?.type, ["ext2", "ext3", "ext4", "xfs"].contains(type),
                Self.holds(frozen.device, source: sourceDevice, at: range, number: number)
            {
                let map = FilesystemMaps.fsmap(mountPoint: frozen.mountPoint, device: frozen.device, size: UInt64(range.count), type: type)
                use(map, method: UsedRegion.fsmap)
                regions.append(r)
                return
            }
            switch content?.type {
            case "ext2", "ext3", "ext4":
                use(FilesystemMaps.ext2(path: path, offset: range.lowerBound))
            case "ntfs":
                use(FilesystemMaps.ntfs(path: path, offset: range.lowerBound, size: UInt64(range.count)))
            case "xfs":
                use(FilesystemMaps.xfs(path: path, offset: range.lowerBound, size: UInt64(range.count)))
            case "swap":
                let header = range.lowerBound..<min(range.upperBound, range.lowerBound + Self.swapHeader)
                r.method = UsedRegion.swapHeader
                r.usedBytes = UInt64(header.count)
                mapped.append((range, [header]))
            case let type?:
                r.reason = "Strata reads no map of \(type)"
            case nil:
                r.reason = "libblkid recognises nothing there"
            }
            regions.append(r)
        }
        let table = try DiskProbe.partitionTable(fd: file.rawValue, size: size, path: path)
        if let table {
            let problems = table.problems(diskSize: size)
            for p in table.partitions where !p.isContainer {
                if let problem = problems[p.number] {
                    // (What of it lies on the disk is read with what lies outside the partitions.)
                    regions.append(UsedRegion(
                        partition: p.number, offset: p.offset, size: p.size, method: UsedRegion.whole, usedBytes: 0, reason: problem))
                } else {
                    region(p.number, p.offset..<p.end)
                }
            }
        } else {
            region(0, 0..<size)
        }
        // Everything outside the mapped regions is read whole.
        mapped.sort { $0.range.lowerBound < $1.range.lowerBound }
        var used: [Range<UInt64>] = []
        func add(_ r: Range<UInt64>) { if !r.isEmpty { used.appendJoining(r) } }
        var at: UInt64 = 0
        for m in mapped {
            if m.range.lowerBound > at { add(at..<m.range.lowerBound) }
            for r in m.used { add(r) }
            at = max(at, m.range.upperBound)
        }
        if at < size { add(at..<size) }
        if table != nil {
            // The tables, the gaps, and entries that cannot be right: read whole.
            regions.append(UsedRegion(partition: nil, offset: 0, size: size - inPartitions, method: UsedRegion.whole, usedBytes: size - inPartitions))
        }
        return (used, regions)
    }

    // MARK: The manifest's word

    /// The regions as one word of the manifest (`used-P`): `number:content:method:used:size` joined by commas,
    /// `-` for what lies outside every partition and for no content.
    static func summary(_ regions: [UsedRegion]) -> String {
        regions.map { r in
            "\(r.partition.map(String.init) ?? "-"):\(r.content.map(clean) ?? "-"):\(r.method):\(r.usedBytes):\(r.size)"
        }.joined(separator: ",")
    }

    /// The regions a manifest's word gives (what `list` shows); nil for a word it cannot read.
    static func regions(fromSummary word: String) -> [UsedRegion]? {
        var out: [UsedRegion] = []
        for entry in word.split(separator: ",") {
            let f = entry.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard f.count == 5, let used = UInt64(f[3]), let size = UInt64(f[4]) else { return nil }
            out.append(UsedRegion(
                partition: f[0] == "-" ? nil : Int(f[0]), offset: 0, size: size, content: f[1] == "-" ? nil : f[1], method: f[2], usedBytes: used))
        }
        return out
    }

    /// A content type as a manifest word takes it: letters, digits, `_` and `.` only.
    private static func clean(_ s: String) -> String {
        String(s.map { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "." ? $0 : "_" })
    }
}
