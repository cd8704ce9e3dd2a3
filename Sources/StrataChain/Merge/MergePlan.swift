// What a merge writes, decided before a byte is written. The images of the range are resolved newest-wins; each
// source frame is then either copied whole or re-packed. A frame is copied whole, byte for byte, when at least
// `keepWholeLive` of its blocks survive (the dead ones stay in it unused: the image says so with the
// sparseFrames feature bit), and re-packed otherwise: nightly rewrites leave a few dead pages in most frames,
// and re-compressing all the live blocks around them made a merge cost CPU, not I/O (12x a copy, issue #3).
// So a merged image holds at most 1/3 more than its live data. Whole frames are written first, in order of
// first use, then the re-packed ones, so every frame's number is known when the extents are planned.
import StrataCodec
import StrataFormat
import StrataIO

final class MergePlan {
    private let sources: [ImageFile]
    private let resolved: [ResolvedExtent]
    private let blockSize: Int
    private let blocksPerFrame: Int
    /// Source frames numbered across the images: image i's frame f is `frameBase[i] + f`.
    private let frameBase: [Int]
    /// Blocks of each source frame that survive, by that number.
    private var surviving: [Int]
    private(set) var framesCopied = 0
    private(set) var framesRepacked = 0

    init(sources: [ImageFile]) {
        self.sources = sources
        resolved = ExtentResolver.resolve(sources.map(\.index.extents))
        blockSize = Int(sources[0].header.blockSize)
        blocksPerFrame = FrameBuffers.blocksPerFrame(blockSize: blockSize)
        var base = [Int]()
        var total = 0
        for s in sources {
            base.append(total)
            total += s.index.frames.count
        }
        frameBase = base
        surviving = Array(repeating: 0, count: total)
        for e in resolved where e.kind == .data { surviving[number(e)] += Int(e.blockCount) }
    }

    private func number(_ e: ResolvedExtent) -> Int { frameBase[Int(e.image)] + Int(e.frame) }
    private func record(_ f: FrameRef) -> FrameRecord { sources[f.image].index.frames[Int(f.frame)] }
    private func record(_ e: ResolvedExtent) -> FrameRecord { sources[Int(e.image)].index.frames[Int(e.frame)] }
    /// The share of a frame's blocks that must survive for it to be copied whole: 3/4.
    static let keepWholeLive = (numerator: 3, denominator: 4)
    private func isWhole(_ e: ResolvedExtent) -> Bool {
        surviving[number(e)] * Self.keepWholeLive.denominator >= Int(record(e).blockCount) * Self.keepWholeLive.numerator
    }

    /// The merged image is never larger than the frames it draws from.
    var bytesUpperBound: UInt64 {
        var bytes = UInt64(resolved.count * ExtentRecord.encodedSize)
        for (i, source) in sources.enumerated() {
            for (f, r) in source.index.frames.enumerated() where surviving[frameBase[i] + f] > 0 {
                bytes += UInt64(r.length) + UInt64(FrameRecord.encodedSize)
            }
        }
        return bytes
    }

    func write(to writer: ImageWriter, level: Int32, threads: Int, progress: ProgressHandler?) throws {
        // Frame numbers: whole frames in order of first use, then packed frames in block order.
        var wholeOrder: [FrameRef] = []
        var wholeNumber = [UInt32](repeating: .max, count: surviving.count)
        var packedBlocks = 0
        var sparse = false
        for e in resolved where e.kind == .data {
            if isWhole(e) {
                let n = number(e)
                if wholeNumber[n] == .max {
                    wholeNumber[n] = UInt32(wholeOrder.count)
                    wholeOrder.append(e.frameRef)
                    sparse = sparse || surviving[n] != Int(record(e).blockCount)
                }
            } else {
                packedBlocks += Int(e.blockCount)
            }
        }
        framesCopied = wholeOrder.count
        if sparse { writer.allowSparseFrames() }
        var packedIndex = 0
        var packed: [[MergeWorkers.Segment]] = []
        for e in resolved {
            switch e.kind {
            case .zero, .unreadable:
                writer.addExtent(block: e.firstBlock, count: e.blockCount, kind: e.kind)
            case .data:
                let whole = wholeNumber[number(e)]
                if whole != .max {
                    writer.addExtent(block: e.firstBlock, count: e.blockCount, kind: .data, frame: whole, frameBlock: e.frameBlock)
                } else {
                    // Packed blocks may straddle two new frames.
                    var done = 0
                    while done < Int(e.blockCount) {
                        let frame = wholeOrder.count + packedIndex / blocksPerFrame
                        let at = packedIndex % blocksPerFrame
                        let n = min(Int(e.blockCount) - done, blocksPerFrame - at)
                        writer.addExtent(block: e.firstBlock + UInt64(done), count: UInt32(n), kind: .data, frame: UInt32(frame), frameBlock: UInt32(at))
                        if at == 0 { packed.append([]) }
                        packed[packed.count - 1].append(MergeWorkers.Segment(frame: e.frameRef, frameBlock: Int(e.frameBlock) + done, count: n))
                        done += n
                        packedIndex += n
                    }
                }
            }
        }
        let total = wholeOrder.reduce(UInt64(0)) { $0 + UInt64(record($1).length) } + UInt64(packedBlocks * blockSize)
        var done: UInt64 = 0
        let start = writer.reserveCopiedFrames(wholeOrder.map(record))
        let workers = MergeWorkers(
            copies: copyRuns(wholeOrder, at: start), frames: packed, sources: sources, writer: writer, level: level, threads: threads)
        framesRepacked = workers.sourceFramesRepacked
        try workers.start()
        defer { workers.stop() }
        try workers.drain(into: writer) { done += $0; progress?(min(done, total), total) }
    }

    /// Cuts the whole frames, in their order in the merged image from `start`, into runs that lie back to back
    /// in one source image, each at most `copyRun` bytes (or one frame), so each is one read and one write.
    private func copyRuns(_ order: [FrameRef], at start: UInt64) -> [MergeWorkers.CopyRun] {
        var runs: [MergeWorkers.CopyRun] = []
        var target = start
        for f in order {
            let image = f.image, frame = Int(f.frame), r = record(f)
            if var last = runs.last, last.image == image, last.frames.upperBound == frame, last.bytes + Int(r.length) <= Self.copyRun,
                sources[image].index.frames[frame - 1].offset + UInt64(sources[image].index.frames[frame - 1].length) == r.offset
            {
                last.frames = last.frames.lowerBound..<(frame + 1)
                last.bytes += Int(r.length)
                runs[runs.count - 1] = last
            } else {
                runs.append(MergeWorkers.CopyRun(image: image, frames: frame..<(frame + 1), target: target, bytes: Int(r.length)))
            }
            target += UInt64(r.length)
        }
        return runs
    }

    /// The most bytes one copy job reads and writes at once: small enough to stay in a core's cache between the
    /// checksum and the write, large enough that a run costs two system calls.
    static let copyRun = 1 << 20
}
