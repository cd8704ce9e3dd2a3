// Reading a restore's target and comparing it with the point, block by block: what `restore --delta` does before
// it writes (to find the blocks that differ) and what `restore --verify` does after (to find any that still do).
// The target is read in order, 1 MiB at a time with several reads in flight (O_DIRECT where it allows, so the
// page cache cannot answer for a device); each block is hashed as the chain hashes it (keyed for an encrypted
// chain) and compared with the point's hash for it: the hash stored beside the block in its frame, or the zero
// block's for zero and unreadable extents; free blocks (a chain of used blocks) as `FreeBlocks` says. Only the
// frames' hash tables are read from the chain (16 bytes a
// block, read ahead by RebuiltHashes), never their payloads. Memory: the reads in flight and one chunk of hashes.
import StrataCodec
import StrataFormat
import StrataIO

final class TargetCompare {
    /// The target, opened for reading.
    private let source: BlockSource
    private let hashes: RebuiltHashes
    private let hasher: BlockHasher
    private let blockSize: Int
    private let sourceSize: UInt64
    /// The target's blocks, and where they lie in the point (a partition's first block; 0 for a whole disk).
    private let blockCount: UInt64
    private let base: UInt64
    /// The hash of the target's last block as the target holds it, where the target ends inside a block of the
    /// point (a partition whose size is not a multiple of the block size): the point's bytes up to the end, then
    /// zeros.
    private let tailHash: BlockHash?
    private var expected: [BlockHash] = []
    private let queue: IOQueue
    /// Differing runs are widened to whole units of this many blocks (a block smaller than the target's direct
    /// I/O unit cannot be written alone).
    private let unitBlocks: UInt64

    /// Blocks whose content differs from the point's, and the first of them.
    private(set) var differingBlocks: UInt64 = 0
    private(set) var firstDiffering: UInt64?
    /// The point's unreadable ranges (bytes) and blocks: zeros on the target.
    private(set) var unreadableRanges: [Range<UInt64>] = []
    private(set) var unreadableBlocks: UInt64 = 0
    /// Bytes read from the target.
    private(set) var bytesCompared: UInt64 = 0

    /// What is done with the point's free blocks (a chain of used blocks: blocks no filesystem used): compared as
    /// the zeros a full restore wrote there, left as the target has them (`restore --delta`, and its `--verify`),
    /// or discarded (`--delta --discard`: `discard` is given their runs, in bytes, in order).
    enum FreeBlocks {
        case zeros, skip
        case discard((Range<UInt64>) throws -> Void)
    }
    private let freeBlocks: FreeBlocks
    /// Free blocks not compared (left or discarded).
    private(set) var freeBlockCount: UInt64 = 0
    private var freeRun: Range<UInt64>?

    init(
        _ source: BlockSource, store: ChainStore, images: [ImageFile], blockSize: Int, sourceSize: UInt64, queue: IOQueue,
        blocks: Range<UInt64>? = nil, tailHash: BlockHash? = nil, unitBlocks: Int = 1, maxWindowBlocks: UInt64 = .max,
        freeBlocks: FreeBlocks = .zeros
    ) throws {
        self.source = source
        self.freeBlocks = freeBlocks
        let pointBlocks = images.first?.header.blockCount ?? 0
        let blocks = blocks ?? 0..<pointBlocks
        (blockCount, base, self.tailHash) = (UInt64(blocks.count), blocks.lowerBound, tailHash)
        hashes = try RebuiltHashes(store, images, blockCount: pointBlocks, from: blocks.lowerBound, maxWindowBlocks: maxWindowBlocks)
        hasher = images.last?.hasher ?? .plain
        self.blockSize = blockSize
        self.sourceSize = sourceSize
        self.queue = queue
        self.unitBlocks = UInt64(max(1, unitBlocks))
    }

