// The merge's data path, on worker threads: copying whole frames and re-packing the rest. Whole frames sit first
// in the merged image at offsets known in advance, so each worker copies runs of them on its own (read, check
// every frame's checksum, write in place: no trip through the coordinator, and as many copies at once as there
// are cores). The surviving blocks of partly overwritten frames are gathered, in block order, into new frames
// that workers build and compress; finished ones wait in a small window of slots and the coordinator appends
// them in order after the whole frames. A re-packing worker takes a re-pack job first when a slot is free (the
// coordinator can then append while the copies go on), a copy otherwise; see `repackers` for how many re-pack.
// Each worker decodes the source frames it needs (checksum, decompression) into a cache of its own, and checks
// each block it takes against its hash. Writes of copied runs are serialised (`ImageWriter.writeReserved`).
import StrataCodec
import StrataFormat
import StrataIO

final class MergeWorkers {
    struct Segment {
        var key: UInt64  // image << 32 | frame
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

    private let copies: [CopyRun]
    private let frames: [[Segment]]
    private let sources: [ImageFile]
    private let writer: ImageWriter
    private let blockSize: Int
    private let level: Int32
    private let threads: Int
    private let buffers: FrameBuffers
    private let maxStored: Int
    /// How many source frames the re-packed frames draw on.
    let sourceFramesRepacked: Int
    private let largestRun: Int

    private let condition = Condition()
    private var freeSlots: [Int]
    private var nextFrame = 0
    private var nextCopy = 0
    private var copiedBytes: UInt64 = 0
    private var copiesDone = 0
    private var finished: [Int: (buffer: Int, frame: SealedFrame)] = [:]
    private var stopping = false
    private let failure = FirstError()
    private let group = ThreadGroup()

    init(copies: [CopyRun], frames: [[Segment]], sources: [ImageFile], writer: ImageWriter, level: Int32, threads: Int) {
        self.copies = copies
        self.frames = frames
        self.sources = sources
        self.writer = writer
        self.level = level
        self.threads = max(1, threads)
        blockSize = Int(sources[0].header.blockSize)
        buffers = FrameBuffers(blockSize: blockSize, count: 2 * self.threads + 2)
        freeSlots = Array(0..<buffers.count)
        let repacked = Set(frames.flatMap { $0.map(\.key) })
        sourceFramesRepacked = repacked.count
        maxStored = repacked.map { Int(sources[Int($0 >> 32)].index.frames[Int($0 & 0xFFFF_FFFF)].length) }.max() ?? 0
        largestRun = copies.map(\.bytes).max() ?? 0
    }

    func start() throws {
        guard !frames.isEmpty || !copies.isEmpty else { return }
        for i in 0..<min(threads, frames.count + copies.count) {
            let compressor = try FrameCompressor(level: level)
            let decompressor = try FrameDecompressor()
            group.spawn("strata-merge-\(i)") { self.work(i, compressor, decompressor) }
        }
    }

    /// Appends every re-packed frame, in order, as workers finish them, then waits for the copies. `progress`
    /// gets the bytes copied or re-packed since its last call.
    func drain(into writer: ImageWriter, progress: (UInt64) -> Void) throws {
        defer { stop() }
        var reported: UInt64 = 0
        var k = 0
        while true {
            condition.lock()
            while (k < frames.count ? finished[k] == nil : copiesDone < copies.count) && failure.error == nil
                && copiedBytes == reported
            {
                condition.wait()
            }
            if let e = failure.error {
                condition.unlock()
                throw e
            }
            let copied = copiedBytes
            let f = k < frames.count ? finished.removeValue(forKey: k) : nil
            let done = k >= frames.count && copiesDone == copies.count
            condition.unlock()
            progress(copied - reported)
            reported = copied
            if let f {
                _ = try writer.appendFrame(f.frame)
                progress(UInt64(f.frame.blockCount * blockSize))
                condition.publish { freeSlots.append(f.buffer) }
                k += 1
            }
            if done { return }
        }
    }

    /// Stops the workers and waits for them; safe to call more than once.
    func stop() {
        condition.publish { stopping = true }
        group.join()
    }

    private enum Job {
        case repack(Int, slot: Int)
        case copy(Int)
    }

    /// Workers that take re-pack jobs while there are copies left. Consecutive packed frames draw on the same
    /// source frames, so packed frames spread over several workers get their sources decoded once by each
    /// (measured: 137 decodes of 76 source frames with two workers alternating); one re-packer per four workers,
    /// the rest copying, keeps decoding near once per frame, and all of them re-pack once the copies are done.
    private var repackers: Int { max(1, threads / 4) }

    private func nextJob(worker: Int) -> Job? {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if stopping || failure.error != nil { return nil }
            if nextFrame < frames.count, worker < repackers || nextCopy >= copies.count, let slot = freeSlots.popLast() {
                nextFrame += 1
                return .repack(nextFrame - 1, slot: slot)
            }
            if nextCopy < copies.count {
                nextCopy += 1
                return .copy(nextCopy - 1)
            }
            if nextFrame >= frames.count { return nil }
            condition.wait()
        }
    }

