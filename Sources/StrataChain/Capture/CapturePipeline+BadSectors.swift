// Capture past bad sectors (`--max-bad-blocks`). The I/O thread gets a failed read back with its slot
// (IOPump.nextOutcome); for a media error it calls `rescue`, which reads the chunk again synchronously in
// halves down to the source's logical block size. Blocks still unreadable there are zeroed in the slot and
// listed; the workers give them `BlockHash.unreadable` and the coordinator records unreadable extents.
// Bisection costs about one extra read of the chunk plus two small reads per level for each bad spot.
import StrataIO

extension CapturePipeline {
    /// Reads the part of a slot's piece whose read failed again, in halves down to the source's logical block
    /// size, and records the blocks that stay unreadable (zeroed in the slot). Synchronous: bad sectors are rare
    /// and slow anyway.
    func rescue(_ slot: Int, part: Range<UInt64>) throws {
        let chunkOffset = slotPiece[slot].offset
        let start = Int(part.lowerBound - chunkOffset), valid = Int(part.upperBound - chunkOffset)
        let unit = source.alignment
        let base = slots.slot(slot)
        var bad: [Int] = []
        func read(_ lo: Int, _ hi: Int) throws {
            do {
                let n = try source.readSynchronously(into: base + lo, count: hi - lo, at: source.physical(chunkOffset + UInt64(lo)))
                if lo + n < min(hi, valid) {
                    throw ChainError.sourceUnavailable(path: source.path, reason: "it ended early, at byte \(chunkOffset + UInt64(lo + n))")
                }
            } catch let e as IOError where e.isMediaError {
                if hi - lo > unit {
                    let mid = lo + (hi - lo) / unit / 2 * unit
                    try read(lo, mid)
                    try read(mid, hi)
                    return
                }
                for b in lo / blockSize..<min((hi + blockSize - 1) / blockSize, (valid + blockSize - 1) / blockSize)
                where bad.last.map({ $0 < b }) ?? true { bad.append(b) }
            }
        }
        let length = (valid + unit - 1) / unit * unit
        try read(start, min(length, slots.slotSize))
        let firstBlock = chunkOffset / UInt64(blockSize)
        for b in bad {
            let block = firstBlock + UInt64(b)
            (base + b * blockSize).initializeMemory(as: UInt8.self, repeating: 0, count: blockSize)
            unreadableRanges.appendJoining(block..<block + 1)
        }
        if unreadableBlocks + UInt64(bad.count) > UInt64(options.maxBadBlocks) {
            let first = unreadableRanges.map(\.lowerBound).min()! * UInt64(blockSize)
            throw ChainError.tooManyBadBlocks(path: source.path, limit: options.maxBadBlocks, firstAt: first)
        }
        unreadableBlocks += UInt64(bad.count)
        slotUnreadable[slot] += bad
    }
}
