import ArgumentParser
import StrataChain

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the points of a chain: number, time, kind, bytes read and stored, what found the changes.")

    @Argument(help: "Chain directory.") var chain: String
    @Flag(help: "Print one JSON object on stdout.") var json = false

    func run() throws {
        Output.warnIfExposed(chain)
        let listing: ChainListing
        do { listing = try ChainListing.read(chain: chain) } catch { throw Output.fail(error) }
        if json {
            Output.json(Report(listing))
            return
        }
        print("chain \(listing.chainID), \(Output.bytes(listing.sourceSize)) source, \(listing.blockSize)-byte blocks")
        print("point  created              kind         read        stored      changed blocks  found by")
        for p in listing.points {
            let created = ChainListing.localTime(p.createdAt)
            let kind = p.kind == .full ? "full" : (p.firstPoint == p.point ? "incremental" : "merged \(p.firstPoint)-\(p.point)")
            print("\(pad(String(p.point), 5, left: true))  \(created)  \(pad(kind, 11))  \(pad(Output.bytes(p.bytesRead), 10))  \(pad(Output.bytes(p.bytesStored), 10))  \(pad(String(p.blocksChanged), 14))  \(p.changeSource ?? ChangeSources.scan)")
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
        }
        var chain: String, blockSize: UInt32, sourceSize: UInt64, points: [Point]
        var dirtyBitmap: OrNull<String>

        init(_ l: ChainListing) {
            (chain, blockSize, sourceSize, dirtyBitmap) = (l.chainID, l.blockSize, l.sourceSize, OrNull(l.dirtyBitmap))
            points = l.points.map { p in
                Point(
                    point: p.point, firstPoint: p.firstPoint, kind: p.kind == .full ? "full" : "incremental", created: p.createdAt,
                    bytesRead: p.bytesRead, bytesStored: p.bytesStored, blocksChanged: p.blocksChanged, image: p.file,
                    changeSource: p.changeSource ?? ChangeSources.scan)
            }
        }
    }
}
