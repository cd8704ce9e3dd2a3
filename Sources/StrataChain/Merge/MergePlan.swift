// What a merge writes. The images of the range are resolved newest-wins, a window of blocks at a time
// (PointWalk), twice: the first walk counts the blocks of each source frame that survive, the second writes.
// Each source frame is either copied whole or re-packed. A frame is copied whole, byte for byte, when at least
// `keepWholeLive` of its blocks survive (the dead ones stay in it unused: the image says so with the
// sparseFrames feature bit), and re-packed otherwise: nightly rewrites leave a few dead pages in most frames,
// and re-compressing all the live blocks around them made a merge cost CPU, not I/O (12x a copy).
// So a merged image holds at most 1/3 more than its live data. In each window, the whole frames first used
// there are placed first, in order of first use, then the frames re-packed from the window's other blocks, so
// every frame's number is known when the window's extents are written. Memory: one window's extents, and eight
// bytes per source frame (surviving blocks and placement; a frame is up to 1 MiB of blocks).
import StrataCodec
import StrataFormat
import StrataIO

final class MergePlan {
    private let sources: [ImageFile]
    private let tuning: Tuning
    private let blockSize: Int
    private let blocksPerFrame: Int
    /// Source frames numbered across the images: image i's frame f is `frameBase[i] + f`.
    private let frameBase: [Int]
    /// Blocks of each source frame that survive, by that number.
    private var surviving: [UInt32]
    /// Where each source frame goes, decided once all are counted: re-packed, copied whole (not placed yet), or
    /// copied whole as frame N of the merged image.
    private var placement: [UInt32]
    private static let repacked = UInt32.max, unplaced = UInt32.max - 1, placing = UInt32.max - 2
    /// The merged image is never larger than the frames it draws from, what a copy inside the store carries along
    /// between them, and `paddingAllowed`.
    private(set) var bytesUpperBound: UInt64 = 0
    /// Where the store copies frames itself: bytes the merged image may leave unused so that whole frames are
    /// copied there rather than downloaded (ImageWriter.unusedAllowed), 1/32 of the rest (S3's smallest part is
    /// 5 MiB: the first part, and a part of packed frames or an index chunk before a copy, are filled up to it).
    private(set) var paddingAllowed: UInt64 = 0
    /// The bytes left unused that way.
    private(set) var bytesPadding: UInt64 = 0
    /// Bytes copied whole and blocks re-packed: the work, for progress.
    private var workBytes: UInt64 = 0
    private(set) var framesCopied = 0
    private(set) var framesRepacked = 0
    /// The stored bytes of the source frames re-packed (read and decoded here).
    private(set) var bytesRepacked: UInt64 = 0
    /// Whole frames the store copied itself (never read here), and their bytes.
    private(set) var framesCopiedInStore = 0
    private(set) var bytesCopiedInStore: UInt64 = 0
    /// Extents an image may have in a window of the writing walk: 2^18.
    static let windowExtents = 1 << 18

