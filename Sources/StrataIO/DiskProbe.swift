// What a disk holds, as util-linux's libblkid (the library `blkid`, `mount` and `lsblk` use) reads it: the
// partition table (GPT with its backup header, MBR with its extended partitions, and what nests in them) and the
// content of a range (a filesystem's type, label and UUID, swap, LUKS...). The one place Strata reads partition
// tables and superblocks: `list --partitions`, `restore --partition` and the probes to come (used blocks, file
// mounts) all ask here. libblkid reads from a descriptor only: a point of a chain is probed through a
// `SparseProbeImage`, a file in memory holding the few ranges the probe reads.
#if canImport(Glibc)
import Glibc
#endif
internal import CBlkid
internal import CURing

/// A partition table.
public struct PartitionTable: Sendable, Equatable {
    /// libblkid's name of the scheme: "gpt", "dos" (MBR), and the nested ones ("bsd", "solaris"...).
    public var scheme: String
    /// The disk's identifier: GPT's disk GUID, MBR's disk signature.
    public var id: String?
    /// The logical sector size the table was found with (512, or 4096 on a 4Kn disk).
    public var sectorSize: Int
    public var partitions: [DiskPartition]

    /// The entries that cannot be right on a disk of `diskSize` bytes, by number, one line each: empty or ending
    /// past the end of the disk, or overlapping another (MBR extended containers, which hold the logical ones,
    /// are not checked).
    public func problems(diskSize: UInt64) -> [Int: String] {
        let parts = partitions.filter { !$0.isContainer }
        var out: [Int: String] = [:]
        for p in parts {
            if p.size == 0 || p.end > diskSize {
                out[p.number] = "partition \(p.number) ends at byte \(p.end), past the end of the disk (\(diskSize) bytes)"
            } else if let other = parts.first(where: { $0.number != p.number && $0.offset < p.end && p.offset < $0.end }) {
                out[p.number] = "partition \(p.number) overlaps partition \(other.number)"
            }
        }
        return out
    }
}

/// One entry of a partition table, in bytes.
public struct DiskPartition: Sendable, Equatable {
    /// Its number, as the kernel would name it (sda2: 2).
    public var number: Int
    public var offset: UInt64
    public var size: UInt64
    /// The type: a GPT type GUID (upper case), or an MBR type byte as "0x83".
    public var type: String
    /// GPT's partition name and unique GUID, where the table has them.
    public var name: String?
    public var uuid: String?
    /// An MBR extended partition: a container of logical partitions, with no content of its own.
    public var isContainer: Bool
    public var end: UInt64 { offset + size }
}

/// What a range of a disk holds, told by its superblock.
public struct DiskContent: Sendable, Equatable {
    /// libblkid's TYPE: "ext4", "xfs", "ntfs", "vfat", "swap", "crypto_LUKS"...
    public var type: String
    /// libblkid's USAGE: "filesystem", "other" (swap), "crypto", "raid".
    public var usage: String?
    public var label: String?
    public var uuid: String?
}

public enum DiskProbe {
    /// The partition table of the `size` bytes `fd` holds, or nil when there is none. A disk whose table libblkid
    /// finds with 512-byte sectors is read so; otherwise with 4096-byte sectors (a 4Kn disk's GPT header is at
    /// byte 4096).
    public static func partitionTable(fd: Int32, size: UInt64, path: String) throws -> PartitionTable? {
        for sectorSize in [512, 4096] {
            if let table = try partitionTable(fd: fd, size: size, sectorSize: sectorSize, path: path) { return table }
        }
        return nil
    }

    private static func partitionTable(fd: Int32, size: UInt64, sectorSize: Int, path: String) throws -> PartitionTable? {
        guard let probe = blkid_new_probe() else { throw IOError("start libblkid on", path: path, errno: ENOMEM) }
        defer { blkid_free_probe(probe) }
        guard blkid_probe_set_device(probe, fd, 0, blkid_loff_t(size)) == 0 else {
            throw IOError("probe", path: path, errno: EIO)
        }
        _ = blkid_probe_set_sectorsize(probe, UInt32(sectorSize))
        _ = blkid_probe_enable_superblocks(probe, 0)
        _ = blkid_probe_enable_partitions(probe, 1)
        _ = blkid_probe_set_partitions_flags(probe, Int32(BLKID_PARTS_ENTRY_DETAILS))
        guard let list = blkid_probe_get_partitions(probe), let table = blkid_partlist_get_table(list) else { return nil }
        var out = PartitionTable(
            scheme: string(blkid_parttable_get_type(table)) ?? "unknown", id: string(blkid_parttable_get_id(table)), sectorSize: sectorSize,
            partitions: [])
        // libblkid's starts and sizes are in 512-byte sectors whatever the disk's sector size.
        for i in 0..<max(0, blkid_partlist_numof_partitions(list)) {
            guard let p = blkid_partlist_get_partition(list, i) else { continue }
            let typeString = string(blkid_partition_get_type_string(p))
            out.partitions.append(DiskPartition(
                number: Int(blkid_partition_get_partno(p)), offset: UInt64(max(0, blkid_partition_get_start(p))) * 512,
                size: UInt64(max(0, blkid_partition_get_size(p))) * 512,
                type: typeString?.uppercased() ?? "0x" + String(blkid_partition_get_type(p), radix: 16, uppercase: false),
                name: string(blkid_partition_get_name(p)), uuid: string(blkid_partition_get_uuid(p)),
                isContainer: blkid_partition_is_extended(p) != 0))
        }
        return out
    }

