// Newest wins, a window at a time: walks the extents of a point's images (oldest first, the first covering every
// block) forward together and resolves each window of at most `windowBlocks` blocks with ExtentResolver. Memory is
// one extent chunk per image and one window's extents, whatever the size of the source or the number of its
// extents: what restore, verify, merge, a map rebuild and a heal walk.
import StrataFormat

final class PointWalk {
    /// Blocks per window: 65536 (256 MiB of 4 KiB blocks); a window holds at most that many extents an image.
    /// (Tests make it small to cross many windows.)
    nonisolated(unsafe) static var defaultWindow: UInt64 = 1 << 16

    private var cursors: [ExtentCursor]
    private let blockCount: UInt64
    private let windowBlocks: UInt64
    private var layers: [[ExtentRecord]]
    /// The first block of the next window.
    private(set) var position: UInt64

    init(_ images: [ImageFile], from block: UInt64 = 0, windowBlocks: UInt64 = PointWalk.defaultWindow) {
        cursors = images.map { ExtentCursor($0.index, from: block) }
        blockCount = images.first?.header.blockCount ?? 0
        self.windowBlocks = max(1, windowBlocks)
        layers = Array(repeating: [], count: images.count)
        position = block
    }

    /// The next window's resolved extents (`image` is the image's place in the list given), or nil at the end.
    func next() throws -> [ResolvedExtent]? {
        guard position < blockCount else { return nil }
        let end = min(blockCount, position + windowBlocks)
        for k in cursors.indices {
            layers[k].removeAll(keepingCapacity: true)
            try cursors[k].take(upTo: end, into: &layers[k])
        }
        position = end
        return ExtentResolver.resolve(layers)
    }

    /// Calls `body` with every resolved extent of the point, in block order.
    func forEach(_ body: (ResolvedExtent) throws -> Void) throws {
        while let window = try next() { for e in window { try body(e) } }
    }
}