    /// Reads the target from the start to `sourceSize` and compares every block (block b of the target with block
    /// `base` + b of the point); gives the runs of differing
    /// blocks (in order, joined, widened to units) to `differing` as each 1 MiB is compared, the last run once
    /// it has ended.
    func run(depth: Int, progress: ProgressHandler?, differing: ([Range<UInt64>]) throws -> Void = { _ in }) throws {
        let chunk = max(1 << 20, blockSize)
        let slots = AlignedSlab(slotSize: chunk, slotCount: depth, alignment: max(4096, source.alignment))
        let pump = IOPump(queue: queue, maxTags: depth)
        defer { while pump.inFlight > 0 { _ = pump.nextOutcome() } }
        let detector = ZeroBlockDetector(blockSize: blockSize, hasher: hasher)
        var free = Array((0..<depth).reversed())
        var slotOffset = Array(repeating: UInt64(0), count: depth)
        var arrived: [UInt64: (slot: Int, bytes: Int)] = [:]
        var next: UInt64 = 0
        var checked: UInt64 = 0
        var runs: [Range<UInt64>] = []
        let alignment = UInt64(source.alignment)
        while checked < sourceSize {
            if next < sourceSize, let slot = free.popLast() {
                let length = min(UInt64(chunk), (sourceSize - next + alignment - 1) / alignment * alignment)
                slotOffset[slot] = next
                pump.read(fd: source.fd, path: source.path, into: slots.slot(slot), length: Int(length), at: next, tag: slot)
                next += UInt64(chunk)
                continue
            }
            // Reads complete in any order; they are compared in order, as the point's hashes come.
            while arrived[checked] == nil {
                let (slot, bytes) = try pump.next()
                arrived[slotOffset[slot]] = (slot, bytes)
            }
            let (slot, bytes) = arrived.removeValue(forKey: checked)!
            let offset = checked
            let valid = Int(min(UInt64(chunk), sourceSize - offset))
            guard bytes >= valid else {
                throw ChainError.targetUnavailable(path: source.path, reason: "it ended at byte \(offset + UInt64(bytes)) when read")
            }
            let base = slots.slot(slot)
            let blocks = (valid + blockSize - 1) / blockSize
            if blocks * blockSize > valid { (base + valid).initializeMemory(as: UInt8.self, repeating: 0, count: blocks * blockSize - valid) }
            try compare(base, firstBlock: offset / UInt64(blockSize), count: blocks, detector: detector, into: &runs)
            free.append(slot)
            checked += UInt64(valid)
            bytesCompared = checked
            // The last run may go on into the next chunk: it is given once it has ended.
            if let last = runs.last, last.upperBound == offset / UInt64(blockSize) + UInt64(blocks), checked < sourceSize {
                if runs.count > 1 { try differing(Array(runs.dropLast())) }
                runs.removeFirst(runs.count - 1)
            } else if !runs.isEmpty {
                try differing(runs)
                runs.removeAll(keepingCapacity: true)
            }
            progress?(checked, sourceSize)
        }
        if !runs.isEmpty { try differing(runs) }
        try endFreeRun()
    }

    /// Counts a free block not compared; for `discard`, adds its bytes to the run being gathered.
    private func leaveFree(_ bytes: Range<UInt64>) throws {
        freeBlockCount += 1
        guard case .discard = freeBlocks else { return }
        if let run = freeRun, run.upperBound == bytes.lowerBound {
            freeRun = run.lowerBound..<bytes.upperBound
        } else {
            try endFreeRun()
            freeRun = bytes
        }
    }

    /// Gives the free run being gathered to `discard`, if any.
    private func endFreeRun() throws {
        guard let run = freeRun else { return }
        freeRun = nil
        if case .discard(let discard) = freeBlocks { try discard(run) }
    }

    private func compare(
        _ base: UnsafeRawPointer, firstBlock: UInt64, count: Int, detector: ZeroBlockDetector, into runs: inout [Range<UInt64>]
    ) throws {
        try expectedHashes(from: firstBlock, count: count)
        let bs = UInt64(blockSize)
        for b in 0..<count {
            let block = firstBlock + UInt64(b)
            var want = block == blockCount - 1 ? tailHash ?? expected[b] : expected[b]
            if want == .free {
                if case .zeros = freeBlocks { want = .zero } else {
                    try leaveFree(block * bs..<min(sourceSize, (block + 1) * bs))
                    continue
                }
            }
            if want == .unreadable {
                unreadableRanges.appendJoining(block * bs..<min(sourceSize, (block + 1) * bs))
                unreadableBlocks += 1
                want = .zero
            }
            guard detector.hash(base + b * blockSize) != want else { continue }
            differingBlocks += 1
            if firstDiffering == nil { firstDiffering = block }
            let unit = block / unitBlocks * unitBlocks
            let run = unit..<min(unit + unitBlocks, blockCount)
            if let last = runs.last, last.upperBound >= run.lowerBound {
                runs[runs.count - 1] = last.lowerBound..<max(last.upperBound, run.upperBound)
            } else {
                runs.append(run)
            }
        }
    }

    /// Sets `expected` to the point's hashes of the target's blocks `first..<first + count` (a run of the point's
    /// hash chunks may start anywhere in one when the target is a partition: asked for a chunk at a time).
    private func expectedHashes(from first: UInt64, count: Int) throws {
        expected.removeAll(keepingCapacity: true)
        let per = UInt64(HashMapHeader.chunkBlocks)
        var block = base + first, left = count
        while left > 0 {
            let n = min(left, Int(per - block % per))
            expected.append(contentsOf: UnsafeBufferPointer(start: try hashes.hashes(from: block, count: n), count: n))
            (block, left) = (block + UInt64(n), left - n)
        }
    }
}
