// The merge's data path, on worker threads: copying whole frames and re-packing the rest. Whole frames sit first
// in the merged image at offsets known in advance, so each worker copies runs of them on its own (read, check
// every frame's checksum, write in place: no trip through the coordinator, and as many copies at once as there
// are cores). The surviving blocks of partly overwritten frames are gathered, in block order, into new frames
// that workers build and compress; finished ones wait in a small window of slots and the coordinator appends
// them in order after the whole frames. A re-packing worker takes a re-pack job first when a slot is free (the
// coordinator can then append while the copies go on), a copy otherwise; see `repackers` for how many re-pack.
// The source frames being re-packed are read through one frame cache all the workers share (checksum and
// decompression once a frame, by whichever worker wants it first: in a bucket every read is a download), and
// each block taken is checked against its hash. Writes of copied runs are serialised (`ImageWriter.writeReserved`).
import StrataCodec
import StrataFormat
import StrataIO

final class MergeWorkers: @unchecked Sendable {  // shared state is guarded by the run's lock; a buffer is a worker's alone between taking it and publishing it
    struct Segment {
        var frame: FrameRef
        var frameBlock: Int
        var count: Int
    }

    /// Whole frames lying back to back in one source image, copied to `target` in the merged image.
    struct CopyRun {
        var image: Int
        var frames: Range<Int>
        var target: UInt64
        var bytes: Int
    }

    /// What the workers work with, made once a merge and used window after window: frame buffers, each worker's
    /// compressor and copy buffer, and the frame cache they share (frames that span windows stay decoded).
    final class Kit {
        let buffers: FrameBuffers
        let compressors: [FrameCompressor]
        let cache: SharedFrameCache
        let copyBuffers: [AlignedSlab]

        init(sources: [ImageFile], level: Int32, threads: Int, keys: ChainKeys?, subframeBytes: Int) throws {
            let blockSize = Int(sources[0].header.blockSize)
            buffers = FrameBuffers(blockSize: blockSize, count: 2 * threads + 2, keys: keys, subframes: sources.last!.header.isSeekable, subframeBytes: subframeBytes)
            compressors = try (0..<threads).map { _ in try FrameCompressor(level: level) }
            // Surviving blocks interleave across the source images in block order, so the packed frames being
            // built draw on about one live frame per image each: room for two per image (bounded, ~1 MiB each),
            // or frames get read and decoded over and over, and one a worker for the frame it is loading.
            // (Mapped memory: what is never used costs nothing.)
            let entries = min(2 * (sources.count + 1), 48) + threads
            let largest = FrameReader(sources).largest
            cache = SharedFrameCache(bytes: 0, maxStored: largest.stored, maxBlocks: largest.blocks, blockSize: blockSize, minEntries: entries)
            copyBuffers = (0..<threads).map { _ in AlignedSlab(slotSize: MergePlan.copyRun + largest.stored, slotCount: 1, alignment: 64) }
        }
    }

    private let copies: [CopyRun]
    private let frames: [[Segment]]
    private let sources: FrameReader
    private let writer: ImageWriter

    /// The workers, the first error, and the lock of what follows.
    private let stages = PipelineRun()
    private var freeSlots: [Int]
    private var nextFrame = 0
    private var nextCopy = 0
    private var copiedBytes: UInt64 = 0
    private var copiesDone = 0
    private var finished: [Int: (buffer: Int, frame: SealedFrame)] = [:]
    private var stopping = false

    private let kit: Kit
    private var buffers: FrameBuffers { kit.buffers }
    private var blockSize: Int { kit.buffers.blockSize }
    private var threads: Int { kit.compressors.count }

    init(copies: [CopyRun], frames: [[Segment]], sources: FrameReader, writer: ImageWriter, kit: Kit) {
        self.copies = copies
        self.frames = frames
        self.sources = sources
        self.writer = writer
        self.kit = kit
        freeSlots = Array(0..<kit.buffers.count)
    }

    func start() throws {
        guard !frames.isEmpty || !copies.isEmpty else { return }
        for i in 0..<min(threads, frames.count + copies.count) {
            stages.spawn("strata-merge-\(i)") { try self.work(i) }
        }
    }

