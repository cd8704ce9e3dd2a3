// Any byte range of a point, read in place: what `mount` and `serve` serve (issue 11). A read finds its blocks in
// a resolved window of the point (PointWalk from the block asked for: each image's extent chunk holding it is
// found by a binary search of its chunk table), the last two kept so that neighbouring reads resolve nothing; takes zero and unreadable blocks as zeros without I/O, and data blocks from the chain's shared cache
// of decoded frames (checksum and decompression checked on the way in); every block handed out is checked
// against its stored hash first. Reads run in parallel (each thread decodes the frames it misses; a frame
// wanted by two is decoded once), and a reader that reads on from where it stopped gets the frames ahead of it
// read and decoded by the read-ahead threads. Memory: the frame cache, two windows a point being read and a few
// index chunks an image, whatever the size of the source.
import StrataCodec
import StrataFormat
import StrataIO

public final class PointReader: @unchecked Sendable {
    public let point: UInt32
    public let size: UInt64
    public let blockSize: Int
    private let chain: ServedChain
    private let images: [ImageFile]
    private let frames: FrameReader
    private let lock = Condition()
    /// The resolved extents of a range of blocks.
    private typealias Window = (range: Range<UInt64>, extents: [ResolvedExtent])
    /// Resolved windows, most recently used last.
    private var windows: [Window] = []
    /// Where the last read ended, and how far read-ahead has been asked for.
    private var lastEnd: UInt64 = .max
    private var aheadTo: UInt64 = 0

    /// Windows kept, and the extents an image may add to one: a window holds at most images x 4096 resolved
    /// extents of 32 bytes (128 KiB an image; a chain's windows are far smaller where newer images overlay older
    /// ones), so a point being read keeps at most 256 KiB an image, whatever the size of the disk.
    static let windowsKept = 2
    static let windowExtents = 4096

    init(chain: ServedChain, point: UInt32, images: [ImageFile]) {
        self.chain = chain
        self.point = point
        self.images = images
        size = chain.sourceSize
        blockSize = chain.blockSize
        frames = FrameReader(images)
    }

