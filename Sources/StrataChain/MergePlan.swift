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
    /// (image << 32 | frame) -> blocks of it that survive.
    private var surviving: [UInt64: Int] = [:]
    private(set) var framesCopied = 0
    private(set) var framesRepacked = 0

    init(sources: [ImageFile]) {
        self.sources = sources
        resolved = ExtentResolver.resolve(sources.map(\.index.extents))
        blockSize = Int(sources[0].header.blockSize)
        blocksPerFrame = FrameBuffers.blocksPerFrame(blockSize: blockSize)
        for e in resolved where e.kind == .data { surviving[key(e), default: 0] += Int(e.blockCount) }
    }

    private func key(_ e: ResolvedExtent) -> UInt64 { UInt64(e.image) << 32 | UInt64(e.frame) }
    private func record(_ k: UInt64) -> FrameRecord { sources[Int(k >> 32)].index.frames[Int(k & 0xFFFF_FFFF)] }
    /// The share of a frame's blocks that must survive for it to be copied whole: 3/4.
    static let keepWholeLive = (numerator: 3, denominator: 4)
    private func isWhole(_ k: UInt64) -> Bool {
        surviving[k]! * Self.keepWholeLive.denominator >= Int(record(k).blockCount) * Self.keepWholeLive.numerator
    }
    private func isFull(_ k: UInt64) -> Bool { surviving[k] == Int(record(k).blockCount) }

    /// The merged image is never larger than the frames it draws from.
    var bytesUpperBound: UInt64 {
        surviving.keys.reduce(UInt64(0)) { $0 + UInt64(record($1).length) } + UInt64(resolved.count * ExtentRecord.encodedSize)
            + UInt64(surviving.count * FrameRecord.encodedSize)
    }

    func write(to writer: ImageWriter, level: Int32, threads: Int, progress: ProgressHandler?) throws {
        // Frame numbers: whole frames in order of first use, then packed frames in block order.
        var wholeOrder: [UInt64] = []
        var wholeNumber: [UInt64: UInt32] = [:]
        var packedBlocks = 0
        for e in resolved where e.kind == .data {
            let k = key(e)
            if isWhole(k) {
                if wholeNumber[k] == nil {
                    wholeNumber[k] = UInt32(wholeOrder.count)
                    wholeOrder.append(k)
                }
            } else {
                packedBlocks += Int(e.blockCount)
            }
        }
        framesCopied = wholeOrder.count
        if wholeOrder.contains(where: { !isFull($0) }) { writer.allowSparseFrames() }
        var packedIndex = 0
        var packed: [[MergeRepacker.Segment]] = []
        for e in resolved {
            switch e.kind {
            case .zero, .unreadable:
                writer.addExtent(block: e.firstBlock, count: e.blockCount, kind: e.kind)
            case .data:
                if let n = wholeNumber[key(e)] {
                    writer.addExtent(block: e.firstBlock, count: e.blockCount, kind: .data, frame: n, frameBlock: e.frameBlock)
                } else {
                    // Packed blocks may straddle two new frames.
                    var done = 0
                    while done < Int(e.blockCount) {
                        let frame = wholeOrder.count + packedIndex / blocksPerFrame
                        let at = packedIndex % blocksPerFrame
                        let n = min(Int(e.blockCount) - done, blocksPerFrame - at)
                        writer.addExtent(block: e.firstBlock + UInt64(done), count: UInt32(n), kind: .data, frame: UInt32(frame), frameBlock: UInt32(at))
                        if at == 0 { packed.append([]) }
                        packed[packed.count - 1].append(MergeRepacker.Segment(key: key(e), frameBlock: Int(e.frameBlock) + done, count: n))
                        done += n
                        packedIndex += n
                    }
                }
            }
        }
        let total = wholeOrder.reduce(UInt64(0)) { $0 + UInt64(record($1).length) } + UInt64(packedBlocks * blockSize)
        var done: UInt64 = 0
        framesRepacked = Set(packed.flatMap { $0.map(\.key) }).count
        // Workers re-pack while this thread copies whole frames; their frames are appended after.
        let repacker = MergeRepacker(
            frames: packed, sources: sources, blockSize: blockSize, level: level, threads: threads)
        try repacker.start()
        defer { repacker.stop() }
        try copyWholeFrames(wholeOrder, to: writer) { done += $0; progress?(done, total) }
        try repacker.drain(into: writer) { done += $0; progress?(min(done, total), total) }
    }

    private func copyWholeFrames(_ order: [UInt64], to writer: ImageWriter, progress: (UInt64) -> Void) throws {
        guard let largest = order.map({ Int(record($0).length) }).max() else { return }
        let buffer = AlignedSlab(slotSize: largest, slotCount: 1)
        for k in order {
            let image = sources[Int(k >> 32)]
            let r = record(k)
            let n = try Sys.preadFully(image.fd, buffer.base, Int(r.length), r.offset, path: image.path)
            guard n == Int(r.length) else { throw ChainError.damaged(file: image.name, detail: "frame \(k & 0xFFFF_FFFF) is cut short") }
            guard Checksum.xxh3(buffer.base, count: n) == r.checksum else {
                throw ChainError.corruptData(file: image.name, detail: "frame \(k & 0xFFFF_FFFF) at byte \(r.offset) fails its checksum")
            }
            _ = try writer.appendFrame(copying: r, from: buffer.base)
            progress(UInt64(r.length))
        }
    }
}
