// The restore data path, one pass in block order:
//
//   compare        (--delta only) reads the target ahead of everything else and gives the runs of blocks that
//                  differ from the point (TargetCompare); the I/O thread plans only those, so the frames of
//                  blocks the target already holds are never read and those blocks never written.
//   I/O thread     walks the point a window at a time (PointWalk), plans each extent (which read of which frame
//                  it takes its blocks from) and hands the planned extents to the coordinator in batches; reads
//                  the frames they need into slots (io_uring or pread), never more than the slots allow.
//   workers (N)    check each frame's checksum, decompress it, and check every block against its stored hash.
//   coordinator    (the calling thread) takes the planned extents in order, copies blocks into 1 MiB output
//                  windows and writes them in order with large aligned writes (O_DIRECT where allowed); zero
//                  ranges become holes in a file and BLKZEROOUT on a device.
//
// Nothing is planned for the whole point: a frame stays in its slot while extents planned so far use it, and
// after that until its slot is wanted (least recently used first), so a frame that an image uses again further
// on is read once while slots last. A slot is reused only once the coordinator has passed every extent planned
// to use it, so the I/O thread never takes a slot the coordinator still needs; and the coordinator only ever
// waits for reads that are planned, so the two never wait on each other. Memory: the slots (2 MiB each, about
// two per image plus two per worker, at most 48), the planned batches and one window of extents.
import StrataCodec
import StrataFormat
import StrataIO

final class RestorePipeline: @unchecked Sendable {  // shared state is guarded by the run's lock; a slot passes between stages only through it or the decode queue
    private let frames: FrameReader
    private let images: [ImageFile]
    private let sourceSize: UInt64
    private let blockSize: Int
    private let target: RestoreTarget
    private let reads: ObjectReads
    private let writeQueue: IOQueue
    private let options: RestoreOptions
    private let progress: ProgressHandler?
    /// --delta: what reads the target and compares it with the point.
    private let delta: TargetCompare?
    /// The point's blocks restored (a partition's): the target's block 0 is the first of them.
    private let blocks: Range<UInt64>?

    private let slots: AlignedSlab
    private let decodedOffset: Int
    // Written by the I/O thread before a slot's read starts; read by the worker that decodes it.
    private let slotFrame: PerSlot<FrameRef>
    /// Where the frame begins in its slot when it was read directly (from the page before it); nil otherwise.
    private let slotLead: PerSlot<Int?>
    private let slotFetch: PerSlot<Int>
    // The I/O thread's own: which frames are in which slot, and the last planned extent using each slot.
    private var live: [FrameRef: (fetch: Int, slot: Int)] = [:]
    private var lastPlannedUse: [Int]

    /// The run's threads and first error; its lock guards what follows (one channel: the three stages wake each
    /// other on every change).
    private let stages = PipelineRun()
    private var freeSlots: [Int]
    private var readyFetches: [Int: Int] = [:]
    /// Planned extents, each with its fetch (nil: none), in batches.
    private var batches: [(first: Int, extents: [(ResolvedExtent, Int?)])] = []
    private var batchHead = 0
    private var planningDone = false
    /// The sequence number of the last extent the coordinator has finished with (extents are numbered from 1).
    private var consumed = 0
    private let decodeJobs = WorkQueue<Int>()  // slots whose frame has been read
    private var finished = false
    /// --delta: the runs of differing blocks the compare has found and the I/O thread has not yet taken, and
    /// whether the compare is over.
    private var differing: [Range<UInt64>] = []
    private var differingHead = 0
    private var compareDone = false
    /// The I/O thread's own: the run it is planning from, and the parts of an extent it plans.
    private var heldRun: Range<UInt64>?
    private var parts: [ResolvedExtent] = []
    private static let maxQueuedRuns = 1 << 16
    /// Bytes written (data) and zeroed on the target.
    private(set) var bytesWritten: UInt64 = 0
    /// The coordinator's own copy of `consumed`, the last it published.
    private var consumedShown = 0
    /// Unreadable ranges of the point, in bytes, and their blocks (the coordinator's).
    private(set) var unreadableRanges: [Range<UInt64>] = []
    private(set) var unreadableBlocks: UInt64 = 0

    private static let windowSize = 1 << 20
    private static let batchExtents = 4096
    private static let maxQueuedBatches = 16