    /// `copiesInStore`: the store copies whole frames itself (a bucket): a frame that lies within `bridge` bytes
    /// between two whole frames of its image is kept whole too, since the three go as one copy inside the store
    /// (its bytes are stored in the merged image either way, and its blocks need not be downloaded and re-packed).
    /// `tuning`: the walk's windows, the sub-frames, and the padding allowed (1/`mergePaddingShare` of the image).
    init(sources: [ImageFile], copiesInStore: Bool = false, tuning: Tuning = Tuning()) throws {
        self.sources = sources
        self.tuning = tuning
        blockSize = Int(sources[0].header.blockSize)
        blocksPerFrame = FrameBuffers.blocksPerFrame(blockSize: blockSize)
        var base = [Int]()
        var total = 0
        for s in sources {
            base.append(total)
            total += s.index.frameCount
        }
        frameBase = base
        surviving = Array(repeating: 0, count: total)
        placement = Array(repeating: Self.repacked, count: total)
        var extents: UInt64 = 0
        try PointWalk(sources, extents: Self.windowExtents, maxBlocks: tuning.maxWindowBlocks).forEach { e in
            extents += 1
            if e.kind == .data { surviving[number(e)] += e.blockCount }
        }
        var frames: UInt64 = 0
        func keepWhole(_ n: Int, _ r: FrameRecord) {
            placement[n] = Self.unplaced
            workBytes += UInt64(r.length)
            framesCopied += 1
        }
        func repack(_ n: Int, _ r: FrameRecord) {
            workBytes += UInt64(surviving[n]) * UInt64(blockSize)
            framesRepacked += 1
            bytesRepacked += UInt64(r.length)
        }
        for (i, source) in sources.enumerated() {
            // Live frames after the last whole one that are not whole themselves: whole if a whole frame follows
            // within `bridge` bytes (where the store copies), re-packed otherwise.
            var lastWholeEnd: UInt64?
            var between: [(Int, FrameRecord)] = []
            for f in 0..<source.index.frameCount where surviving[frameBase[i] + f] > 0 {
                let n = frameBase[i] + f
                let r = try source.index.frame(UInt32(f))
                bytesUpperBound += UInt64(r.length)
                frames += 1
                if isWhole(surviving[n], r) {
                    let bridged = lastWholeEnd.map { r.offset >= $0 && r.offset - $0 <= Self.bridge } ?? false
                    for (m, q) in between { bridged ? keepWhole(m, q) : repack(m, q) }
                    // What lies between the two and is no live frame (counted above) goes along too.
                    if bridged, let end = lastWholeEnd { bytesUpperBound += r.offset - end - between.reduce(0) { $0 + UInt64($1.1.length) } }
                    between = []
                    keepWhole(n, r)
                    lastWholeEnd = r.offset + UInt64(r.length)
                } else if copiesInStore && lastWholeEnd != nil {
                    between.append((n, r))
                } else {
                    repack(n, r)
                }
            }
            for (m, q) in between { repack(m, q) }
        }
        bytesUpperBound += IndexChunks.indexLength(frames: frames, extents: extents, encrypted: sources.contains { $0.header.isEncrypted })
        if copiesInStore {
            paddingAllowed = bytesUpperBound / UInt64(tuning.mergePaddingShare)
            bytesUpperBound += paddingAllowed
        }
    }

    private func number(_ e: ResolvedExtent) -> Int { frameBase[Int(e.image)] + Int(e.frame) }
    private func record(_ f: FrameRef) throws -> FrameRecord { try sources[f.image].index.frame(f.frame) }
    /// The share of a frame's blocks that must survive for it to be copied whole: 3/4.
    static let keepWholeLive = (numerator: 3, denominator: 4)
    private func isWhole(_ surviving: UInt32, _ r: FrameRecord) -> Bool {
        Int(surviving) * Self.keepWholeLive.denominator >= Int(r.blockCount) * Self.keepWholeLive.numerator
    }

    func write(to writer: ImageWriter, level: Int32, threads: Int, progress: ProgressHandler?) throws {
        var done: UInt64 = 0
        let kit = try MergeWorkers.Kit(sources: sources, level: level, threads: max(1, threads), keys: writer.keys, subframeBytes: tuning.subframeBytes)
        let reader = FrameReader(sources)
        let walk = PointWalk(sources, extents: Self.windowExtents, maxBlocks: tuning.maxWindowBlocks)
        writer.unusedAllowed = paddingAllowed
        defer { bytesPadding = writer.unusedBytes }
        while let window = try walk.next() {
            // Frame numbers: whole frames first used here, in order of first use, then packed frames in block order.
            let base = writer.nextFrame
            var wholeOrder: [FrameRef] = []
            for e in window where e.kind == .data && placement[number(e)] == Self.unplaced {
                placement[number(e)] = Self.placing
                wholeOrder.append(e.frameRef)
            }
            // Where the store copies frames itself, in source order instead: frames back to back in a source
            // image stay so, and go as a few large copies inside the store.
            if writer.copiesInStore { wholeOrder.sort() }
            var records: [FrameRecord] = []
            for (k, f) in wholeOrder.enumerated() {
                let n = frameBase[f.image] + Int(f.frame), r = try record(f)
                placement[n] = base + UInt32(k)
                records.append(r)
                if surviving[n] != r.blockCount { writer.allowSparseFrames() }
            }
            var packedIndex = 0
            var packed: [[MergeWorkers.Segment]] = []
            for e in window {
                switch e.kind {
                case .zero, .unreadable, .free:
                    try writer.addExtent(block: e.firstBlock, count: e.blockCount, kind: e.kind)
                case .data where placement[number(e)] != Self.repacked:
                    try writer.addExtent(block: e.firstBlock, count: e.blockCount, kind: .data, frame: placement[number(e)], frameBlock: e.frameBlock)
                case .data:
                    // Packed blocks may straddle two new frames.
                    var taken = 0
                    while taken < Int(e.blockCount) {
                        let frame = Int(base) + wholeOrder.count + packedIndex / blocksPerFrame
                        let at = packedIndex % blocksPerFrame
                        let n = min(Int(e.blockCount) - taken, blocksPerFrame - at)
                        try writer.addExtent(
                            block: e.firstBlock + UInt64(taken), count: UInt32(n), kind: .data, frame: UInt32(frame), frameBlock: UInt32(at))
                        if at == 0 { packed.append([]) }
                        packed[packed.count - 1].append(MergeWorkers.Segment(frame: e.frameRef, frameBlock: Int(e.frameBlock) + taken, count: n))
                        taken += n
                        packedIndex += n
                    }
                }
            }
            let (offsets, inStore) = try writer.reserveCopiedFrames(records, sources: writer.copiesInStore ? copySources(wholeOrder, records) : [])
            for (k, copied) in inStore.enumerated() where copied {
                framesCopiedInStore += 1
                bytesCopiedInStore += UInt64(records[k].length)
                done += UInt64(records[k].length)
            }
            let workers = MergeWorkers(
                copies: copyRuns(wholeOrder, records, offsets, skipping: inStore), frames: packed, sources: reader, writer: writer, kit: kit)
            try workers.start()
            defer { workers.stop() }
            try workers.drain(into: writer) { done += $0; progress?(min(done, workBytes), workBytes) }
        }
    }