    /// What the `size` bytes at `offset` of `fd` hold (a filesystem, swap, LUKS...), or nil when libblkid finds no
    /// signature there, or more than one that disagree (it names none rather than guess).
    public static func content(fd: Int32, offset: UInt64, size: UInt64) -> DiskContent? {
        guard let probe = blkid_new_probe() else { return nil }
        defer { blkid_free_probe(probe) }
        guard blkid_probe_set_device(probe, fd, blkid_loff_t(offset), blkid_loff_t(size)) == 0 else { return nil }
        _ = blkid_probe_enable_partitions(probe, 0)
        _ = blkid_probe_enable_superblocks(probe, 1)
        _ = blkid_probe_set_superblocks_flags(probe, Int32(BLKID_SUBLKS_TYPE | BLKID_SUBLKS_USAGE | BLKID_SUBLKS_LABEL | BLKID_SUBLKS_UUID))
        guard blkid_do_safeprobe(probe) == 0, let type = value(probe, "TYPE") else { return nil }
        return DiskContent(type: type, usage: value(probe, "USAGE"), label: value(probe, "LABEL"), uuid: value(probe, "UUID"))
    }

    private static func value(_ probe: blkid_probe, _ name: String) -> String? {
        var data: UnsafePointer<CChar>?
        var length = 0
        guard blkid_probe_lookup_value(probe, name, &data, &length) == 0, let data else { return nil }
        return String(cString: data)
    }

    private static func string(_ p: UnsafePointer<CChar>?) -> String? {
        guard let p, p.pointee != 0 else { return nil }
        return String(cString: p)
    }
}

/// A file in memory (memfd) the size of a disk, holding only the ranges copied into it (the rest reads as
/// zeros and takes no memory): what libblkid probes for a disk that is not a file, a point of a chain.
public struct SparseProbeImage: ~Copyable {
    public let size: UInt64
    private let file: FileDescriptor
    /// The ranges copied in so far, in order, joined.
    public private(set) var filled: [Range<UInt64>] = []
    public var fd: Int32 { file.rawValue }

    public init(size: UInt64) throws {
        let fd = strata_memfd("strata-probe")
        guard fd >= 0 else { throw IOError("make a file in memory (memfd) for", path: "a probe", errno: Glibc.errno) }
        let sized = FileDescriptor(owning: fd)
        try Sys.ftruncate(fd, size, path: "a probe's memfd")
        file = sized
        self.size = size
    }

    /// Whether every byte of `range` has been copied in.
    public func holds(_ range: Range<UInt64>) -> Bool { filled.contains { $0.lowerBound <= range.lowerBound && range.upperBound <= $0.upperBound } }

    /// Copies `range` (cut to the disk) in, through `read` (which fills the buffer with those bytes), unless it
    /// is there already. Pages of zeros are left unwritten.
    public mutating func fill(_ range: Range<UInt64>, read: (UnsafeMutableRawPointer, Int, UInt64) throws -> Void) throws {
        let range = min(range.lowerBound, size)..<min(range.upperBound, size)
        guard !range.isEmpty, !holds(range) else { return }
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        var at = range.lowerBound
        while at < range.upperBound {
            let n = Int(min(UInt64(chunk), range.upperBound - at))
            try read(buffer, n, at)
            var page = 0
            while page < n {
                let m = min(4096, n - page)
                let p = UnsafeRawBufferPointer(start: buffer + page, count: m)
                if p.contains(where: { $0 != 0 }) { try Sys.pwriteAll(fd, buffer + page, m, at + UInt64(page), path: "a probe's memfd") }
                page += m
            }
            at += UInt64(n)
        }
        filled.append(range)
        filled.sort { $0.lowerBound < $1.lowerBound }
        var joined: [Range<UInt64>] = []
        for r in filled {
            if let last = joined.last, last.upperBound >= r.lowerBound {
                joined[joined.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                joined.append(r)
            }
        }
        filled = joined
    }
}