    /// Appends every re-packed frame, in order, as workers finish them, then waits for the copies. `progress`
    /// gets the bytes copied or re-packed since its last call.
    func drain(into writer: ImageWriter, progress: (UInt64) -> Void) throws {
        defer { stop() }
        var reported: UInt64 = 0
        var k = 0
        while true {
            // The next frame in order once built, or the copies' progress, or the end.
            let (copied, f, done) = try stages.wait(for: { () -> (UInt64, (buffer: Int, frame: SealedFrame)?, Bool)? in
                let ready = k < frames.count ? finished[k] != nil : copiesDone == copies.count
                guard ready || copiedBytes != reported else { return nil }
                let f = k < frames.count ? finished.removeValue(forKey: k) : nil
                return (copiedBytes, f, k >= frames.count && copiesDone == copies.count)
            })
            progress(copied - reported)
            reported = copied
            if let f {
                _ = try writer.appendFrame(f.frame)
                progress(UInt64(f.frame.blockCount * blockSize))
                stages.publish { freeSlots.append(f.buffer) }
                k += 1
            }
            if done { return }
        }
    }

    /// Stops the workers and waits for them; safe to call more than once.
    func stop() {
        stages.publish { stopping = true }
        stages.join()
    }

    private enum Job {
        case repack(Int, slot: Int)
        case copy(Int)
    }

    /// Workers that take re-pack jobs while there are copies left: one per four workers, the rest copying (the
    /// appends wait on the packed frames in order, the copies on nothing), and all of them re-pack once the
    /// copies are done.
    private var repackers: Int { max(1, threads / 4) }

    /// The worker's next job; nil once there are none, or the merge is stopping.
    private func nextJob(worker: Int) -> Job? {
        let next = try? stages.wait(for: { () -> Job?? in
            if stopping { return .some(nil) }
            if nextFrame < frames.count, worker < repackers || nextCopy >= copies.count, let slot = freeSlots.popLast() {
                nextFrame += 1
                return .repack(nextFrame - 1, slot: slot)
            }
            if nextCopy < copies.count {
                nextCopy += 1
                return .copy(nextCopy - 1)
            }
            return nextFrame >= frames.count ? .some(nil) : nil
        })
        return next ?? nil
    }

    private func work(_ worker: Int) throws {
        let (compressor, copyBuffer) = (kit.compressors[worker], kit.copyBuffers[worker])
        while let job = nextJob(worker: worker) {
            switch job {
            case .repack(let k, let slot):
                let result = try build(k, slot: slot, compressor: compressor)
                stages.publish { finished[k] = result }
            case .copy(let c):
                try copy(copies[c], through: copyBuffer.base)
                stages.publish {
                    copiedBytes += UInt64(copies[c].bytes)
                    copiesDone += 1
                }
            }
        }
    }

    /// Reads a run of whole frames, checks each against its checksum and writes the run into its place.
    private func copy(_ run: CopyRun, through buffer: UnsafeMutableRawPointer) throws {
        let image = sources.images[run.image]!
        let start = try image.index.frame(UInt32(run.frames.lowerBound)).offset
        let end = start + UInt64(try image.object.read(into: buffer, count: run.bytes, at: start))
        for f in run.frames {
            let ref = FrameRef(image: run.image, frame: UInt32(f))
            let r = try image.index.frame(UInt32(f))
            try sources.arrived(ref, bytes: end > r.offset ? Int(min(UInt64(r.length), end - r.offset)) : 0)
            try sources.check(ref, stored: buffer + Int(r.offset - start), .checksum)
        }
        try writer.writeReserved(buffer, count: run.bytes, at: run.target)
    }

    private func build(_ k: Int, slot: Int, compressor: FrameCompressor) throws -> (buffer: Int, frame: SealedFrame) {
        var fill = 0
        for s in frames[k] {
            let entry = try kit.cache.get(s.frame, of: sources)
            defer { kit.cache.release(entry, blocksTaken: s.count) }
            // Each surviving block is in exactly one segment: checked here, and dead blocks are never hashed.
            try sources.checkBlocks(s.frame, s.frameBlock..<(s.frameBlock + s.count), stored: entry.hashes, decoded: entry.decoded)
            buffers.block(slot, fill).copyMemory(from: entry.decoded + s.frameBlock * blockSize, byteCount: s.count * blockSize)
            buffers.hash(slot, fill).copyMemory(from: entry.hashes + s.frameBlock * 16, byteCount: s.count * 16)
            fill += s.count
        }
        return (slot, buffers.seal(slot, blockCount: fill, compressor: compressor))
    }
}
