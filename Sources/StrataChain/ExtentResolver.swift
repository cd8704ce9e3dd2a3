// Newest wins: folds the extent lists of a chain's images (oldest first) into one list saying, for every block
// of the source, which image and frame holds it, so that a restore is one pass in block order. Works on sorted
// lists only (a linear merge per image), so its cost is the number of extents, not the number of blocks.
import StrataFormat

struct ResolvedExtent: Equatable {
    var firstBlock: UInt64
    var blockCount: UInt32
    var kind: ExtentKind
    var image: UInt32
    var frame: UInt32
    var frameBlock: UInt32

    var endBlock: UInt64 { firstBlock + UInt64(blockCount) }
}

enum ExtentResolver {
    /// `images[0]` must be a full image (covering every block); later images overlay it in order.
    static func resolve(_ images: [[ExtentRecord]]) -> [ResolvedExtent] {
        guard let base = images.first else { return [] }
        var result = base.map { ResolvedExtent(firstBlock: $0.firstBlock, blockCount: $0.blockCount, kind: $0.kind, image: 0, frame: $0.frame, frameBlock: $0.frameBlock) }
        for (i, top) in images.enumerated().dropFirst() where !top.isEmpty {
            result = overlay(result, top.map {
                ResolvedExtent(firstBlock: $0.firstBlock, blockCount: $0.blockCount, kind: $0.kind, image: UInt32(i), frame: $0.frame, frameBlock: $0.frameBlock)
            })
        }
        return result
    }

    /// The parts of `base` no extent of `top` covers, merged in order with all of `top`.
    static func overlay(_ base: [ResolvedExtent], _ top: [ResolvedExtent]) -> [ResolvedExtent] {
        var out = [ResolvedExtent]()
        out.reserveCapacity(base.count + 2 * top.count)
        var j = 0  // first top extent that ends after the current position
        var emittedTop = 0
        for a in base {
            var s = a.firstBlock
            while s < a.endBlock {
                while j < top.count && top[j].endBlock <= s { j += 1 }
                while emittedTop < j || (emittedTop < top.count && top[emittedTop].firstBlock <= s) {
                    out.append(top[emittedTop])
                    emittedTop += 1
                }
                if j < top.count && top[j].firstBlock <= s {
                    s = min(a.endBlock, top[j].endBlock)
                    continue
                }
                let stop = j < top.count ? min(a.endBlock, top[j].firstBlock) : a.endBlock
                var piece = a
                piece.firstBlock = s
                piece.blockCount = UInt32(stop - s)
                if a.kind == .data { piece.frameBlock = a.frameBlock + UInt32(s - a.firstBlock) }
                out.append(piece)
                s = stop
            }
        }
        while emittedTop < top.count {
            out.append(top[emittedTop])
            emittedTop += 1
        }
        return out
    }
}
