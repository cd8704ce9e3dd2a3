// Newest wins, a window at a time: walks the extents of a point's images (oldest first, the first covering every
// block) forward together and resolves each window with ExtentResolver. A window ends before any image has more
// than `extents` extents in it (found from the images' chunk tables: at most that many and one chunk more), so a
// sparse or little-changed disk is walked in a few large windows and a fragmented one in many small ones. Memory
// is one extent chunk per image and one window's extents, whatever the size of the source or the number of its
// extents: what restore, verify, merge, a map rebuild and a heal walk.
import StrataFormat

final class PointWalk {
    /// Extents an image may have in a window: 65536 (1.5 MiB of records).
    static let defaultExtents = 1 << 16

    private let images: [ImageFile]
    private var cursors: [ExtentCursor]
    private let blockCount: UInt64
    private let extents: Int
    private let maxBlocks: UInt64
    private var layers: [[ExtentRecord]]
    /// The first block of the next window.
    private(set) var position: UInt64
    /// Whether the images lie over a base that covers every block (an older point's hash map): the first image
    /// need not be full, and blocks no image covers resolve to `image == PointWalk.base`.
    private let underlay: Bool
    static let base = UInt32.max

    /// Walks blocks `block..<end` (end nil: to the end of the source), in windows of at most `maxBlocks` blocks
    /// (tests make them small, through `Tuning`, to cross many windows).
    init(
        _ images: [ImageFile], from block: UInt64 = 0, to end: UInt64? = nil, extents: Int = PointWalk.defaultExtents,
        maxBlocks: UInt64 = .max, underlay: Bool = false
    ) {
        self.underlay = underlay
        self.images = images
        cursors = images.map { ExtentCursor($0.index, from: block) }
        let blocks = images.first?.header.blockCount ?? 0
        blockCount = min(end ?? blocks, blocks)
        self.extents = max(1, extents)
        self.maxBlocks = max(1, maxBlocks)
        layers = Array(repeating: [], count: images.count)
        position = block
    }

    /// The next window's resolved extents (`image` is the image's place in the list given), or nil at the end.
    func next() throws -> [ResolvedExtent]? {
        guard position < blockCount else { return nil }
        var end = blockCount - position > maxBlocks ? position + maxBlocks : blockCount
        for image in images { end = min(end, image.index.block(after: extents, from: position)) }
        for k in cursors.indices {
            layers[k].removeAll(keepingCapacity: true)
            try cursors[k].take(upTo: end, into: &layers[k])
        }
        let start = position
        position = end
        guard underlay else { return ExtentResolver.resolve(layers) }
        var base: [ExtentRecord] = []
        var at = start
        while at < end {
            let n = UInt32(min(end - at, UInt64(UInt32.max)))
            base.append(ExtentRecord(firstBlock: at, blockCount: n, kind: .zero))
            at += UInt64(n)
        }
        return ExtentResolver.resolve([base] + layers).map {
            var e = $0
            e.image = e.image == 0 ? Self.base : e.image - 1
            return e
        }
    }

    /// Calls `body` with every resolved extent of the point, in block order.
    func forEach(_ body: (ResolvedExtent) throws -> Void) throws {
        while let window = try next() { for e in window { try body(e) } }
    }
}