    init(
        frames: FrameReader, images: [ImageFile], sourceSize: UInt64, blockSize: Int, target: RestoreTarget,
        reads: ObjectReads, writeQueue: IOQueue, options: RestoreOptions, progress: ProgressHandler?,
        delta: TargetCompare? = nil, blocks: Range<UInt64>? = nil
    ) {
        self.delta = delta
        self.blocks = blocks
        self.frames = frames
        self.images = images
        self.sourceSize = sourceSize
        self.blockSize = blockSize
        self.target = target
        self.reads = reads
        self.writeQueue = writeQueue
        self.options = options
        self.progress = progress
        let (maxStored, maxBlocks) = frames.largest
        // A slot: the frame as read (with room for the aligned pages around it: reads go past the page cache),
        // then its decoded blocks.
        decodedOffset = (maxStored + FrameReader.directSlack + 4095) / 4096 * 4096
        // Slots: a point of captures uses about one frame per image at a time (a merged image, two: its copied
        // frames and its re-packed ones), plus what the reads in flight and the workers hold.
        let slotCount = Self.slotCount(images: images.count, options: options)
        slots = AlignedSlab(slotSize: max(decodedOffset + maxBlocks * blockSize, 1), slotCount: slotCount)
        slotFrame = PerSlot(repeating: FrameRef(image: 0, frame: 0), count: slotCount)
        slotFetch = PerSlot(repeating: 0, count: slotCount)
        slotLead = PerSlot(repeating: nil, count: slotCount)
        lastPlannedUse = Array(repeating: 0, count: slotCount)
        freeSlots = Array((0..<slotCount).reversed())
    }

    /// The slots (and so the read tags) a restore of `images` uses.
    static func slotCount(images: Int, options: RestoreOptions) -> Int {
        min(max(2 * images, 4) + 2 * options.threads + 4, options.tuning.maxRestoreSlots)
    }

    func run() throws {
        try target.setLength(sourceSize)  // writes then never extend the file (no exclusive inode lock per write)
        let decompressors = try (0..<options.threads).map { _ in try FrameDecompressor() }  // before any thread starts
        for (i, decompressor) in decompressors.enumerated() {
            stages.spawn("strata-worker-\(i)") { self.work(decompressor) }
        }
        if delta != nil {
            stages.spawn("strata-compare") { try self.compareTarget() }
        }
        stages.spawn("strata-io") { try self.readFrames() }
        try stages.run({ try writeTarget() }, finish: {
            stages.publish { finished = true }
            decodeJobs.close()
        })
    }

    // MARK: I/O thread

    private func readFrames() throws {
        let pump = reads
        do {
            let base = blocks?.lowerBound ?? 0
            let walk = PointWalk(images, from: base, to: blocks?.upperBound, maxBlocks: options.tuning.maxWindowBlocks)
            var seq = 0
            var nextFetch = 0
            var batch: [(ResolvedExtent, Int?)] = []
            var batchFirst = 1
            func push() throws {
                guard !batch.isEmpty else { return }
                try waitReading(pump) { batches.count - batchHead < Self.maxQueuedBatches ? () : nil }
                stages.publish { batches.append((batchFirst, batch)) }
                batch = []
                batch.reserveCapacity(Self.batchExtents)
            }
            while let window = try walk.next() {
                for whole in window {
                    guard let whole = blocks.map({ Self.clip(whole, to: $0) }) ?? whole else { continue }
                    try takeParts(of: whole, pushing: push)
                    for e in parts {
                        seq += 1
                        var fetch: Int?
                        if e.kind == .data {
                            if let held = live[e.frameRef] {
                                fetch = held.fetch
                                lastPlannedUse[held.slot] = seq
                            } else {
                                let slot = try takeSlot(pump, pushing: push)
                                fetch = nextFetch
                                live[e.frameRef] = (nextFetch, slot)
                                lastPlannedUse[slot] = seq
                                slotFrame[slot] = e.frameRef
                                slotFetch[slot] = nextFetch
                                nextFetch += 1
                                slotLead[slot] = try frames.startRead(e.frameRef, into: slots.slot(slot), reads: pump, tag: slot, direct: true)
                                if pump.inFlight >= options.queueDepth { try frameRead(pump.nextOrThrow()) }
                            }
                        }
                        // (A batch may be pushed while this extent waits for a slot: it starts the next one.)
                        if batch.isEmpty { batchFirst = seq }
                        batch.append((e, fetch))
                        if batch.count == Self.batchExtents { try push() }
                    }
                }
                try push()
                if delta != nil, heldRun.map({ $0.upperBound <= walk.position - base }) ?? true,
                    stages.withLock({ compareDone && differingHead == differing.count })
                {
                    break  // nothing more differs: the rest of the point is not walked
                }
            }
            stages.publish { planningDone = true }
            while pump.inFlight > 0 { try frameRead(pump.nextOrThrow()) }
        } catch {
            pump.drain()  // before the slots can go
            throw wrap(error)
        }
    }

