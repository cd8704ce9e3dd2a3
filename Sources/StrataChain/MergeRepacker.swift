// Re-packing for merges, in parallel: the surviving blocks of partly overwritten frames are gathered, in block
// order, into new frames that worker threads build and compress while the coordinator is still copying whole
// frames. Finished frames wait in a small window of slots and are appended in order. Each worker decodes the
// source frames it needs (checksum, decompression, every block against its hash) into a cache of its own.
import Foundation
import StrataCodec
import StrataFormat
import StrataIO

final class MergeRepacker {
    struct Segment {
        var key: UInt64  // image << 32 | frame
        var frameBlock: Int
        var count: Int
    }

    private let frames: [[Segment]]
    private let sources: [ImageFile]
    private let blockSize: Int
    private let level: Int32
    private let threads: Int
    private let buffers: FrameBuffers
    private let maxStored: Int

    private let condition = NSCondition()
    private var freeSlots: [Int]
    private var nextFrame = 0
    private var finished: [Int: (buffer: Int, frame: SealedFrame)] = [:]
    private var stopping = false
    private let failure = FirstError()
    private let group = ThreadGroup()

    init(frames: [[Segment]], sources: [ImageFile], blockSize: Int, level: Int32, threads: Int) {
        self.frames = frames
        self.sources = sources
        self.blockSize = blockSize
        self.level = level
        self.threads = max(1, threads)
        buffers = FrameBuffers(blockSize: blockSize, count: 2 * self.threads + 2)
        freeSlots = Array(0..<buffers.count)
        maxStored = Set(frames.flatMap { $0.map(\.key) }).map {
            Int(sources[Int($0 >> 32)].index.frames[Int($0 & 0xFFFF_FFFF)].length)
        }.max() ?? 0
    }

    func start() throws {
        guard !frames.isEmpty else { return }
        for i in 0..<threads {
            let compressor = try FrameCompressor(level: level)
            let decompressor = try FrameDecompressor()
            group.spawn("strata-repack-\(i)") { self.work(compressor, decompressor) }
        }
    }

    /// Appends every re-packed frame, in order, as workers finish them.
    func drain(into writer: ImageWriter, progress: (UInt64) -> Void) throws {
        defer { stop() }
        for k in 0..<frames.count {
            condition.lock()
            while finished[k] == nil && failure.error == nil { condition.wait() }
            if let e = failure.error {
                condition.unlock()
                throw e
            }
            let f = finished.removeValue(forKey: k)!
            condition.unlock()
            _ = try writer.appendFrame(f.frame)
            progress(UInt64(f.frame.blockCount * blockSize))
            condition.publish { freeSlots.append(f.buffer) }
        }
    }

    /// Stops the workers and waits for them; safe to call more than once.
    func stop() {
        condition.publish { stopping = true }
        group.join()
    }

    private func work(_ compressor: FrameCompressor, _ decompressor: FrameDecompressor) {
        // Surviving blocks interleave across the source images in block order, so a packed frame draws on about
        // one live frame per image: cache that many (bounded, ~2 MiB each) or frames get decoded over and over.
        let capacity = min(sources.count + 1, max(4, 48 / threads))
        let cache = DecodedFrames(capacity: capacity, stored: maxStored, decoded: buffers.blocksPerFrame * blockSize)
        while true {
            condition.lock()
            while freeSlots.isEmpty && !stopping && failure.error == nil && nextFrame < frames.count { condition.wait() }
            if stopping || failure.error != nil || nextFrame >= frames.count {
                condition.unlock()
                return
            }
            let k = nextFrame
            nextFrame += 1
            let slot = freeSlots.removeLast()
            condition.unlock()
            do {
                let result = try build(k, slot: slot, cache: cache, compressor: compressor, decompressor: decompressor)
                condition.publish { finished[k] = result }
            } catch {
                failure.record(error)
                condition.publish {}
                return
            }
        }
    }

    private func build(
        _ k: Int, slot: Int, cache: DecodedFrames, compressor: FrameCompressor, decompressor: FrameDecompressor
    ) throws -> (buffer: Int, frame: SealedFrame) {
        var fill = 0
        for s in frames[k] {
            let entry = try cache.get(s.key) { stored, decoded in try self.decode(s.key, stored: stored, decoded: decoded, decompressor: decompressor) }
            buffers.block(slot, fill).copyMemory(from: entry.decoded + s.frameBlock * blockSize, byteCount: s.count * blockSize)
            buffers.hash(slot, fill).copyMemory(from: entry.stored + s.frameBlock * 16, byteCount: s.count * 16)
            fill += s.count
        }
        return (slot, buffers.seal(slot, blockCount: fill, compressor: compressor))
    }

    /// Reads one source frame and checks it (checksum, decompression, every block against its stored hash).
    private func decode(_ key: UInt64, stored: UnsafeMutableRawPointer, decoded: UnsafeMutableRawPointer, decompressor: FrameDecompressor) throws {
        let image = sources[Int(key >> 32)]
        let frame = UInt32(key & 0xFFFF_FFFF)
        let r = image.index.frames[Int(frame)]
        let n = try Sys.preadFully(image.fd, stored, Int(r.length), r.offset, path: image.path)
        guard n == Int(r.length) else { throw ChainError.damaged(file: image.name, detail: "frame \(frame) is cut short") }
        try image.decode(frame: frame, stored: stored, into: decoded, decompressor: decompressor)
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
