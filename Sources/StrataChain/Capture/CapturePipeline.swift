// The capture data path. Four kinds of work overlap so a capture is bound by the device or by compression:
//
//   I/O thread     reads the source in `requestSize` chunks into slots of one aligned slab (io_uring or pread),
//                  many in flight; holes of a sparse file are never read. A piece of a chain of used blocks is
//                  the used runs of a chunk, several reads into one slot, handed on once all have finished.
//   workers (N)    hash each block of a chunk (XXH3-128, zero blocks recognised) and compress finished frames.
//   coordinator    (the calling thread) walks chunks in order beside the old hash map: unchanged blocks are
//                  skipped, changed ones are copied into the current frame (up to 1 MiB), frames are handed to
//                  the workers. A chunk that is one whole frame of changed data (every chunk of a full
//                  capture, but for zero blocks) is not copied: its frame is compressed straight from the read
//                  slot, which is freed once it is sealed.
//   writer         appends sealed frames to the image in order as they come back. It was the coordinator's
//                  job until a 16-core machine showed the coordinator 71% busy copying compressed frames into
//                  the image's write buffers while 16 workers waited half the time.
//
// A chunk whose read fails with a media error (a bad sector) is read again by the I/O thread, bisected down to
// the source's logical block size; blocks still unreadable are recorded as such (`BlockHash.unreadable` in the
// hash map, an unreadable extent in the image) unless `maxBadBlocks` is exceeded.
//
// Memory is fixed at start: slots + frame buffers + one hash-map chunk each way, whatever the device size.
import StrataCodec
import StrataFormat
import StrataIO

final class CapturePipeline: @unchecked Sendable {  // shared state is guarded by the run's lock; a slot's and a frame buffer's state passes between stages only through it or a work queue
    struct Stats {
        var bytesRead: UInt64 = 0
        var blocksChanged: UInt64 = 0
        /// Blocks the source could not deliver, and where (block ranges, merged).
        var unreadableBlocks: UInt64 = 0
        var unreadableRanges: [Range<UInt64>] = []
        /// Bytes read to check the change source's answer.
        var bytesSampled: UInt64 = 0
    }

    /// A sampled block's hash differs from the map's: the change source called it unchanged and it is not.
    struct MissedChange: Error {
        var offset: UInt64
    }

    /// A piece of the plan, ready for the coordinator: read into a slot, or a hole (no slot); nil: the plan's end.
    private typealias Ready = (piece: ReadPiece, slot: Int?)?

    private enum Job {
        case hash(slot: Int)
        case compress(buffer: Int)
    }

    let source: BlockSource
    private let queue: IOQueue
    let blockSize: Int
    let requestSize: Int
    let options: CaptureOptions
    private let oldMap: PriorHashes?
    private let forcedChange: (@Sendable (UInt64) -> Bool)?
    private let image: ImageWriter
    private let newMap: HashMapWriter?
    private let plan: ReadPlan
    private let progress: ProgressHandler?

    // Read slots: one chunk of the source each, plus the hashes of its blocks.
    let slots: AlignedSlab
    private let slotHashes: UnsafeMutablePointer<BlockHash>
    private let holeHashes: UnsafeMutablePointer<BlockHash>  // a hole's, where no map is written
    private let blocksPerSlot: Int
    private let slotSequence: PerSlot<Int>
    let slotPiece: PerSlot<ReadPiece>  // the piece of the source read into the slot (its offset and valid bytes)
    let slotUnreadable: PerSlot<[Int]>  // blocks of the slot's chunk that could not be read
    private let slotReadsLeft: PerSlot<Int>  // the I/O thread's own: reads of the slot's piece still in flight

    // Unreadable blocks found so far (I/O thread only until the workers are joined).
    var unreadableBlocks: UInt64 = 0
    var unreadableRanges: [Range<UInt64>] = []

    // Frame buffers, and for each the frame it holds once sealed and its place in the image's order.
    private let frames: FrameBuffers
    private let frameBlocks: PerSlot<Int>
    private let frameSlot: PerSlot<Int?>  // the read slot a frame's blocks are in; nil: in the frame buffer
    private let sealed: PerSlot<SealedFrame?>  // written by workers, read by the writer
    private let frameSequence: PerSlot<Int>