    /// The part of `e` inside `blocks`, numbered from the first of them (the target's blocks).
    static func clip(_ e: ResolvedExtent, to blocks: Range<UInt64>) -> ResolvedExtent? {
        let start = max(e.firstBlock, blocks.lowerBound), end = min(e.endBlock, blocks.upperBound)
        guard start < end else { return nil }
        var part = e
        part.frameBlock = e.frameBlock + UInt32(start - e.firstBlock)
        part.firstBlock = start - blocks.lowerBound
        part.blockCount = UInt32(end - start)
        return part
    }

    /// Waits until `ready` (run under the lock) gives a value, handling reads that complete meanwhile; throws
    /// when the restore is stopping.
    private func waitReading<T>(_ pump: ObjectReads, for ready: () -> T?) throws -> T {
        try stages.wait(
            for: { () throws -> T? in
                if finished { throw CancellationError() }
                return ready()
            }, pending: { pump.inFlight > 0 }, work: { try frameRead(pump.nextOrThrow()) })
    }

    /// A free slot, or the least recently planned one the coordinator is done with (its frame is forgotten and
    /// read again if needed later). Before waiting, the planned extents go to the coordinator (`push`): it frees
    /// slots only as it passes them.
    private func takeSlot(_ pump: ObjectReads, pushing push: () throws -> Void) throws -> Int {
        if let s = stages.withLock({ claimSlot() }) { return s }
        try push()
        return try waitReading(pump) { claimSlot() }
    }

    /// Under the lock: a free slot, or one whose planned uses the coordinator has all passed.
    private func claimSlot() -> Int? {
        if let s = freeSlots.popLast() { return s }
        var victim: Int?
        for (_, held) in live where lastPlannedUse[held.slot] <= consumed {
            if victim.map({ lastPlannedUse[held.slot] < lastPlannedUse[$0] }) ?? true { victim = held.slot }
        }
        guard let victim else { return nil }
        readyFetches[slotFetch[victim]] = nil
        live[slotFrame[victim]] = nil
        return victim
    }

    private func frameRead(_ done: (tag: Int, bytes: Int)) throws {
        try frames.arrived(slotFrame[done.tag], bytes: done.bytes, direct: slotLead[done.tag])
        decodeJobs.post(done.tag)
    }

    // MARK: --delta

    /// The compare stage: runs of differing blocks go to the I/O thread, never more than `maxQueuedRuns` waiting.
    private func compareTarget() throws {
        struct Finished: Error {}  // the coordinator is done: nothing more is wanted
        do {
            try delta!.run(depth: options.queueDepth, progress: progress) { runs in
                try stages.wait(until: { finished || differing.count - differingHead < Self.maxQueuedRuns })
                try stages.publish {
                    if finished { throw Finished() }
                    if differingHead > 0 && differingHead * 2 > differing.count {
                        differing.removeFirst(differingHead)
                        differingHead = 0
                    }
                    differing.append(contentsOf: runs)
                }
            }
        } catch is Finished {
            return
        }
        stages.publish { compareDone = true }
    }

    /// Sets `parts` to the parts of `e` to write: all of it in a full restore; with --delta, its blocks in the
    /// differing runs (waiting for the compare to get past it, the planned extents handed on first so the
    /// coordinator is not kept waiting meanwhile).
    private func takeParts(of e: ResolvedExtent, pushing push: () throws -> Void) throws {
        parts.removeAll(keepingCapacity: true)
        guard delta != nil else { return parts.append(e) }
        var b = e.firstBlock
        while b < e.endBlock, let run = try differingRun(endingAfter: b, pushing: push), run.lowerBound < e.endBlock {
            let start = max(b, run.lowerBound), end = min(e.endBlock, run.upperBound)
            var part = e
            part.firstBlock = start
            part.blockCount = UInt32(end - start)
            part.frameBlock = e.frameBlock + UInt32(start - e.firstBlock)
            parts.append(part)
            b = end
        }
    }

