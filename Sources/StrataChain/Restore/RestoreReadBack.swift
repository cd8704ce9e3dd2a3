// `strata restore --verify`: after the target is written and synced, read it back (O_DIRECT where the target
// allows it, so the page cache cannot answer for the device) and compare every block with the hash the chain
// holds for it: the hash stored beside the block in its frame, or the zero block's for zero and unreadable
// extents. Only the frames' hash tables are read from the chain (16 bytes a block), not their payloads.
import StrataCodec
import StrataFormat
import StrataIO

final class RestoreReadBack {
    private let frames: FrameReader
    private let walk: PointWalk
    private var window: [ResolvedExtent] = []
    private var at = 0
    private let blockSize: Int
    private let sourceSize: UInt64
    private let queue: IOQueue
    private var frameHashes: [FrameRef: [BlockHash]] = [:]

    private(set) var mismatchedBlocks: UInt64 = 0
    private(set) var firstMismatch: UInt64?

    init(frames: FrameReader, images: [ImageFile], blockSize: Int, sourceSize: UInt64, queue: IOQueue) {
        self.frames = frames
        walk = PointWalk(images)
        self.blockSize = blockSize
        self.sourceSize = sourceSize
        self.queue = queue
    }

    /// Reads `source` (the target, reopened for reading) from start to `sourceSize` and counts the blocks whose
    /// content differs from the point's.
    func run(_ source: BlockSource, depth: Int, progress: ProgressHandler?) throws {
        let chunk = 1 << 20
        let slots = AlignedSlab(slotSize: chunk, slotCount: depth, alignment: max(4096, source.alignment))
        let pump = IOPump(queue: queue, maxTags: depth)
        let detector = ZeroBlockDetector(blockSize: blockSize, hasher: frames.images.last??.hasher ?? .plain)
        var free = Array((0..<depth).reversed())
        var slotOffset = Array(repeating: UInt64(0), count: depth)
        var arrived: [UInt64: (slot: Int, bytes: Int)] = [:]
        var next: UInt64 = 0
        var checked: UInt64 = 0
        let alignment = UInt64(source.alignment)
        while checked < sourceSize {
            if next < sourceSize, let slot = free.popLast() {
                let length = min(UInt64(chunk), (sourceSize - next + alignment - 1) / alignment * alignment)
                slotOffset[slot] = next
                pump.read(fd: source.fd, path: source.path, into: slots.slot(slot), length: Int(length), at: next, tag: slot)
                next += UInt64(chunk)
                continue
            }
            // Reads complete in any order; they are compared in order, as the point is walked.
            while arrived[checked] == nil {
                let (slot, bytes) = try pump.next()
                arrived[slotOffset[slot]] = (slot, bytes)
            }
            let (slot, bytes) = arrived.removeValue(forKey: checked)!
            let offset = checked
            let valid = Int(min(UInt64(chunk), sourceSize - offset))
            guard bytes >= valid else {
                throw ChainError.targetUnavailable(path: source.path, reason: "it ended at byte \(offset + UInt64(bytes)) when read back")
            }
            let base = slots.slot(slot)
            let blocks = (valid + blockSize - 1) / blockSize
            if blocks * blockSize > valid { (base + valid).initializeMemory(as: UInt8.self, repeating: 0, count: blocks * blockSize - valid) }
            try compare(base, firstBlock: offset / UInt64(blockSize), count: blocks, detector: detector)
            free.append(slot)
            checked += UInt64(valid)
            progress?(checked, sourceSize)
        }
        while pump.inFlight > 0 { _ = try? pump.next() }
    }

    private func compare(_ base: UnsafeRawPointer, firstBlock: UInt64, count: Int, detector: ZeroBlockDetector) throws {
        for b in 0..<count {
            let block = firstBlock + UInt64(b)
            while at == window.count || window[at].endBlock <= block {
                if at < window.count {
                    at += 1
                } else {
                    guard let next = try walk.next() else { return }
                    (window, at) = (next, 0)
                }
            }
            let e = window[at]
            let expected: BlockHash
            if e.kind == .data {
                expected = try hashes(e.frameRef)[Int(e.frameBlock) + Int(block - e.firstBlock)]
            } else {
                expected = .zero
            }
            if detector.hash(base + b * blockSize) != expected {
                mismatchedBlocks += 1
                if firstMismatch == nil { firstMismatch = block }
            }
        }
    }

    /// The stored hashes of one frame, cached while the restore walks on.
    private func hashes(_ f: FrameRef) throws -> [BlockHash] {
        if let h = frameHashes[f] { return h }
        if frameHashes.count >= 4096 { frameHashes.removeAll(keepingCapacity: true) }
        let h = try frames.storedHashes(f)
        frameHashes[f] = h
        return h
    }
}
