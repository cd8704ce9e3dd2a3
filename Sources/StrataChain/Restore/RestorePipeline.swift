// The restore data path, one pass in block order:
//
//   I/O thread     reads the frames the resolved extents need, in order of first use, into slots (io_uring or
//                  pread), never more than the slots allow.
//   workers (N)    check each frame's checksum, decompress it, and check every block against its stored hash.
//   coordinator    (the calling thread) walks the resolved extents, copies blocks into 1 MiB output windows and
//                  writes them in order with large aligned writes (O_DIRECT where allowed); zero ranges become
//                  holes in a file and BLKZEROOUT on a device.
//
// A slot is freed when the coordinator passes the last extent that uses its frame. The plan knows the most
// frames ever in use at once, so `that + prefetch` slots always suffice and the reader never deadlocks.
import StrataCodec
import StrataFormat
import StrataIO

final class RestorePipeline {
    private let frames: FrameReader
    private let resolved: [ResolvedExtent]
    private let sourceSize: UInt64
    private let blockSize: Int
    private let target: RestoreTarget
    private let readQueue: IOQueue
    private let writeQueue: IOQueue
    private let options: RestoreOptions
    private let progress: ProgressHandler?

    // Fetch plan: frames in order of first use, and the extent after which each is no longer needed.
    private let fetchFrame: [FrameRef]
    private let fetchLastUse: [Int]
    private let extentFetch: [Int32]

    private let slots: AlignedSlab
    private let decodedOffset: Int
    private let slotFetch: PerSlot<Int>
    private let condition = Condition()
    private var freeSlots: [Int]
    private var readyFetches: [Int: Int] = [:]
    private let decodeJobs = WorkQueue<Int>()  // slots whose frame has been read
    private var finished = false
    private let failure = FirstError()

    private static let windowSize = 1 << 20

    init(
        frames: FrameReader, resolved: [ResolvedExtent], sourceSize: UInt64, blockSize: Int, target: RestoreTarget,
        readQueue: IOQueue, writeQueue: IOQueue, options: RestoreOptions, progress: ProgressHandler?
    ) {
        self.frames = frames
        self.resolved = resolved
        self.sourceSize = sourceSize
        self.blockSize = blockSize
        self.target = target
        self.readQueue = readQueue
        self.writeQueue = writeQueue
        self.options = options
        self.progress = progress
        let plan = FramePlan(resolved)
        fetchFrame = plan.frames
        fetchLastUse = plan.lastUse
        extentFetch = plan.extentFrame
        let (maxStored, maxBlocks) = frames.largest(fetchFrame)
        decodedOffset = (maxStored + 4095) / 4096 * 4096
        // Slots needed so the reader can always fetch the next frame: the most frames in use at once (for a
        // chain of captures, at most one per image; a merged image may hold frames of several), plus prefetch.
        var live = 0, maxLive = 0, seenFetches = 0
        for (i, f) in extentFetch.enumerated() where f >= 0 {
            if Int(f) == seenFetches {
                seenFetches += 1
                live += 1
                maxLive = max(maxLive, live)
            }
            if fetchLastUse[Int(f)] == i { live -= 1 }
        }
        let slotCount = maxLive + 2 * options.threads + 4
        slots = AlignedSlab(slotSize: decodedOffset + maxBlocks * blockSize, slotCount: slotCount)
        slotFetch = PerSlot(repeating: 0, count: slotCount)
        freeSlots = Array((0..<slotCount).reversed())
    }

    func run() throws {
        try target.setLength(sourceSize)  // writes then never extend the file (no exclusive inode lock per write)
        let group = ThreadGroup()
        for i in 0..<options.threads {
            let decompressor = try FrameDecompressor()
            group.spawn("strata-worker-\(i)") { self.work(decompressor) }
        }
        group.spawn("strata-io") { self.readFrames() }
        do {
            try writeTarget()
        } catch {
            failure.record(error)
        }
        condition.publish { finished = true }
        decodeJobs.close()
        group.join()
        if let e = failure.error { throw e }
    }