    // The run's threads, its first error, and the shared state's lock: the coordinator, the writer and the I/O
    // thread each wait on a channel of their own (one thread each) and are woken only when what they wait for may
    // have changed. Guarded by the run's lock: the free lists, the ready maps and the counters below.
    private let stages = PipelineRun(channels: 3)
    private static let coordinator = 0, writer = 1, reader = 2
    private var freeSlots: [Int]
    private var freeFrames: [Int]
    private var readyPieces: [Int: Ready] = [:]  // by the piece's place in the plan
    private var doneFrames: [Int: Int] = [:]  // frame sequence -> buffer
    private let jobs = WorkQueue<Job>()
    private var bytesRead: UInt64 = 0
    private var consumedPieces = 0

    /// `plan`: what to read (nil: the whole source, holes skipped). `newMap`: nil when the capture writes no map
    /// (a change source's capture: docs/FORMAT.md, "Hash map"); then a sampled block that differs from `oldMap`
    /// fails the run with `MissedChange`.
    init(
        source: BlockSource, queue: IOQueue, blockSize: Int, options: CaptureOptions, oldMap: PriorHashes?,
        image: ImageWriter, newMap: HashMapWriter?, plan: ReadPlan? = nil, progress: ProgressHandler?
    ) throws {
        self.source = source
        self.queue = queue
        self.blockSize = blockSize
        self.requestSize = max(options.requestSize / blockSize, 1) * blockSize
        self.options = options
        self.oldMap = oldMap
        forcedChange = options.treatAsChanged
        self.image = image
        self.newMap = newMap
        self.progress = progress
        let alignment = max(4096, source.alignment)
        let slotCount = options.queueDepth + 2 * options.threads + 2
        slots = AlignedSlab(slotSize: requestSize, slotCount: slotCount, alignment: alignment)
        blocksPerSlot = requestSize / blockSize
        slotHashes = .allocate(capacity: slotCount * blocksPerSlot)
        holeHashes = .allocate(capacity: blocksPerSlot)
        slotSequence = PerSlot(repeating: 0, count: slotCount)
        slotPiece = PerSlot(repeating: ReadPiece(offset: 0, length: 0), count: slotCount)
        slotUnreadable = PerSlot(repeating: [], count: slotCount)
        slotReadsLeft = PerSlot(repeating: 0, count: slotCount)
        freeSlots = Array((0..<slotCount).reversed())

        let frameCount = 2 * options.threads + 2
        frames = FrameBuffers(blockSize: blockSize, count: frameCount, keys: image.keys, subframes: options.seekable == true, subframeBytes: options.tuning.subframeBytes)
        frameBlocks = PerSlot(repeating: 0, count: frameCount)
        frameSlot = PerSlot(repeating: nil, count: frameCount)
        sealed = PerSlot(repeating: nil, count: frameCount)
        frameSequence = PerSlot(repeating: 0, count: frameCount)
        freeFrames = Array((0..<frameCount).reversed())

        if let plan {
            self.plan = plan
        } else {
            let rs = UInt64(requestSize)
            let data = try source.dataRanges(granule: rs).map { Int($0.lowerBound / rs)..<Int(($0.upperBound + rs - 1) / rs) }
            // An NBD server's holes and zeros are its word: a share of them is read, and must be zeros.
            self.plan = ScanPlan(
                size: source.size, requestSize: requestSize, dataChunks: data, checkHoles: source.export == nil ? 0 : options.checkUnchanged,
                seed: options.sampleSeed ?? UInt64.random(in: 0...UInt64.max))
        }
    }

    deinit {
        slotHashes.deallocate()
        holeHashes.deallocate()
    }

    /// Runs the capture to the end of the source; the image and map writers hold the result.
    func run() throws -> Stats {
        let detector = ZeroBlockDetector(blockSize: blockSize, hasher: BlockHasher(image.keys))
        let compressors = try (0..<options.threads).map { _ in try FrameCompressor(level: options.level) }  // before any thread starts
        for (i, compressor) in compressors.enumerated() {
            stages.spawn("strata-worker-\(i)") { self.work(detector: detector, compressor: compressor) }
        }
        stages.spawn("strata-io") { try self.readSource() }
        stages.spawn("strata-writer") { try self.writeFrames() }
        var stats = Stats()
        try stages.run({ try coordinate(&stats) }, finish: { jobs.close() })
        stats.bytesRead = bytesRead
        stats.unreadableBlocks = unreadableBlocks
        // Failed reads complete in any order: sort and join their ranges.
        for r in unreadableRanges.sorted(by: { $0.lowerBound < $1.lowerBound }) { stats.unreadableRanges.appendJoining(r) }
        return stats
    }

