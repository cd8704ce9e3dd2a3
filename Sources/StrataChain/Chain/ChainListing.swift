// `strata list`: the points of a chain, read from its manifest (as every reader, beside a running writer: the
// manifest is only ever replaced whole).
import StrataFormat
import StrataIO

public struct PointInfo: Sendable, Equatable {
    public var point: UInt32
    public var kind: ImageKind
    public var firstPoint: UInt32
    public var createdAt: UInt64
    public var bytesRead: UInt64
    public var bytesStored: UInt64
    public var blocksChanged: UInt64
    public var file: String
    /// What found the point's changes (`scan`, `rescan`, `reflink`, ...); nil where the chain does not say
    /// (points captured before it was recorded: scans).
    public var changeSource: String? = nil
    /// A chain of used blocks: what the point's capture read of each region (sizes and methods; nil where the
    /// chain does not say: a chain that reads every block, a point merged from others keeps its newest's).
    public var usedRegions: [UsedRegion]? = nil
}

public struct ChainListing: Sendable, Equatable {
    public var chainID: String
    public var blockSize: UInt32
    public var sourceSize: UInt64
    public var points: [PointInfo]
    /// The dirty bitmap recorded as started when the newest point was captured (--next-dirty-bitmap), if any: what
    /// the next capture's --dirty-bitmap must name.
    public var dirtyBitmap: String? = nil
    /// A chain of used blocks (`capture --used-blocks`).
    public var usedBlocks = false

    public static func read(chain path: String) throws -> ChainListing {
        let m = try Chain(location: path, access: .read).manifest!
        var listing = ChainListing(
            chainID: m.chainID.description, blockSize: m.blockSize, sourceSize: m.sourceSize,
            points: m.images.map {
                PointInfo(
                    point: $0.point, kind: $0.kind, firstPoint: $0.firstPoint, createdAt: $0.createdAt, bytesRead: $0.bytesRead,
                    bytesStored: $0.bytesStored, blocksChanged: $0.blocksChanged, file: $0.file, changeSource: m.changeSources[$0.point],
                    usedRegions: m.usedSummaries[$0.point].flatMap(UsedBlocks.regions(fromSummary:)))
            })
        listing.usedBlocks = m.usedBlocks
        if let r = m.dirtyBitmap.flatMap(DirtyBitmapChanges.Record.init), r.point == m.images.last!.lastPoint { listing.dirtyBitmap = r.name }
        return listing
    }
}

extension ChainListing {
    /// A point's time as people read it: "yyyy-MM-dd HH:mm:ss" in the local time zone.
    public static func localTime(_ seconds: UInt64) -> String { LocalCalendar.format(seconds, "%Y-%m-%d %H:%M:%S") }
}