    // MARK: I/O thread

    private func readFrames() {
        let pump = IOPump(queue: readQueue, maxTags: slots.slotCount)
        do {
            for f in 0..<fetchFrame.count {
                var slot = -1
                while slot < 0 {
                    condition.lock()
                    if failure.error != nil || finished {
                        condition.unlock()
                        break
                    }
                    if let s = freeSlots.popLast() {
                        slot = s
                    } else if pump.inFlight == 0 {
                        condition.wait()
                    }
                    condition.unlock()
                    if slot < 0 && pump.inFlight > 0 { try frameRead(pump.next()) }
                }
                if slot < 0 { break }
                slotFetch[slot] = f
                frames.startRead(fetchFrame[f], into: slots.slot(slot), pump: pump, tag: slot)
                if pump.inFlight >= options.queueDepth { try frameRead(pump.next()) }
            }
            while pump.inFlight > 0 { try frameRead(pump.next()) }
        } catch {
            failure.record(wrap(error))
            while pump.inFlight > 0 { _ = try? pump.next() }
            condition.publish {}
        }
    }

    private func frameRead(_ done: (tag: Int, bytes: Int)) throws {
        try frames.arrived(fetchFrame[slotFetch[done.tag]], bytes: done.bytes)
        decodeJobs.post(done.tag)
    }

    // MARK: Workers

    private func work(_ decompressor: FrameDecompressor) {
        while let slot = decodeJobs.next() {
            if failure.error != nil { continue }  // drain: the restore is stopping
            do {
                try decode(slot, decompressor)
                condition.publish { readyFetches[slotFetch[slot]] = slot }
            } catch {
                failure.record(error)
                condition.publish {}
            }
        }
    }

    private func decode(_ slot: Int, _ decompressor: FrameDecompressor) throws {
        let base = slots.slot(slot)
        try frames.check(fetchFrame[slotFetch[slot]], stored: base, .everyBlock, decoded: base + decodedOffset, decompressor: decompressor)
    }

    // MARK: Coordinator

    private func waitForFetch(_ f: Int) throws -> Int {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let e = failure.error { throw e }
            if let s = readyFetches[f] { return s }
            condition.wait()
        }
    }

    private func release(fetch f: Int, slot: Int) {
        condition.publish {
            readyFetches[f] = nil
            freeSlots.append(slot)
        }
    }

    private func writeTarget() throws {
        let output = TargetWindows(target: target, queue: writeQueue, depth: options.queueDepth, windowSize: Self.windowSize, sourceSize: sourceSize)
        let bs = UInt64(blockSize)
        for (i, e) in resolved.enumerated() {
            var block = e.firstBlock
            let fetch = extentFetch[i]
            let slot = fetch >= 0 ? try waitForFetch(Int(fetch)) : -1
            while block < e.endBlock {
                if slot < 0 {
                    let skipped = try output.skipZeros(at: block * bs, upTo: (e.endBlock - block) * bs)
                    block += skipped / bs
                    if block == e.endBlock { break }
                }
                let (window, room) = try output.window(at: block * bs)
                let n = min(e.endBlock - block, UInt64(room) / bs)
                if slot >= 0 {
                    let from = slots.slot(slot) + decodedOffset + Int(UInt64(e.frameBlock) + block - e.firstBlock) * blockSize
                    window.copyMemory(from: from, byteCount: Int(n) * blockSize)
                    output.markData(bytes: Int(n) * blockSize)
                } else {
                    output.markZero(bytes: Int(n) * blockSize)
                }
                block += n
                if output.windowFull { try output.flush(); progress?(min(block * bs, sourceSize), sourceSize) }
            }
            if fetch >= 0 && fetchLastUse[Int(fetch)] == i { release(fetch: Int(fetch), slot: slot) }
        }
        try output.finish()
        progress?(sourceSize, sourceSize)
    }
}
