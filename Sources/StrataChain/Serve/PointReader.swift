// Any byte range of a point, read in place: what `mount` and `serve` serve. A read finds its blocks in
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

public final class PointReader: @unchecked Sendable {  // the window cache and the stream state are guarded by `lock`; the rest is set once
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
        let n = try length(count, at: offset)
        guard n > 0 else { return 0 }
        let end = offset + UInt64(n)
        let sequential = readAhead(from: offset, to: end)
        try forEachPart(from: offset, to: end, sequential: sequential) { part in
            try copy(part, to: buffer + Int(part.from - offset), sequential: sequential)
        }
        return n
    }

    /// Reads until `count` bytes are in `buffer` or the point ends: the bytes read.
    public func readFully(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        var done = 0
        while done < count {
            let n = try read(into: buffer + done, count: count - done, at: offset + UInt64(done))
            guard n > 0 else { break }
            done += n
        }
        return done
    }

    /// The `count` bytes at `offset` (cut short at the end, like `read`) where they lie, for a caller that sends
    /// them on without copying them together first (NBD's replies): `body` gets them in order, as runs of a shared
    /// page of zeros and of decoded frames in the cache, pinned and their blocks checked until `body` returns.
    /// A read holds at most `maxPinned` entries, and never waits for room in the cache while it holds any (the
    /// threads holding the rest might be waiting too): past either, what it has is copied into `scratch` (room
    /// for `count` bytes) and the rest read there, and `body` gets that one run. Throws before calling `body`.
    public func withBytes<R>(
        count: Int, at offset: UInt64, scratch: UnsafeMutableRawPointer, _ body: ([UnsafeRawBufferPointer]) throws -> R
    ) throws -> R {
        let n = try length(count, at: offset)
        let end = offset + UInt64(n)
        let sequential = n > 0 && readAhead(from: offset, to: end)
        var runs: [UnsafeRawBufferPointer] = []
        var pinned: [(entry: SharedFrameCache.Entry, taken: Int)] = []
        var copying = false
        defer { for p in pinned { chain.cache.release(p.entry, blocksTaken: p.taken) } }
        try forEachPart(from: offset, to: end, sequential: sequential) { part in
            let out = scratch + Int(part.from - offset)
            if !copying {
                if case .frame(let e) = part.kind {
                    let entry = pinned.count < Self.maxPinned
                        ? try chain.cache.get(e.frameRef, of: frames, blocks: part.blocks(wholeFrame: sequential), waitForRoom: false) : nil
                    if let entry {
                        pinned.append((entry, part.blocksTaken))
                        runs.append(try checked(part, in: entry))
                        return
                    }
                } else {
                    var at = 0
                    while at < part.count {
                        let k = min(part.count - at, Self.zeros.count)
                        runs.append(UnsafeRawBufferPointer(rebasing: Self.zeros[0..<k]))
                        at += k
                    }
                    return
                }
                // Out of pins: what is held is copied, and the rest read, into the scratch buffer.
                var at = scratch
                for r in runs {
                    at.copyMemory(from: r.baseAddress!, byteCount: r.count)
                    at += r.count
                }
                for p in pinned { chain.cache.release(p.entry, blocksTaken: p.taken) }
                pinned = []
                copying = true
            }
            try copy(part, to: out, sequential: sequential)
        }
        return try body(copying ? [UnsafeRawBufferPointer(start: scratch, count: n)] : runs)
    }

    /// The entries one `withBytes` may hold pinned: a 4 MiB request's frames where the point is a full image's
    /// (1 MiB each, 5 where the request straddles them), more where incrementals' frames overlay it.
    static let maxPinned = 16
    /// A MiB of zeros, which the zero runs of `withBytes` point into.
    nonisolated(unsafe) static let zeros = UnsafeRawBufferPointer(  // never written after it is made
        start: UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096).initializeMemory(as: UInt8.self, repeating: 0, count: 1 << 20),
        count: 1 << 20)

    /// How many of `count` bytes at `offset` the point has; throws past its end.
    private func length(_ count: Int, at offset: UInt64) throws -> Int {
        guard offset <= size else { throw ChainError.invalidOption("offset \(offset) is past the end of the point (\(size) bytes)") }
        return Int(min(UInt64(max(count, 0)), size - offset))
    }

    /// A run of a read: the bytes `from..<to` of the point, zeros or in extent `e`'s frame.
    private struct Part {
        enum Kind { case zeros, frame(ResolvedExtent) }
        let kind: Kind
        let from: UInt64, to: UInt64
        /// The frame's blocks the run takes (first..<end), and where its first byte lies in the first.
        let blocks: Range<Int>
        let skip: Int
        let takesLastByte: Bool
        var count: Int { Int(to - from) }
        /// The blocks to have decoded: a read at random wants only its own, a sequential reader will want the rest
        /// (and the read-ahead decodes whole frames on several threads for it).
        func blocks(wholeFrame: Bool) -> Range<Int>? { wholeFrame ? nil : blocks }
        /// A block counts as taken by the read that takes its last byte (a sequential reader is then done with it):
        /// the run's last block only where the run ends with it (or with the point).
        var blocksTaken: Int { blocks.count - (takesLastByte ? 0 : 1) }
    }

    /// Calls `body` with the runs of `from..<to`, in order.
    private func forEachPart(from offset: UInt64, to end: UInt64, sequential: Bool, _ body: (Part) throws -> Void) throws {
        guard offset < end else { return }
        let bs = UInt64(blockSize)
        try forEachExtent(from: offset / bs, to: (end + bs - 1) / bs, wide: sequential) { e in
            let from = max(e.firstBlock * bs, offset), to = min(e.endBlock * bs, end)
            guard e.kind == .data else {
                try body(Part(kind: .zeros, from: from, to: to, blocks: 0..<0, skip: 0, takesLastByte: true))
                return
            }
            let first = Int(e.frameBlock) + Int(from / bs - e.firstBlock)
            let last = Int(e.frameBlock) + Int((to - 1) / bs - e.firstBlock)
            try body(Part(kind: .frame(e), from: from, to: to, blocks: first..<(last + 1), skip: Int(from % bs), takesLastByte: to % bs == 0 || to == size))
        }
    }

    /// Copies run `part` to `out`: zeros, or its bytes out of its frame's cache entry (pinned meanwhile).
    private func copy(_ part: Part, to out: UnsafeMutableRawPointer, sequential: Bool) throws {
        guard case .frame(let e) = part.kind else {
            out.initializeMemory(as: UInt8.self, repeating: 0, count: part.count)
            return
        }
        let entry = try chain.cache.get(e.frameRef, of: frames, blocks: part.blocks(wholeFrame: sequential))
        defer { chain.cache.release(entry, blocksTaken: part.blocksTaken) }
        out.copyMemory(from: try checked(part, in: entry).baseAddress!, byteCount: part.count)
    }

    /// Run `part`'s bytes in its frame's entry, each of its blocks checked against its stored hash first.
    private func checked(_ part: Part, in entry: SharedFrameCache.Entry) throws -> UnsafeRawBufferPointer {
        guard case .frame(let e) = part.kind else { preconditionFailure("a run of zeros has no frame") }
        try frames.checkBlocks(e.frameRef, part.blocks, stored: entry.hashes, decoded: entry.decoded)
        return UnsafeRawBufferPointer(start: entry.decoded + part.blocks.lowerBound * blockSize + part.skip, count: part.count)
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
