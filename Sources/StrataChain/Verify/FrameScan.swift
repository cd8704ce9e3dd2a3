// verify's frame scan: reads the frames to check in file order on an I/O thread (the store's read queue:
// io_uring or pread, many in flight) and checks each on a worker thread through the frame reader; a damaged
// frame is recorded and the scan goes on.
import StrataCodec
import StrataFormat
import StrataIO

/// Reads the frames to check in file order on an I/O thread (io_uring or pread, many in flight) and checks
/// them on worker threads; a damaged frame is recorded and the scan goes on.
final class FrameScan {
    private let frames: FrameReader
    private let work: [FrameRef]
    private let store: ChainStore
    private let options: VerifyOptions
    private let progress: ProgressHandler?
    private let slots: AlignedSlab
    private let slotWork: PerSlot<Int>
    private let maxBlocks: Int
    private let blockSize: Int

    private let condition = Condition()
    private var freeSlots: [Int]
    private let jobs = WorkQueue<Int>()  // slots whose frame has been read
    private var damaged: [FrameRef: String] = [:]
    private(set) var bytesRead: UInt64 = 0
    private let totalBytes: UInt64

    init(frames: FrameReader, work: [FrameRef], store: ChainStore, options: VerifyOptions, progress: ProgressHandler?) {
        self.frames = frames
        self.work = work
        self.store = store
        self.options = options
        self.progress = progress
        let largest = frames.largest
        maxBlocks = largest.blocks
        blockSize = Int(frames.images.compactMap { $0?.header.blockSize }.first ?? 4096)
        totalBytes = (try? work.reduce(0) { $0 + UInt64(try frames.record($1).length) }) ?? 0
        let slotCount = options.queueDepth + 2 * options.threads
        slots = AlignedSlab(slotSize: max(largest.stored, 1), slotCount: slotCount)
        slotWork = PerSlot(repeating: 0, count: slotCount)
        freeSlots = Array((0..<slotCount).reversed())
    }

    /// Reads and checks every frame of the work; returns the damaged ones with what is wrong with each.
    func run() throws -> [FrameRef: String] {
        guard !work.isEmpty else { return [:] }
        let (queue, _): (IOQueue, String?)
        do { (queue, _) = try store.readQueue(engine: options.engine, depth: options.queueDepth) } catch let e as IOError {
            throw ChainError.engineUnavailable("io_uring is unavailable here (\(e.reason))")
        }
        let decompressors = try (0..<options.threads).map { _ in try FrameDecompressor() }  // before any thread starts
        let group = ThreadGroup()
        for (i, decompressor) in decompressors.enumerated() {
            group.spawn("strata-verify-\(i)") { self.check(decompressor) }
        }
        readFrames(queue)
        group.join()
        return damaged
    }

    private func readFrames(_ queue: IOQueue) {
        let pump = IOPump(queue: queue, maxTags: slots.slotCount)
        func reap() {
            let done = pump.nextOutcome()
            let f = work[slotWork[done.tag]]
            do {
                try frames.arrived(f, bytes: done.bytes, error: done.error)
                condition.publish { bytesRead += UInt64(done.bytes) }
                jobs.post(done.tag)
            } catch {
                condition.publish {
                    damaged[f] = Verify.describe(error)
                    freeSlots.append(done.tag)
                }
            }
        }
        for w in 0..<work.count {
            var slot = -1
            while slot < 0 {
                condition.lock()
                if let s = freeSlots.popLast() {
                    slot = s
                } else if pump.inFlight == 0 {
                    condition.wait()
                }
                condition.unlock()
                if slot < 0 && pump.inFlight > 0 { reap() }
            }
            slotWork[slot] = w
            do { try frames.startRead(work[w], into: slots.slot(slot), pump: pump, tag: slot) } catch {
                condition.publish {
                    damaged[work[w]] = Verify.describe(error)
                    freeSlots.append(slot)
                }
                continue
            }
            if pump.inFlight >= options.queueDepth { reap() }
            if w % 64 == 0 { progress?(min(bytesRead, totalBytes), totalBytes) }
        }
        while pump.inFlight > 0 { reap() }
        jobs.close()
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
            condition.publish {
                if let problem { damaged[f] = problem }
                freeSlots.append(slot)
            }
        }
    }
}
