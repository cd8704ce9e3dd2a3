// Any byte range of a point, read in place: what `mount` and `serve` serve (issue 11). A read finds its blocks in
// a resolved window of the point (PointWalk from the block asked for: each image's extent chunk holding it is
// found by a binary search of its chunk table): a sequential reader's windows are wide (thousands of extents an
// image, the last two kept, so that the reads that follow resolve nothing), a random read's narrow (the blocks
// around it, a few kept: resolving a wide window for one 4 KiB read cost more than decoding it). Zero and
// unreadable blocks are zeros without I/O, data blocks come from the chain's shared cache of decoded frames
// (checksum and decompression checked on the way in); every block handed out is checked against its stored hash
// first. Reads run in parallel (each thread decodes the frames it misses; a frame wanted by two is decoded once),
// and a reader that reads on from where it stopped, twice running, gets the frames ahead of it read and decoded
// by the read-ahead threads. Memory: the frame cache, a few windows a point being read and a few index chunks an
// image, whatever the size of the source.
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
    /// Resolved windows, most recently used last: wide ones (a sequential reader's) and narrow ones (random reads').
    private var windows: [Window] = []
    private var narrowWindows: [Window] = []
    /// A reader reading on from where it stopped: where its last read ended, how many reads running started near
    /// where the one before ended, and how far read-ahead has been asked for it.
    private struct Stream {
        var end: UInt64
        var streak: Int
        var aheadTo: UInt64
    }
    /// The last few streams, most recent last: a point may be read in several places at once (several clients;
    /// nbdcopy's connections each copy a range of their own).
    private var streams: [Stream] = []
    static let streamsKept = 8
    /// How near a stream's end a read must start to go on it: within 16 reads of its size (the kernel keeps up to
    /// 16 of a sequential reader's requests in flight, and they arrive out of order), at least 256 KiB, at most
    /// half the read-ahead span. (Within half the span whatever the size, random 4 KiB reads went on streams
    /// often enough that the read-ahead threads spent 3% of the server's CPU decoding frames nobody read.)
    static let nearReads: UInt64 = 16
    static let nearBytes: UInt64 = 256 << 10

    /// Windows kept, and the extents an image may add to one: a window holds at most images x 4096 resolved
    /// extents of 32 bytes (128 KiB an image; a chain's windows are far smaller where newer images overlay older
    /// ones), so a point being read keeps at most 256 KiB an image, whatever the size of the disk.
    static let windowsKept = 2
    static let windowExtents = 4096
    /// A random read's window: the blocks from its first on, up to this many (and at most as many extents an
    /// image); the last `narrowWindowsKept` kept.
    static let narrowWindowBlocks: UInt64 = 64
    static let narrowWindowsKept = 16

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
        try forEachExtent(from: offset / bs, to: (end + bs - 1) / bs, wide: sequential) { e in
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

    /// Calls `body` with the resolved extents of blocks `first..<end`, in order, cut to them, found in wide windows
    /// or (a random read's) narrow ones.
    private func forEachExtent(from first: UInt64, to end: UInt64, wide: Bool = true, _ body: (ResolvedExtent) throws -> Void) throws {
        var block = first
        while block < end {
            let window = try self.window(holding: block, wide: wide || end - block > Self.narrowWindowBlocks)
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

    /// A resolved window holding `block`: a cached one (wide or narrow), or one walked from `block`, wide or
    /// narrow.
    private func window(holding block: UInt64, wide: Bool) throws -> Window {
        let cached: Window? = lock.withLock {
            if let i = windows.lastIndex(where: { $0.range.contains(block) }) {
                windows.append(windows.remove(at: i))
                return windows.last
            }
            guard let i = narrowWindows.lastIndex(where: { $0.range.contains(block) }) else { return nil }
            return narrowWindows[i]
        }
        if let cached { return cached }
        let walk = wide
            ? PointWalk(images, from: block, extents: Self.windowExtents)
            : PointWalk(images, from: block, to: block + Self.narrowWindowBlocks, extents: Int(Self.narrowWindowBlocks))
        let extents = try walk.next() ?? []
        let w: Window = (range: block..<walk.position, extents: extents)
        lock.withLock {
            if wide {
                windows.append(w)
                if windows.count > Self.windowsKept { windows.removeFirst() }
            } else {
                narrowWindows.append(w)
                if narrowWindows.count > Self.narrowWindowsKept { narrowWindows.removeFirst() }
            }
        }
        return w
    }

    /// A read that starts where one of the last few ended (or near it, `nearReads`: the kernel's read-ahead reads
    /// arrive out of order) reads on a stream; the second such read running asks the read-ahead threads for the frames of
    /// the stream's next `readAheadBytes` (shared out between the streams doing so, so that the cache holds what
    /// they read ahead; one read alone may be a random read landing near another: reading ahead for it would decode
    /// 16 frames nobody wants). Returns whether it is the second or later such read (its frames are decoded whole).
    @discardableResult
    private func readAhead(from offset: UInt64, to end: UInt64) -> Bool {
        guard chain.readAheadBytes > 0 else { return false }
        let near = min(UInt64(chain.readAheadBytes) / 2, max(Self.nearReads * (end - offset), Self.nearBytes))
        let (sequential, range): (Bool, Range<UInt64>?) = lock.withLock {
            var stream: Stream
            if let i = streams.lastIndex(where: { offset + near >= $0.end && offset <= $0.end + near }) {
                stream = streams.remove(at: i)
                stream.end = max(stream.end, end)
                stream.streak += 1
            } else {
                stream = Stream(end: end, streak: 0, aheadTo: end)
                if streams.count >= Self.streamsKept { streams.removeFirst() }
            }
            defer { streams.append(stream) }
            guard stream.streak >= 2 else { return (false, nil) }
            let reading = streams.reduce(1) { $0 + ($1.streak >= 2 ? 1 : 0) }
            let span = UInt64(chain.readAheadBytes / reading)
            guard stream.aheadTo < end + span / 2, end < size else { return (true, nil) }
            let from = max(stream.aheadTo, end), to = min(end + span, size)
            stream.aheadTo = to
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