    // MARK: I/O thread

    private func readSource() throws {
        // A read's tag: its slot and which of the piece's parts it is.
        let pump = IOPump(queue: queue, maxTags: slots.slotCount * ReadPiece.maxParts)
        if let uring = queue as? URingQueue { uring.register(base: slots.base, length: slots.byteCount) }
        defer { (queue as? URingQueue)?.unregister(base: slots.base) }
        let alignment = UInt64(source.alignment)
        // Reads in flight are finished while waiting: the coordinator may be waiting for one of them.
        let inFlight = { pump.inFlight > 0 }
        let finishOne = { try self.complete(pump.nextOutcome()) }
        do {
            var seq = 0
            while let piece = try plan.next() {
                defer { seq += 1 }
                if piece.hole {
                    // Holes need no slot; bound how far ahead of the coordinator they are announced.
                    try stages.wait(on: Self.reader, until: { seq < consumedPieces + slots.slotCount }, pending: inFlight, work: finishOne)
                    stages.update(waking: Self.coordinator) { readyPieces.updateValue((piece, nil), forKey: seq) }
                    continue
                }
                let slot = try stages.wait(on: Self.reader, for: { freeSlots.popLast() }, pending: inFlight, work: finishOne)
                slotPiece[slot] = piece
                slotSequence[slot] = seq
                slotUnreadable[slot].removeAll()
                slotReadsLeft[slot] = piece.partCount
                for k in 0..<piece.partCount {
                    let part = piece.part(k)
                    let at = Int(part.lowerBound - piece.offset)
                    let length = Int((UInt64(part.count) + alignment - 1) / alignment * alignment)
                    pump.read(
                        fd: source.fd, path: source.path, into: slots.slot(slot) + at, length: min(length, slots.slotSize - at),
                        at: source.physical(part.lowerBound), tag: slot * ReadPiece.maxParts + k)
                    if pump.inFlight >= options.queueDepth { try complete(pump.nextOutcome()) }
                }
            }
            while pump.inFlight > 0 { try complete(pump.nextOutcome()) }
            let end = seq
            try stages.wait(on: Self.reader, until: { end < consumedPieces + slots.slotCount })
            stages.update(waking: Self.coordinator) { readyPieces.updateValue(nil, forKey: end) }
        } catch {
            while pump.inFlight > 0 { _ = pump.nextOutcome() }  // before the slots can go
            throw wrap(error)
        }
    }

    /// One read of a slot's piece finished; the piece goes to the workers once all its reads have.
    private func complete(_ done: (tag: Int, bytes: Int, error: IOError?)) throws {
        let slot = done.tag / ReadPiece.maxParts
        let piece = slotPiece[slot]
        let part = piece.part(done.tag % ReadPiece.maxParts)
        if let error = done.error {
            let at = part.lowerBound + UInt64(done.bytes)
            guard error.isMediaError else { throw error }
            guard options.maxBadBlocks > 0 else {
                throw ChainError.sourceReadError(path: source.path, offset: at / UInt64(source.alignment) * UInt64(source.alignment), reason: error.reason)
            }
            try rescue(slot, part: part)
        } else if done.bytes < part.count {
            throw ChainError.sourceUnavailable(path: source.path, reason: "it ended early, at byte \(part.lowerBound + UInt64(done.bytes))")
        }
        bytesRead += UInt64(part.count)  // the I/O thread's own; read after the threads are joined
        slotReadsLeft[slot] -= 1
        guard slotReadsLeft[slot] == 0 else { return }
        let valid = piece.length
        let tail = (valid + blockSize - 1) / blockSize * blockSize
        if tail > valid { (slots.slot(slot) + valid).initializeMemory(as: UInt8.self, repeating: 0, count: tail - valid) }
        jobs.post(.hash(slot: slot))
    }

    // MARK: Workers

