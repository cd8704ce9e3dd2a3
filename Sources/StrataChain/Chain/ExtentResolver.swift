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
    /// The frame holding a data extent's blocks.
    var frameRef: FrameRef { FrameRef(image: Int(image), frame: frame) }
}

enum ExtentResolver {
    /// `images[0]` must be a full image (covering every block); later images overlay it in order.
    /// Folded pairwise (0 under 1, 2 under 3, ..., then those results pairwise): overlaying is associative, and
    /// each extent then goes through log2(images) overlays instead of up to images - 1 one after another.
    static func resolve(_ images: [[ExtentRecord]]) -> [ResolvedExtent] {
        var layers = images.enumerated().map { i, extents in
            extents.map {
                ResolvedExtent(firstBlock: $0.firstBlock, blockCount: $0.blockCount, kind: $0.kind, image: UInt32(i), frame: $0.frame, frameBlock: $0.frameBlock)
            }
        }
        while layers.count > 1 {
            layers = stride(from: 0, to: layers.count, by: 2).map { i in i + 1 < layers.count ? overlay(layers[i], layers[i + 1]) : layers[i] }
        }
        return layers.first ?? []
    }

    /// The parts of `base` no extent of `top` covers, merged in order with all of `top`. Each extent of `top`
    /// splits at most one extent of `base` in two, so the result holds at most `base.count + 2 * top.count`.
    static func overlay(_ base: [ResolvedExtent], _ top: [ResolvedExtent]) -> [ResolvedExtent] {
        if top.isEmpty { return base }
        return base.withUnsafeBufferPointer { base in
            top.withUnsafeBufferPointer { top in
                Array(unsafeUninitializedCapacity: base.count + 2 * top.count) { out, count in
                    var n = 0
                    var j = 0  // first top extent that ends after the current position
                    var emittedTop = 0
                    for a in base {
                        var s = a.firstBlock
                        while s < a.endBlock {
                            while j < top.count && top[j].endBlock <= s { j += 1 }
                            while emittedTop < j || (emittedTop < top.count && top[emittedTop].firstBlock <= s) {
                                out.initializeElement(at: n, to: top[emittedTop])
                                n += 1
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
                            out.initializeElement(at: n, to: piece)
                            n += 1
                            s = stop
                        }
                    }
                    while emittedTop < top.count {
                        out.initializeElement(at: n, to: top[emittedTop])
                        n += 1
                        emittedTop += 1
                    }
                    count = n
                }
            }
        }
    }
}
