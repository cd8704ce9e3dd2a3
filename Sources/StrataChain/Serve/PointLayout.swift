// A point's partition table and what each partition holds, read from the point itself: `list --partitions`
// shows it, `restore --partition N` restores one partition from it. libblkid (StrataIO/DiskProbe.swift) reads
// only from a descriptor, so it is given a sparse file in memory the size of the disk holding what a probe reads:
// the first and last MiB of the disk (MBR, GPT's primary and backup headers and entries), then the first and
// last MiB of each partition (every superblock libblkid knows lies there). An MBR's logical partitions are
// chained through boot records inside the extended partition, outside every logical partition: the first MiB of
// each stretch of the extended partition that no logical partition found so far covers is copied in, and the
// table read again, until no more are found. A boot record further into such a stretch is not found: its
// partitions are then missing from the table (never wrong), and what asks for them is told so.
// Memory: at most 2 MiB a partition, whatever the size of the disk.
import StrataIO

public struct PointLayout: Sendable, Equatable {
    public var point: UInt32
    public var size: UInt64
    /// The partition table, or nil when the point holds none.
    public var table: PartitionTable?
    /// What each partition holds (by number), where libblkid recognised it.
    public var contents: [Int: DiskContent] = [:]
    /// For a point without a partition table: what the whole disk holds.
    public var whole: DiskContent?
    /// Entries of the table that cannot be right (past the end of the disk, overlapping another): one line each.
    public var problems: [Int: String] = [:]

    /// The partitions that hold data (MBR extended containers left out), in table order.
    public var partitions: [DiskPartition] { table?.partitions.filter { !$0.isContainer } ?? [] }

    /// Reads the layout of `point` of the chain at `location` (nil: the newest).
    public static func read(chain location: String, point: UInt32?, secret: UserSecret? = nil) throws -> PointLayout {
        let served = try ServedChain(chain: location, cacheBytes: 16 << 20, readAheadThreads: 0, secret: secret)
        return try read(try served.reader(point: point))
    }

    /// Reads the layout of the point `reader` reads.
    public static func read(_ reader: PointReader) throws -> PointLayout {
        let mib: UInt64 = 1 << 20
        var image = try SparseProbeImage(size: reader.size)
        func copy(_ range: Range<UInt64>) throws {
            try image.fill(range) { buffer, count, offset in _ = try reader.readFully(into: buffer, count: count, at: offset) }
        }
        func ends(_ lower: UInt64, _ upper: UInt64) throws {
            try copy(lower..<min(upper, lower + mib))
            try copy(max(lower, upper >= mib ? upper - mib : 0)..<upper)
        }
        try ends(0, reader.size)
        var layout = PointLayout(point: reader.point, size: reader.size)
        let name = "point \(reader.point)"
        var table = try DiskProbe.partitionTable(fd: image.fd, size: reader.size, path: name)
        // Logical partitions: the boot records chaining them lie in what the extended partition's logical ones leave.
        for _ in 0..<128 {
            guard let t = table else { break }
            let stretches = t.partitions.filter(\.isContainer).flatMap { container in
                Self.uncovered(container.offset..<min(container.end, reader.size), by: t.partitions.filter { !$0.isContainer }.map { $0.offset..<$0.end })
            }.map { $0.lowerBound..<min($0.upperBound, $0.lowerBound + mib) }.filter { !image.holds($0) }
            guard !stretches.isEmpty else { break }
            for s in stretches { try copy(s) }
            table = try DiskProbe.partitionTable(fd: image.fd, size: reader.size, path: name)
        }
        layout.table = table
        guard let table else {
            layout.whole = DiskProbe.content(fd: image.fd, offset: 0, size: reader.size)
            return layout
        }
        layout.problems = table.problems(diskSize: reader.size)
        for p in layout.partitions where layout.problems[p.number] == nil {
            try ends(p.offset, p.end)
            layout.contents[p.number] = DiskProbe.content(fd: image.fd, offset: p.offset, size: p.size)
        }
        return layout
    }

    /// The parts of `range` none of `covers` overlaps, in order.
    static func uncovered(_ range: Range<UInt64>, by covers: [Range<UInt64>]) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        var at = range.lowerBound
        for c in covers.sorted(by: { $0.lowerBound < $1.lowerBound }) where c.upperBound > at && c.lowerBound < range.upperBound {
            if c.lowerBound > at { out.append(at..<c.lowerBound) }
            at = max(at, c.upperBound)
        }
        if at < range.upperBound { out.append(at..<range.upperBound) }
        return out
    }

    /// Partition `number`, checked: one the table lists, holding data, inside the disk and overlapping no other.
    public func partition(_ number: Int) throws -> DiskPartition {
        guard let table else { throw ChainError.noSuchPartition(point: point, number: number, detail: "the point holds no partition table") }
        guard let p = table.partitions.first(where: { $0.number == number }) else {
            let numbers = partitions.map { String($0.number) }.joined(separator: ", ")
            throw ChainError.noSuchPartition(point: point, number: number, detail: "its \(Self.schemeName(table.scheme)) table lists \(numbers.isEmpty ? "none" : numbers)")
        }
        if p.isContainer {
            throw ChainError.noSuchPartition(point: point, number: number, detail: "it is an extended partition, a container of the logical ones (5 and up)")
        }
        if let problem = problems[number] { throw ChainError.damagedPartitionTable(point: point, detail: problem) }
        return p
    }

    /// A scheme's usual name: "GPT", "MBR", or libblkid's.
    public static func schemeName(_ scheme: String) -> String {
        switch scheme {
        case "gpt": "GPT"
        case "dos": "MBR"
        default: scheme
        }
    }

    /// A partition type's usual name (GPT type GUIDs and MBR type bytes that disks commonly hold), or nil.
    public static func typeName(_ type: String) -> String? {
        switch type {
        case "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "0xef": "EFI System"
        case "21686148-6449-6E6F-744E-656564454649": "BIOS boot"
        case "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "0x83": "Linux filesystem"
        case "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)"
        case "933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home"
        case "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "0x82": "Linux swap"
        case "E6D6D379-F507-44C2-A23C-238F2A3DF928", "0x8e": "Linux LVM"
        case "A19D880F-05FC-4D3B-A006-743F0F84911E", "0xfd": "Linux RAID"
        case "CA7D7CCB-63ED-4C53-861C-1742536059CC": "Linux LUKS"
        case "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "0x7": "Microsoft basic data"
        case "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved"
        case "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "0x27": "Windows recovery"
        case "0xc", "0xb": "FAT32"
        case "0x5", "0xf", "0x85": "Extended"
        default: nil
        }
    }
}
