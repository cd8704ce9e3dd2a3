// verify's frame scan: reads the frames to check in file order on an I/O thread (the store's read queue:
// io_uring or pread, many in flight) and checks each on a worker thread through the frame reader; a damaged
// frame is recorded and the scan goes on.
import StrataCodec
import StrataFormat
import StrataIO

/// The frames a scan checks, in order: a list (a point's frames), or every frame of every opened image, named by
/// position and never held (a whole-chain verify of a large chain would otherwise hold 16 bytes a frame).
struct FrameWork {
    private let list: [FrameRef]?
    /// For every frame of every image: the position of each image's first frame.
    private let starts: [Int]
    let count: Int
    var isEmpty: Bool { count == 0 }

    init(_ list: [FrameRef]) {
        self.list = list
        starts = []
        count = list.count
    }

    /// Every frame of the images that opened.
    init(allOf images: [ImageFile?]) {
        list = nil
        var starts: [Int] = [], total = 0
        for image in images {
            starts.append(total)
            total += image?.index.frameCount ?? 0
        }
        self.starts = starts
        count = total
    }

    subscript(i: Int) -> FrameRef {
        if let list { return list[i] }
        var lo = 0, hi = starts.count - 1  // the last image starting at or before i
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if starts[mid] <= i { lo = mid } else { hi = mid - 1 }
        }
        return FrameRef(image: lo, frame: UInt32(i - starts[lo]))
    }
}

/// Reads the frames to check in file order on an I/O thread (io_uring or pread, many in flight) and checks
/// them on worker threads; a damaged frame is recorded and the scan goes on.
final class FrameScan: @unchecked Sendable {  // shared state is guarded by the run's lock; a slot passes between the reader and a checker through the job queue
    private let frames: FrameReader
    private let work: FrameWork
    private let store: ChainStore
    private let options: VerifyOptions
    private let progress: ProgressHandler?
    private let slots: AlignedSlab
    private let slotWork: PerSlot<Int>
    private let maxBlocks: Int
    private let blockSize: Int

    /// The checking threads, and the lock of what follows.
    private let stages = PipelineRun()
    private var freeSlots: [Int]
    private let jobs = WorkQueue<Int>()  // slots whose frame has been read
    private var damaged: [FrameRef: String] = [:]
    private(set) var bytesRead: UInt64 = 0
    private let totalBytes: UInt64

    init(frames: FrameReader, work: FrameWork, store: ChainStore, options: VerifyOptions, progress: ProgressHandler?) {
        self.frames = frames
        self.work = work
        self.store = store
        self.options = options
        self.progress = progress
        let largest = frames.largest
        maxBlocks = largest.blocks
        blockSize = Int(frames.images.compactMap { $0?.header.blockSize }.first ?? 4096)
        var total: UInt64 = 0
        for i in 0..<work.count { total += UInt64((try? frames.record(work[i]).length) ?? 0) }
        totalBytes = total
        let slotCount = options.queueDepth + 2 * options.threads
        slots = AlignedSlab(slotSize: max(largest.stored, 1), slotCount: slotCount)
        slotWork = PerSlot(repeating: 0, count: slotCount)
        freeSlots = Array((0..<slotCount).reversed())
    }

    /// Reads and checks every frame of the work; returns the damaged ones with what is wrong with each.
    func run() throws -> [FrameRef: String] {
        guard !work.isEmpty else { return [:] }
        let reads: ObjectReads
        do { (reads, _) = try store.reads(engine: options.engine, depth: options.queueDepth, tags: slots.slotCount) } catch let e as IOError {
            throw ChainError.engineUnavailable("io_uring is unavailable here (\(e.reason))")
        }
        let decompressors = try (0..<options.threads).map { _ in try FrameDecompressor() }  // before any thread starts
        for (i, decompressor) in decompressors.enumerated() {
            stages.spawn("strata-verify-\(i)") { self.check(decompressor) }
        }
        try stages.run({ try readFrames(reads) }, finish: { jobs.close() })
        return damaged
    }

    private func readFrames(_ pump: ObjectReads) throws {
        func reap() {
            let done = pump.next()
            let f = work[slotWork[done.tag]]
            do {
                try frames.arrived(f, bytes: done.bytes, error: done.error)
                stages.publish { bytesRead += UInt64(done.bytes) }
                jobs.post(done.tag)
            } catch {
                stages.publish {
                    damaged[f] = Verify.describe(error)
                    freeSlots.append(done.tag)
                }
            }
        }
        for w in 0..<work.count {
            let slot = try stages.wait(for: { freeSlots.popLast() }, pending: { pump.inFlight > 0 }, work: reap)
            slotWork[slot] = w
            do { try frames.startRead(work[w], into: slots.slot(slot), reads: pump, tag: slot) } catch {
                stages.publish {
                    damaged[work[w]] = Verify.describe(error)
                    freeSlots.append(slot)
                }
                continue
            }
            if pump.inFlight >= options.queueDepth { reap() }
            if w % 64 == 0 { progress?(min(bytesRead, totalBytes), totalBytes) }
        }
        while pump.inFlight > 0 { reap() }
        progress?(totalBytes, totalBytes)
    }

    private func check(_ decompressor: FrameDecompressor) {
        let decoded = UnsafeMutableRawPointer.allocate(byteCount: max(1, maxBlocks * blockSize), alignment: 64)
        defer { decoded.deallocate() }
        while let slot = jobs.next() {
            let f = work[slotWork[slot]]
            var problem: String?
            do {
                try frames.check(f, stored: slots.slot(slot), options.checksumsOnly ? .checksum : .everyBlock, decoded: decoded, decompressor: decompressor)
            } catch {
                problem = Verify.describe(error)
            }
            stages.publish {
                if let problem { damaged[f] = problem }
                freeSlots.append(slot)
            }
        }
    }
}
