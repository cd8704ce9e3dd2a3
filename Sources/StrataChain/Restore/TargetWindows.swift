// The write side of a restore: 1 MiB output windows, filled in order and written with aligned writes, several in
// flight. A file target gets only its data runs written (zeros stay holes; the file is truncated to size at the
// end); a device gets every data window written and all-zero windows cleared with BLKZEROOUT. A sparse output
// (restore --delta) is given only the runs that differ: a window ends where a run does, and zero runs are
// cleared (a hole punched in the file, BLKZEROOUT on a device) rather than assumed.
import StrataIO

final class TargetWindows {
    private let target: RestoreTarget
    private let pump: IOPump
    private let windows: AlignedSlab
    private let windowSize: Int
    private let sourceSize: UInt64
    private let alignment: Int

    private var freeWindows: [Int]
    private var pendingWrites: [Int]
    private var freeTags: [Int]
    private var tagWindow: [Int]

    private var current = -1
    private var windowOffset: UInt64 = 0
    private var fill = 0
    private var runs: [(start: Int, end: Int)] = []
    private var writes: [(Int, Int)] = []  // reused by every flush: no allocation per window
    private var zeroRange: Range<UInt64>? = nil
    private let sparse: Bool
    /// Bytes given to writes and to zeroing so far.
    private(set) var bytesWritten: UInt64 = 0

    init(target: RestoreTarget, queue: IOQueue, depth: Int, windowSize: Int, sourceSize: UInt64, sparse: Bool = false) {
        self.sparse = sparse
        self.target = target
        self.windowSize = windowSize
        self.sourceSize = sourceSize
        alignment = target.direct ? target.alignment : 1
        let count = max(2, depth)
        windows = AlignedSlab(slotSize: windowSize, slotCount: count, alignment: max(4096, target.alignment))
        freeWindows = Array((0..<count).reversed())
        pendingWrites = Array(repeating: 0, count: count)
        let tags = count * 8
        freeTags = Array((0..<tags).reversed())
        tagWindow = Array(repeating: 0, count: tags)
        pump = IOPump(queue: queue, maxTags: tags)
        if let uring = queue as? URingQueue { uring.register(base: windows.base, length: windows.byteCount) }
        runs.reserveCapacity(windowSize / 512)
        writes.reserveCapacity(windowSize / 512)
    }

    deinit { (pump.queue as? URingQueue)?.unregister(base: windows.base) }

    /// Where to put the bytes for `offset` (which continues the previous call's, unless the output is sparse),
    /// and how much room is left.
    func window(at offset: UInt64) throws -> (UnsafeMutableRawPointer, Int) {
        if sparse && current >= 0 && offset != windowOffset + UInt64(fill) { try flush() }
        if current < 0 {
            while freeWindows.isEmpty { try reapOne() }
            current = freeWindows.removeLast()
            windowOffset = offset
            fill = 0
            runs.removeAll(keepingCapacity: true)
        }
        precondition(offset == windowOffset + UInt64(fill), "restore output out of order")
        return (windows.slot(current) + fill, windowSize - fill)
    }

    var windowFull: Bool { fill == windowSize }

    /// Skips whole windows of zeros starting at `offset` (at a window boundary, between windows) without
    /// touching memory: nothing for a file (a hole), one BLKZEROOUT range for a device. A sparse output clears
    /// the whole range instead, wherever its ends lie on the target's units (a hole punched, BLKZEROOUT, or
    /// write-zeroes). Returns bytes skipped; what is not skipped goes through a window as zeros.
    func skipZeros(at offset: UInt64, upTo length: UInt64) throws -> UInt64 {
        if sparse {
            let range = offset..<min(sourceSize, offset + length)
            guard canClear(range) else { return 0 }
            try zeroLater(range)
            return length
        }
        guard current < 0, offset % UInt64(windowSize) == 0, offset + UInt64(windowSize) <= sourceSize else { return 0 }
        let n = min(length, sourceSize - offset) / UInt64(windowSize) * UInt64(windowSize)
        guard n > 0 else { return 0 }
        if target.isDeviceLike { try zeroLater(offset..<(offset + n)) }
        return n
    }