    private func work(detector: ZeroBlockDetector, compressor: FrameCompressor) {
        while let job = jobs.next() {
            switch job {
            case .hash(let slot):
                let base = slots.slot(slot)
                let hashes = slotHashes + slot * blocksPerSlot
                let piece = slotPiece[slot]
                // Block by block, each read of the piece hashed; the blocks between its reads are free (not read).
                let first = piece.offset / UInt64(blockSize)
                var b = 0
                for k in 0..<piece.partCount {
                    let part = piece.part(k)
                    let lo = Int(part.lowerBound / UInt64(blockSize) - first), hi = Int((part.upperBound + UInt64(blockSize) - 1) / UInt64(blockSize) - first)
                    while b < lo { hashes[b] = .free; b += 1 }
                    while b < hi { hashes[b] = detector.hash(base + b * blockSize); b += 1 }
                }
                for b in slotUnreadable[slot] { hashes[b] = .unreadable }
                stages.update(waking: Self.coordinator) { readyPieces[slotSequence[slot]] = (piece, slot) }
            case .compress(let buffer):
                compressFrame(buffer, compressor: compressor)
            }
        }
    }

    private func compressFrame(_ buffer: Int, compressor: FrameCompressor) {
        let slot = frameSlot[buffer]
        let blocks = slot.map { UnsafeRawPointer(slots.slot($0)) }
        sealed[buffer] = frames.seal(buffer, blockCount: frameBlocks[buffer], compressor: compressor, blocks: blocks)
        stages.update(waking: Self.writer, Self.reader) {
            doneFrames[frameSequence[buffer]] = buffer
            if let slot { freeSlots.append(slot) }
        }
    }

    // MARK: Writer thread

    private var nextFrameToWrite = 0  // guarded by the run's lock
    private var allDispatched = false  // guarded by the run's lock; framesDispatched is final once it is set

    private func writeFrames() throws {
        while true {
            // The next frame in order once sealed, or nil once every frame dispatched is written.
            let next: Int? = try stages.wait(on: Self.writer, for: { () -> Int?? in
                if let buffer = doneFrames.removeValue(forKey: nextFrameToWrite) { return .some(buffer) }
                return allDispatched && nextFrameToWrite == framesDispatched ? .some(nil) : nil
            })
            guard let buffer = next else { return }
            _ = try image.appendFrame(sealed[buffer]!)
            stages.update(waking: Self.coordinator) {
                nextFrameToWrite += 1
                freeFrames.append(buffer)
            }
        }
    }

    // MARK: Coordinator

    private var framesDispatched = 0
    private var currentFrame: Int?  // the frame buffer being filled
    private var currentFill = 0

    private func coordinate(_ stats: inout Stats) throws {
        let checking = newMap == nil
        var changed: UInt64 = 0, sampled: UInt64 = 0
        var seq = 0
        while true {
            let ready: Ready = try stages.wait(on: Self.coordinator, for: { readyPieces.removeValue(forKey: seq) })
            guard let (piece, slot) = ready else { break }
            let first = piece.offset / UInt64(blockSize)
            let count = (piece.length + blockSize - 1) / blockSize
            let data = slot.map { slots.slot($0) }
            // The piece's hashes: in the new map where one is written, else in the slot's own room.
            let hashes: UnsafeMutablePointer<BlockHash>
            if let newMap { hashes = newMap.reserve(count) } else { hashes = slot.map { slotHashes + $0 * blocksPerSlot } ?? holeHashes }
            if let slot {
                if newMap != nil { hashes.update(from: slotHashes + slot * blocksPerSlot, count: count) }
            } else {
                hashes.update(repeating: piece.free ? .free : .zero, count: count)
            }
            let old = try oldMap?.hashes(from: first, count: count)
            if piece.expectZero, let nonzero = (0..<count).first(where: { hashes[$0] != .zero }) {
                throw MissedChange(offset: (first + UInt64(nonzero)) * UInt64(blockSize))
            }
            if piece.sample {
                sampled += UInt64(piece.length)
                if let old, let miss = (0..<count).first(where: { old[$0] != hashes[$0] && old[$0] != .damaged && old[$0] != .unreadable }) {
                    throw MissedChange(offset: (first + UInt64(miss)) * UInt64(blockSize))
                }
            }
            if let slot, try frameInPlace(slot: slot, first: first, count: count, hashes: hashes, old: old) {
                changed += UInt64(count)
                try newMap?.commit(count)
                stages.update(waking: Self.reader) { consumedPieces = seq + 1 }  // the slot is freed when its frame is sealed
                progress?(min(piece.offset + UInt64(piece.length), source.size), source.size)
                seq += 1
                continue
            }
            var i = 0
            while i < count {
                if let old, old[i] == hashes[i], checking || (forcedChange.map({ !$0(first + UInt64(i)) }) ?? true) {
                    i += 1
                    continue
                }
                if let kind = Self.storedAsNothing(hashes[i]) {
                    let h = hashes[i]
                    var j = i + 1
                    while j < count && hashes[j] == h && old?[j] != h { j += 1 }
                    try image.addExtent(block: first + UInt64(i), count: UInt32(j - i), kind: kind)
                    changed += UInt64(j - i)
                    i = j
                } else {
                    try appendToFrame(block: first + UInt64(i), hash: hashes[i], data: data! + i * blockSize)
                    changed += 1
                    i += 1
                }
            }
            try newMap?.commit(count)
            stages.update(waking: Self.reader) {
                if let slot { freeSlots.append(slot) }
                consumedPieces = seq + 1
            }
            progress?(min(piece.offset + UInt64(piece.length), source.size), source.size)
            seq += 1
        }
        if currentFrame != nil { try dispatchFrame() }
        stages.update(waking: Self.writer) { allDispatched = true }
        try stages.wait(on: Self.coordinator, until: { nextFrameToWrite == framesDispatched })
        stats.blocksChanged = changed
        stats.bytesSampled = sampled
    }