    /// The first differing run that ends after `block`, or nil when the compare found no more.
    private func differingRun(endingAfter block: UInt64, pushing push: () throws -> Void) throws -> Range<UInt64>? {
        while true {
            if let run = heldRun, run.upperBound > block { return run }
            func take() -> Range<UInt64>?? {
                if differingHead < differing.count {
                    differingHead += 1
                    return .some(differing[differingHead - 1])
                }
                return compareDone ? .some(nil) : nil
            }
            if let run = stages.withLock({ take() }) {
                heldRun = run
            } else {
                try push()
                heldRun = try waitReading(reads) { take() }
            }
            guard heldRun != nil else { return nil }
            stages.publish {}  // room for more runs: the compare may wait for it
        }
    }

    // MARK: Workers

    private func work(_ decompressor: FrameDecompressor) {
        while let slot = decodeJobs.next() {
            if stages.failed { continue }  // drain: the restore is stopping
            do {
                try decode(slot, decompressor)
                stages.publish { readyFetches[slotFetch[slot]] = slot }
            } catch {
                stages.fail(error)
            }
        }
    }

    private func decode(_ slot: Int, _ decompressor: FrameDecompressor) throws {
        let base = slots.slot(slot)
        try frames.check(slotFrame[slot], stored: base + (slotLead[slot] ?? 0), .everyBlock, decoded: base + decodedOffset, decompressor: decompressor)
    }

    // MARK: Coordinator

    /// The slot holding fetch `f`, decoded and checked; tells the I/O thread how far the coordinator has come
    /// before it waits.
    private func waitForFetch(_ f: Int, consumed done: Int) throws -> Int {
        show(consumed: done)
        return try stages.wait(for: { readyFetches[f] })
    }

    /// Tells the I/O thread how far the coordinator has come (it may reuse the slots of what is behind).
    private func show(consumed done: Int) {
        guard done > consumedShown else { return }
        consumedShown = done
        stages.publish { consumed = done }
    }

    /// The next batch of planned extents, or nil when there are no more.
    private func nextBatch(consumed done: Int) throws -> (first: Int, extents: [(ResolvedExtent, Int?)])? {
        show(consumed: done)
        let next = try stages.wait(for: { () -> (first: Int, extents: [(ResolvedExtent, Int?)])?? in
            guard batchHead < batches.count else { return planningDone ? .some(nil) : nil }
            let b = batches[batchHead]
            batches[batchHead].extents = []
            batchHead += 1
            if batchHead > 64 && batchHead * 2 > batches.count {
                batches.removeFirst(batchHead)
                batchHead = 0
            }
            return .some(b)
        })
        if next != nil { stages.publish {} }  // room for another batch: the I/O thread may wait for it
        return next
    }

    private func writeTarget() throws {
        let output = TargetWindows(
            target: target, queue: writeQueue, depth: options.queueDepth, windowSize: Self.windowSize, sourceSize: sourceSize, sparse: delta != nil)
        defer { bytesWritten = output.bytesWritten }
        let progress = delta == nil ? self.progress : nil  // with --delta the compare tells how far the restore has come
        let bs = UInt64(blockSize)
        var done = 0
        while let batch = try nextBatch(consumed: done) {
            for (k, (e, fetch)) in batch.extents.enumerated() {
                var block = e.firstBlock
                let slot = try fetch.map { try waitForFetch($0, consumed: done) }
                if e.kind == .unreadable {
                    unreadableRanges.appendJoining(e.firstBlock * bs..<min(sourceSize, e.endBlock * bs))
                    unreadableBlocks += UInt64(e.blockCount)
                }
                while block < e.endBlock {
                    if slot == nil {
                        let skipped = try output.skipZeros(at: block * bs, upTo: (e.endBlock - block) * bs)
                        block += skipped / bs
                        if block == e.endBlock { break }
                    }
                    let (window, room) = try output.window(at: block * bs)
                    let n = min(e.endBlock - block, UInt64(room) / bs)
                    if let slot {
                        let from = slots.slot(slot) + decodedOffset + Int(UInt64(e.frameBlock) + block - e.firstBlock) * blockSize
                        window.copyMemory(from: from, byteCount: Int(n) * blockSize)
                        output.markData(bytes: Int(n) * blockSize)
                    } else {
                        output.markZero(bytes: Int(n) * blockSize)
                    }
                    block += n
                    if output.windowFull {
                        try output.flush()
                        show(consumed: done)
                        progress?(min(block * bs, sourceSize), sourceSize)
                    }
                }
                done = batch.first + k
            }
        }
        try output.finish()
        progress?(sourceSize, sourceSize)
    }
}
