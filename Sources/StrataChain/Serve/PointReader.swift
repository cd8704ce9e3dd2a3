// Any byte range of a point, read in place: what `mount` and `serve` will serve (issue 11). A read resolves just
// its blocks (PointWalk from the first block: each image's extent chunk holding it is found by a binary search of
// its chunk table, and the last few chunks stay decoded), takes zero and unreadable blocks as zeros without I/O,
// and data blocks from frames read through the frame reader into a bounded cache of decoded frames (checksum and
// decompression checked on the way in); every block handed out is checked against its stored hash first. Memory:
// the frame cache (`cacheBytes`) and a few index chunks an image, whatever the size of the source or the length
// of the chain. One read at a time (a lock): parallel reads and read-ahead come with the servers.
import StrataCodec
import StrataFormat
import StrataIO

public final class PointReader {
    public let point: UInt32
    public let size: UInt64
    public let blockSize: Int
    private let images: [ImageFile]
    private let frames: FrameReader
    private let cache: FrameCache
    private let decompressor: FrameDecompressor
    private let lock = Condition()

    /// Opens `point` (nil: the newest) of the chain at `location` for reading, with a cache of about
    /// `cacheBytes` of decoded frames (at least one frame).
    public init(chain location: String, point: UInt32? = nil, cacheBytes: Int = 64 << 20) throws {
        let chain = try Chain(location: location, access: .read)
        guard let m = chain.manifest else { throw ChainError.notAChain(path: location) }
        self.point = point ?? m.points.last!
        images = try chain.openPoint(self.point)
        size = m.sourceSize
        blockSize = Int(m.blockSize)
        frames = FrameReader(images)
        let (maxStored, maxBlocks) = frames.largest
        cache = FrameCache(bytes: cacheBytes, maxStored: maxStored, maxDecoded: maxBlocks * blockSize)
        decompressor = try FrameDecompressor()
    }

    /// Reads `count` bytes at `offset` into `buffer`; a range past the end is refused, one that ends past it is cut
    /// short. Returns the bytes read. A frame or block that fails its check throws, naming the image and frame,
    /// and nothing of it is handed out.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        guard offset <= size else { throw ChainError.invalidOption("offset \(offset) is past the end of the point (\(size) bytes)") }
        let n = Int(min(UInt64(count), size - offset))
        guard n > 0 else { return 0 }
        let bs = UInt64(blockSize)
        let first = offset / bs, end = (offset + UInt64(n) + bs - 1) / bs
        return try lock.withLock {
            let walk = PointWalk(images, from: first, to: end)
            while let window = try walk.next() {
                for e in window {
                    // The bytes of this extent that the request wants, and where they go.
                    let from = max(e.firstBlock * bs, offset), to = min(e.endBlock * bs, offset + UInt64(n))
                    guard from < to else { continue }
                    let out = buffer + Int(from - offset)
                    guard e.kind == .data else {
                        out.initializeMemory(as: UInt8.self, repeating: 0, count: Int(to - from))
                        continue
                    }
                    let f = e.frameRef
                    let entry = try cache.get(f, reader: frames, decompressor: decompressor)
                    // The frame's blocks the range takes, each checked against its stored hash before use.
                    let firstBlock = Int(e.frameBlock) + Int(from / bs - e.firstBlock)
                    let lastBlock = Int(e.frameBlock) + Int((to - 1) / bs - e.firstBlock)
                    try frames.checkBlocks(f, firstBlock..<(lastBlock + 1), stored: entry.stored, decoded: entry.decoded)
                    let start = firstBlock * blockSize + Int(from % bs)
                    out.copyMemory(from: entry.decoded + start, byteCount: Int(to - from))
                }
            }
            return n
        }
    }

    /// The zero (and unreadable) ranges of the point within `range`, in bytes, in order: what NBD's block status
    /// reports so that clients skip them.
    public func zeroRanges(in range: Range<UInt64>) throws -> [Range<UInt64>] {
        let bs = UInt64(blockSize)
        let lo = min(range.lowerBound, size), hi = min(range.upperBound, size)
        guard lo < hi else { return [] }
        return try lock.withLock {
            var out: [Range<UInt64>] = []
            let walk = PointWalk(images, from: lo / bs, to: (hi + bs - 1) / bs)
            while let window = try walk.next() {
                for e in window where e.kind != .data {
                    let r = max(e.firstBlock * bs, lo)..<min(e.endBlock * bs, hi)
                    if !r.isEmpty { out.appendJoining(r) }
                }
            }
            return out
        }
    }
}