    /// The extent kind of a block whose hash says nothing is stored for it (zero, free, unreadable); nil for data.
    private static func storedAsNothing(_ h: BlockHash) -> ExtentKind? {
        h == .zero ? .zero : h == .free ? .free : h == .unreadable ? .unreadable : nil
    }

    /// When the chunk is exactly one frame of changed, non-zero, readable blocks, dispatches a frame whose blocks
    /// stay in the read slot (no copy) and returns true. A frame being filled is sent off first, short: otherwise
    /// one chunk with a zero block puts every later frame off the chunk grid, and the coordinator copied nearly
    /// every block of a full capture (measured on the reference disk: 2.2% of all CPU in its memmove).
    private func frameInPlace(slot: Int, first: UInt64, count: Int, hashes: UnsafeMutablePointer<BlockHash>, old: UnsafePointer<BlockHash>?) throws -> Bool {
        guard count == frames.blocksPerFrame, blocksPerSlot == frames.blocksPerFrame, slotUnreadable[slot].isEmpty else { return false }
        for i in 0..<count {
            let h = hashes[i]
            if Self.storedAsNothing(h) != nil { return false }
            if let old, old[i] == h { return false }
        }
        if currentFrame != nil { try dispatchFrame() }
        let frame = try takeFrame()
        for i in 0..<count { frames.hash(frame, i).storeBytes(of: hashes[i], as: BlockHash.self) }
        try image.addExtent(block: first, count: UInt32(count), kind: .data, frame: UInt32(framesDispatched), frameBlock: 0)
        frameSlot[frame] = slot
        currentFill = count
        try dispatchFrame()
        return true
    }

    private func takeFrame() throws -> Int {
        let frame = try stages.wait(on: Self.coordinator, for: { freeFrames.popLast() })
        frameSequence[frame] = framesDispatched  // the workers read it after the job's hand-off
        frameSlot[frame] = nil
        currentFrame = frame
        currentFill = 0
        return frame
    }

    private func appendToFrame(block: UInt64, hash: BlockHash, data: UnsafeRawPointer) throws {
        let frame = try currentFrame ?? takeFrame()
        frames.block(frame, currentFill).copyMemory(from: data, byteCount: blockSize)
        frames.hash(frame, currentFill).storeBytes(of: hash, as: BlockHash.self)
        try image.addExtent(block: block, count: 1, kind: .data, frame: UInt32(framesDispatched), frameBlock: UInt32(currentFill))
        currentFill += 1
        if currentFill == frames.blocksPerFrame { try dispatchFrame() }
    }

    private func dispatchFrame() throws {
        guard let frame = currentFrame else { return }
        frameBlocks[frame] = currentFill
        framesDispatched += 1  // the coordinator's own
        jobs.post(.compress(buffer: frame))
        currentFrame = nil
    }
}