    private func work(_ worker: Int, _ compressor: FrameCompressor, _ decompressor: FrameDecompressor) {
        // Surviving blocks interleave across the source images in block order, so a packed frame draws on about
        // one live frame per image: cache that many (bounded, ~2 MiB each) or frames get decoded over and over.
        let capacity = frames.isEmpty ? 0 : min(sources.count + 1, max(4, 48 / threads))
        let cache = DecodedFrames(capacity: capacity, stored: maxStored, decoded: buffers.blocksPerFrame * blockSize)
        let copyBuffer = AlignedSlab(slotSize: max(largestRun, 1), slotCount: 1, alignment: 64)
        while let job = nextJob(worker: worker) {
            do {
                switch job {
                case .repack(let k, let slot):
                    let result = try build(k, slot: slot, cache: cache, compressor: compressor, decompressor: decompressor)
                    condition.publish { finished[k] = result }
                case .copy(let c):
                    try copy(copies[c], through: copyBuffer.base)
                    condition.publish {
                        copiedBytes += UInt64(copies[c].bytes)
                        copiesDone += 1
                    }
                }
            } catch {
                failure.record(error)
                condition.publish {}
                return
            }
        }
    }

    /// Reads a run of whole frames, checks each against its checksum and writes the run into its place.
    private func copy(_ run: CopyRun, through buffer: UnsafeMutableRawPointer) throws {
        let image = sources[run.image]
        let records = image.index.frames
        let start = records[run.frames.lowerBound].offset
        let n = try Sys.preadFully(image.fd, buffer, run.bytes, start, path: image.path)
        for f in run.frames {
            let r = records[f]
            guard r.offset + UInt64(r.length) <= start + UInt64(n) else {
                throw ChainError.damaged(file: image.name, detail: "frame \(f) is cut short")
            }
            guard Checksum.xxh3(buffer + Int(r.offset - start), count: Int(r.length)) == r.checksum else {
                throw ChainError.corruptData(file: image.name, detail: "frame \(f) at byte \(r.offset) fails its checksum")
            }
        }
        try writer.writeReserved(buffer, count: run.bytes, at: run.target)
    }

    private func build(
        _ k: Int, slot: Int, cache: DecodedFrames, compressor: FrameCompressor, decompressor: FrameDecompressor
    ) throws -> (buffer: Int, frame: SealedFrame) {
        var fill = 0
        for s in frames[k] {
            let entry = try cache.get(s.key) { stored, decoded in try self.decode(s.key, stored: stored, decoded: decoded, decompressor: decompressor) }
            // Each surviving block is in exactly one segment: checked here, and dead blocks are never hashed.
            try sources[Int(s.key >> 32)].checkBlocks(
                s.frameBlock..<(s.frameBlock + s.count), frame: UInt32(s.key & 0xFFFF_FFFF), stored: entry.stored, decoded: entry.decoded)
            buffers.block(slot, fill).copyMemory(from: entry.decoded + s.frameBlock * blockSize, byteCount: s.count * blockSize)
            buffers.hash(slot, fill).copyMemory(from: entry.stored + s.frameBlock * 16, byteCount: s.count * 16)
            fill += s.count
        }
        return (slot, buffers.seal(slot, blockCount: fill, compressor: compressor))
    }

    /// Reads one source frame and checks it (checksum, decompression; `build` checks the blocks it takes).
    private func decode(_ key: UInt64, stored: UnsafeMutableRawPointer, decoded: UnsafeMutableRawPointer, decompressor: FrameDecompressor) throws {
        let image = sources[Int(key >> 32)]
        let frame = UInt32(key & 0xFFFF_FFFF)
        let r = image.index.frames[Int(frame)]
        let n = try Sys.preadFully(image.fd, stored, Int(r.length), r.offset, path: image.path)
        guard n == Int(r.length) else { throw ChainError.damaged(file: image.name, detail: "frame \(frame) is cut short") }
        try image.decode(frame: frame, stored: stored, into: decoded, decompressor: decompressor, checkingBlocks: false)
    }
}
/// A worker's few most recently decoded source frames (stored bytes with their hashes, and decoded blocks).
private final class DecodedFrames {
    private let stored: AlignedSlab
    private let decoded: AlignedSlab
    private var keys: [UInt64?]
    private var age: [Int]
    private var clock = 0

    init(capacity: Int, stored: Int, decoded: Int) {
        self.stored = AlignedSlab(slotSize: max(stored, 1), slotCount: capacity, alignment: 64)
        self.decoded = AlignedSlab(slotSize: decoded, slotCount: capacity, alignment: 64)
        keys = Array(repeating: nil, count: capacity)
        age = Array(repeating: 0, count: capacity)
    }

    func get(_ key: UInt64, fill: (UnsafeMutableRawPointer, UnsafeMutableRawPointer) throws -> Void) throws -> (stored: UnsafeMutableRawPointer, decoded: UnsafeMutableRawPointer) {
        clock += 1
        if let i = keys.firstIndex(of: key) {
            age[i] = clock
            return (stored.slot(i), decoded.slot(i))
        }
        let i = age.indices.min { age[$0] < age[$1] }!
        keys[i] = nil
        try fill(stored.slot(i), decoded.slot(i))
        keys[i] = key
        age[i] = clock
        return (stored.slot(i), decoded.slot(i))
    }
}