    /// Reads `count` bytes at `offset` into `buffer`; a range past the end is refused, one that ends past it is cut
    /// short. Returns the bytes read. A frame or block that fails its check throws, naming the image and frame,
    /// and nothing of it is handed out.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        guard offset <= size else { throw ChainError.invalidOption("offset \(offset) is past the end of the point (\(size) bytes)") }
        let n = Int(min(UInt64(count), size - offset))
        guard n > 0 else { return 0 }
        let bs = UInt64(blockSize)
        let end = offset + UInt64(n)
        let sequential = readAhead(from: offset, to: end)
        try forEachExtent(from: offset / bs, to: (end + bs - 1) / bs) { e in
            // The bytes of this extent that the request wants, and where they go.
            let from = max(e.firstBlock * bs, offset), to = min(e.endBlock * bs, end)
            let out = buffer + Int(from - offset)
            guard e.kind == .data else {
                out.initializeMemory(as: UInt8.self, repeating: 0, count: Int(to - from))
                return
            }
            let f = e.frameRef
            // The frame's blocks the range takes, each checked against its stored hash before use. A read at random
            // wants only them decoded; a sequential reader will want the rest (and the read-ahead decodes whole
            // frames on several threads for it).
            let firstBlock = Int(e.frameBlock) + Int(from / bs - e.firstBlock)
            let lastBlock = Int(e.frameBlock) + Int((to - 1) / bs - e.firstBlock)
            let entry = try chain.cache.get(f, of: frames, blocks: sequential ? nil : firstBlock..<(lastBlock + 1))
            // A block counts as taken by the read that takes its last byte (a sequential reader is then done with it).
            let taken = (lastBlock - firstBlock + 1) - (to % bs != 0 && to != size ? 1 : 0)
            defer { chain.cache.release(entry, blocksTaken: taken) }
            try frames.checkBlocks(f, firstBlock..<(lastBlock + 1), stored: entry.hashes, decoded: entry.decoded)
            let start = firstBlock * blockSize + Int(from % bs)
            out.copyMemory(from: entry.decoded + start, byteCount: Int(to - from))
        }
        return n
    }

    /// The zero (and unreadable) ranges of the point within `range`, in bytes, in order: what NBD's block status
    /// reports so that clients skip them.
    public func zeroRanges(in range: Range<UInt64>) throws -> [Range<UInt64>] {
        let bs = UInt64(blockSize)
        let lo = min(range.lowerBound, size), hi = min(range.upperBound, size)
        guard lo < hi else { return [] }
        var out: [Range<UInt64>] = []
        try forEachExtent(from: lo / bs, to: (hi + bs - 1) / bs) { e in
            guard e.kind != .data else { return }
            out.appendJoining(max(e.firstBlock * bs, lo)..<min(e.endBlock * bs, hi))
        }
        return out
    }

    /// Calls `body` with the resolved extents of blocks `first..<end`, in order, cut to them.
    private func forEachExtent(from first: UInt64, to end: UInt64, _ body: (ResolvedExtent) throws -> Void) throws {
        var block = first
        while block < end {
            let window = try self.window(holding: block)
            var i = window.extents.firstEnding(after: block, \.endBlock)
            while i < window.extents.count && block < end {
                var e = window.extents[i]
                if e.firstBlock < block {
                    let cut = block - e.firstBlock
                    e.firstBlock = block
                    e.blockCount -= UInt32(cut)
                    if e.kind == .data { e.frameBlock += UInt32(cut) }
                }
                if e.endBlock > end { e.blockCount = UInt32(end - e.firstBlock) }
                try body(e)
                block = e.endBlock
                i += 1
            }
            block = max(block, window.range.upperBound)
        }
    }

    /// A resolved window holding `block`: a cached one, or one walked from `block`.
    private func window(holding block: UInt64) throws -> Window {
        let cached: Window? = lock.withLock {
            guard let i = windows.lastIndex(where: { $0.range.contains(block) }) else { return nil }
            windows.append(windows.remove(at: i))
            return windows.last
        }
        if let cached { return cached }
        let walk = PointWalk(images, from: block, extents: Self.windowExtents)
        let extents = try walk.next() ?? []
        let w: Window = (range: block..<walk.position, extents: extents)
        lock.withLock {
            windows.append(w)
            if windows.count > Self.windowsKept { windows.removeFirst() }
        }
        return w
    }

    /// A read that starts where the last one ended (or close to it: the kernel's read-ahead reads arrive out of
    /// order) asks the read-ahead threads for the frames of the next `readAheadBytes`. Returns whether it is such
    /// a read.
    @discardableResult
    private func readAhead(from offset: UInt64, to end: UInt64) -> Bool {
        let span = UInt64(chain.readAheadBytes)
        guard span > 0 else { return false }
        let (sequential, range): (Bool, Range<UInt64>?) = lock.withLock {
            let sequential = lastEnd != .max && offset + span / 2 >= lastEnd && offset <= lastEnd + span / 2
            lastEnd = sequential ? max(lastEnd, end) : end
            if !sequential { aheadTo = end }
            guard sequential, aheadTo < end + span / 2, end < size else { return (sequential, nil) }
            let from = max(aheadTo, end), to = min(end + span, size)
            aheadTo = to
            return (true, from < to ? from..<to : nil)
        }
        guard let range else { return sequential }
        let bs = UInt64(blockSize)
        var wanted: [FrameRef] = []
        try? forEachExtent(from: range.lowerBound / bs, to: (range.upperBound + bs - 1) / bs) { e in
            if e.kind == .data, wanted.last != e.frameRef { wanted.append(e.frameRef) }
        }
        chain.readAhead.want(wanted, of: frames)
        return true
    }

    /// A failed read in one line for a server's log: the image and frame (or what else failed).
    public static func describe(_ error: Error) -> String {
        let (file, detail) = ChainError.damage(of: error)
        return file.map { "image \($0): \(detail)" } ?? detail
    }
}
