import ArgumentParser
import StrataChain

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the points of a chain: number, time, kind, bytes read and stored, what found the changes.",
        usage: "strata list [<options>] <chain>\n  strata list [<options>] <chain> --partitions [--point <point>]",
        discussion: """
            With --partitions, the partition table of one point (--point, default the newest) instead: its scheme \
            (GPT, MBR), and for each partition its number, start, size, type and what it holds (the filesystem \
            and its label, swap, LUKS...), read from the point itself with libblkid. `restore --partition N` \
            restores one of them. An entry that cannot be right (past the end of the disk, overlapping another) \
            is listed with what is wrong with it. An encrypted chain's partitions need its secret (--key-file, or \
            STRATA_PASSPHRASE); the list of points does not.

            --json prints one object. The points: chain, blockSize, sourceSize, dirtyBitmap, usedBlocks (a chain \
            of used blocks: true), points (point, firstPoint, kind, created, bytesRead, bytesStored, \
            blocksChanged, image, changeSource, usedBlocks: in a chain of used blocks what its capture read of \
            each partition (usedBytes; regions: partition, size, content, method, usedBytes), else null). With \
            --partitions: point, size, table (scheme, id, sectorSize; null when the point holds none), content (of \
            a disk without a table), partitions (number, offset, size, type, typeName, name, uuid, container (an MBR extended \
            partition), content (type, \
            usage, label, uuid; null when nothing is recognised), problem).

            EXAMPLES
              strata list /backup/sda
              strata list /backup/sda --partitions --point 3
              strata list /backup/sda --partitions --json
            """)

    @Argument(help: "Chain directory.") var chain: String
    @Flag(help: "Show a point's partition table instead of the points.") var partitions = false
    @Option(help: "The point whose partitions --partitions shows (default: the newest).") var point: UInt32?
    @Flag(help: "Print one JSON object on stdout.") var json = false
    @OptionGroup var key: KeyOptions

    func validate() throws {
        if point != nil && !partitions { throw ValidationError("--point goes with --partitions (the list of points shows every point)") }
    }

    func run() throws {
        Output.warnIfExposed(chain)
        if partitions { return try listPartitions() }
        let listing: ChainListing
        do { listing = try ChainListing.read(chain: chain) } catch { throw Output.fail(error) }
        if json {
            Output.json(Report(listing))
            return
        }
        print("chain \(listing.chainID), \(Output.bytes(listing.sourceSize)) source, \(listing.blockSize)-byte blocks\(listing.usedBlocks ? ", used blocks only" : "")")
        print("point  created              kind         read        stored      changed blocks  found by")
        for p in listing.points {
            let created = ChainListing.localTime(p.createdAt)
            let kind = p.kind == .full ? "full" : (p.firstPoint == p.point ? "incremental" : "merged \(p.firstPoint)-\(p.point)")
            print("\(pad(String(p.point), 5, left: true))  \(created)  \(pad(kind, 11))  \(pad(Output.bytes(p.bytesRead), 10))  \(pad(Output.bytes(p.bytesStored), 10))  \(pad(String(p.blocksChanged), 14))  \(p.changeSource ?? ChangeSources.scan)")
        }
    }
}

extension ListCommand {
    private func listPartitions() throws {
        let layout: PointLayout
        do { layout = try PointLayout.read(chain: chain, point: point, secret: key.secret()) } catch { throw Output.fail(error) }
        if json { return Output.json(PartitionReport(layout)) }
        guard let table = layout.table else {
            print("point \(layout.point): \(Output.bytes(layout.size)), no partition table; \(layout.whole.map(Self.describe) ?? "no filesystem recognised")")
            return
        }
        print("point \(layout.point): \(PointLayout.schemeName(table.scheme)) disk, \(Output.bytes(layout.size))\(table.id.map { ", id \($0)" } ?? "")")
        print("  part  start       size        type                    content")
        for p in table.partitions {
            let type = p.isContainer ? "Extended (container)" : PointLayout.typeName(p.type) ?? p.type
            var content = layout.problems[p.number].map { "damaged: \($0)" } ?? layout.contents[p.number].map(Self.describe) ?? (p.isContainer ? "" : "-")
            if let name = p.name { content += (content.isEmpty ? "" : "  ") + "name \"\(name)\"" }
            print("  \(pad(String(p.number), 4, left: true))  \(pad(Output.bytes(p.offset), 10))  \(pad(Output.bytes(p.size), 10))  \(pad(type, 22))  \(content)")
        }
    }

    static func describe(_ c: DiskContent) -> String { c.type + (c.label.map { " \"\($0)\"" } ?? "") }

    /// What --json prints with --partitions.
    struct PartitionReport: Encodable {
        struct Content: Encodable {
            var type: String, usage, label, uuid: OrNull<String>
            init(_ c: DiskContent) { (type, usage, label, uuid) = (c.type, OrNull(c.usage), OrNull(c.label), OrNull(c.uuid)) }
        }
        struct Table: Encodable { var scheme: String, id: OrNull<String>, sectorSize: Int }
        struct Partition: Encodable {
            var number: Int, offset, size: UInt64, type: String, typeName, name, uuid: OrNull<String>, container: Bool
            var content: OrNull<Content>, problem: OrNull<String>
        }
        var point: UInt32, size: UInt64, table: OrNull<Table>, content: OrNull<Content>, partitions: [Partition]

        init(_ l: PointLayout) {
            (point, size) = (l.point, l.size)
            table = OrNull(l.table.map { Table(scheme: $0.scheme, id: OrNull($0.id), sectorSize: $0.sectorSize) })
            content = OrNull(l.whole.map(Content.init))
            partitions = (l.table?.partitions ?? []).map { p in
                Partition(
                    number: p.number, offset: p.offset, size: p.size, type: p.type, typeName: OrNull(PointLayout.typeName(p.type)),
                    name: OrNull(p.name), uuid: OrNull(p.uuid), container: p.isContainer, content: OrNull(l.contents[p.number].map(Content.init)),
                    problem: OrNull(l.problems[p.number]))
            }
        }
    }
}

func pad(_ s: String, _ width: Int, left: Bool = false) -> String {
    let fill = String(repeating: " ", count: max(0, width - s.count))
    return left ? fill + s : s + fill
}

extension ListCommand {
    /// What --json prints.
    struct Report: Encodable {
        struct Point: Encodable {
            var point, firstPoint: UInt32, kind: String, created, bytesRead, bytesStored, blocksChanged: UInt64, image: String
            var changeSource: String
            var usedBlocks: OrNull<UsedReport>
        }
        var chain: String, blockSize: UInt32, sourceSize: UInt64, points: [Point]
        var dirtyBitmap: OrNull<String>
        var usedBlocks: Bool

        init(_ l: ChainListing) {
            (chain, blockSize, sourceSize, dirtyBitmap, usedBlocks) = (l.chainID, l.blockSize, l.sourceSize, OrNull(l.dirtyBitmap), l.usedBlocks)
            points = l.points.map { p in
                Point(
                    point: p.point, firstPoint: p.firstPoint, kind: p.kind == .full ? "full" : "incremental", created: p.createdAt,
                    bytesRead: p.bytesRead, bytesStored: p.bytesStored, blocksChanged: p.blocksChanged, image: p.file,
                    changeSource: p.changeSource ?? ChangeSources.scan, usedBlocks: OrNull(p.usedRegions.map { UsedReport($0, offsets: false) }))
            }
        }
    }
}