    func markData(bytes: Int) {
        if let last = runs.last, last.end == fill {
            runs[runs.count - 1].end = fill + bytes
        } else {
            runs.append((fill, fill + bytes))
        }
        fill += bytes
    }

    /// Zeros in the window: left as holes in a new file, written in a sparse output (the file holds old data).
    func markZero(bytes: Int) {
        (windows.slot(current) + fill).initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        if sparse { return markData(bytes: bytes) }
        fill += bytes
    }

    /// Writes the current window's data (asynchronously) and starts a new window at the next call.
    func flush() throws {
        guard current >= 0 else { return }
        let window = current
        current = -1
        let base = windows.slot(window)
        let limit = Int(min(UInt64(fill), sourceSize - windowOffset))
        let roundedLimit = (limit + alignment - 1) / alignment * alignment
        if roundedLimit > fill { (base + fill).initializeMemory(as: UInt8.self, repeating: 0, count: roundedLimit - fill) }
        if runs.isEmpty {
            if target.isDeviceLike { try zeroLater(windowOffset..<(windowOffset + UInt64(roundedLimit))) }
            freeWindows.append(window)
            return
        }
        try flushZeroRange()
        writes.removeAll(keepingCapacity: true)
        if target.isDeviceLike {
            writes.append((0, roundedLimit))
        } else {
            for r in runs where r.start < limit {
                let start = r.start / alignment * alignment
                let end = min(roundedLimit, (min(r.end, limit) + alignment - 1) / alignment * alignment)
                if let last = writes.last, last.1 >= start { writes[writes.count - 1].1 = max(last.1, end) } else { writes.append((start, end)) }
            }
        }
        for (start, end) in writes {
            while freeTags.isEmpty { try reapOne() }
            let tag = freeTags.removeLast()
            tagWindow[tag] = window
            pendingWrites[window] += 1
            pump.write(fd: target.fd, path: target.path, from: base + start, length: end - start, at: windowOffset + UInt64(start), tag: tag)
            bytesWritten += UInt64(end - start)
        }
    }

    /// Whether a sparse output can clear `range`: its ends on the target's units (or the end of the source).
    private func canClear(_ range: Range<UInt64>) -> Bool {
        let unit = UInt64(target.isDeviceLike ? max(alignment, 512) : alignment)
        return range.lowerBound % unit == 0 && (range.upperBound % unit == 0 || range.upperBound == sourceSize)
    }

    /// Adds a range to the pending BLKZEROOUT, issuing the pending one first if the two do not touch.
    private func zeroLater(_ r: Range<UInt64>) throws {
        if let z = zeroRange, z.upperBound == r.lowerBound {
            zeroRange = z.lowerBound..<r.upperBound
        } else {
            try flushZeroRange()
            zeroRange = r
        }
    }

    private func flushZeroRange() throws {
        if let z = zeroRange, !z.isEmpty {
            try target.zero(offset: z.lowerBound, length: UInt64(z.count))
            if target.isDeviceLike || target.keepsContent { bytesWritten += UInt64(z.count) }
        }
        zeroRange = nil
    }

    private func reapOne() throws {
        let (tag, _) = try pump.next()
        freeTags.append(tag)
        let w = tagWindow[tag]
        pendingWrites[w] -= 1
        if pendingWrites[w] == 0 { freeWindows.append(w) }
    }

    /// Writes what is left, waits for every write, sets a file's length, and makes it durable.
    func finish() throws {
        try flush()
        try flushZeroRange()
        while pump.inFlight > 0 { try reapOne() }
        try target.setLength(sourceSize)
        try target.sync()
    }
}