    /// Cuts whole frames, in their order in the merged image, into runs that lie back to back both in one source
    /// image and in the merged image, each at most `copyRun` bytes (or one frame), so each is one read and one write.
    private func copyRuns(_ order: [FrameRef], _ records: [FrameRecord], _ offsets: [UInt64], skipping inStore: [Bool]) -> [MergeWorkers.CopyRun] {
        var runs: [MergeWorkers.CopyRun] = []
        for (k, f) in order.enumerated() where !inStore[k] {
            let r = records[k]
            if k > 0, !inStore[k - 1], var last = runs.last, last.image == f.image, last.frames.upperBound == Int(f.frame), last.bytes + Int(r.length) <= Self.copyRun,
                records[k - 1].offset + UInt64(records[k - 1].length) == r.offset, offsets[k - 1] + UInt64(records[k - 1].length) == offsets[k]
            {
                last.frames = last.frames.lowerBound..<(Int(f.frame) + 1)
                last.bytes += Int(r.length)
                runs[runs.count - 1] = last
            } else {
                runs.append(MergeWorkers.CopyRun(image: f.image, frames: Int(f.frame)..<(Int(f.frame) + 1), target: offsets[k], bytes: Int(r.length)))
            }
        }
        return runs
    }

    /// Whole frames (in source order) cut into runs of one source image, what lies between two of them (frames no
    /// point uses, an index chunk) at most `bridge` bytes: what a store may copy itself, in one piece each.
    private func copySources(_ order: [FrameRef], _ records: [FrameRecord]) -> [ImageWriter.CopySource] {
        var sources: [ImageWriter.CopySource] = []
        for (k, f) in order.enumerated() {
            let end = k > 0 ? records[k - 1].offset + UInt64(records[k - 1].length) : 0
            if k > 0, let last = sources.last, order[k - 1].image == f.image, order[k - 1].frame < f.frame,
                records[k].offset >= end, records[k].offset - end <= Self.bridge
            {
                sources[sources.count - 1].range = last.range.lowerBound..<(k + 1)
            } else {
                sources.append(ImageWriter.CopySource(object: self.sources[f.image].object, range: k..<(k + 1)))
            }
        }
        return sources
    }

    /// The most bytes between two whole frames of an image that a copy inside the store carries along (unused in
    /// the merged image) rather than cut the copy in two: a copy must be at least 5 MiB, so cut ones tend to be
    /// downloaded instead.
    static let bridge: UInt64 = 2 << 20

    /// The most bytes one copy job reads and writes at once: small enough to stay in a core's cache between the
    /// checksum and the write, large enough that a run costs two system calls.
    static let copyRun = 1 << 20
}
