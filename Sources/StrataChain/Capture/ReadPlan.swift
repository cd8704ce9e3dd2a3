// What a capture reads, in order, as pieces of at most one request that never cross the request grid (so a
// piece's hashes never straddle a hash-map chunk). A scan reads every chunk of the source, holes of a sparse file
// announced as zeros without a read. With a change source's answer, it reads the ranges that can have changed
// (widened to whole blocks and O_DIRECT units), the blocks the last verify found damaged, and a sample of the
// rest: runs of `sampleRun` bytes chosen at random, each with the chance `--check-unchanged` gives, whose
// hashes must equal the map's, or the source missed writes.
import StrataIO

struct ReadPiece: Equatable {
    var offset: UInt64
    var length: Int
    /// A hole of a sparse file: zeros, not read.
    var hole = false
    /// With `hole`: blocks no filesystem on the source uses (a chain of used blocks): not read, `BlockHash.free`.
    var free = false
    /// Read to check blocks the change source called unchanged.
    var sample = false
    /// Read to check a range the source called zeros (an NBD server's block status): every block must be zero.
    var expectZero = false
    /// Ranges inside a read piece that no filesystem uses (a chain of used blocks): not read, `BlockHash.free`.
    /// Sorted and apart, each strictly inside the piece, so that the piece is `unread.count + 1` reads (`part`).
    var unread: [Range<UInt64>] = []

    /// How many reads the piece is (a hole: none).
    var partCount: Int { hole ? 0 : unread.count + 1 }

    /// The `k`th of the piece's reads, between its unread ranges.
    func part(_ k: Int) -> Range<UInt64> {
        (k == 0 ? offset : unread[k - 1].upperBound)..<(k == unread.count ? offset + UInt64(length) : unread[k].lowerBound)
    }

    /// The most reads one piece gathers (a chunk of used runs with free blocks between them is one piece of this
    /// many reads, not as many pieces: each piece costs every stage a hand-off).
    static let maxParts = 16
}

protocol ReadPlan: AnyObject {
    /// The next piece in source order, or nil at the end.
    func next() throws -> ReadPiece?
}

/// Every chunk of the source, holes (`dataChunks`, in chunks) announced without a read. Where the holes are a
/// server's word (an NBD export's block status) rather than the kernel's, `checkHoles` is the share of them to
/// read anyway, chosen as ChangePlan chooses its sample (whole runs of `ChangePlan.sampleRun`): each must read
/// as zeros.
final class ScanPlan: ReadPlan {
    private let size: UInt64
    private let requestSize: Int
    private let dataChunks: [Range<Int>]
    private let chunkCount: Int
    private var chunk = 0
    private var rangeIndex = 0
    private let threshold: UInt64
    private let seed: UInt64

    init(size: UInt64, requestSize: Int, dataChunks: [Range<Int>], checkHoles percent: Double = 0, seed: UInt64 = 0) {
        self.size = size
        self.requestSize = requestSize
        self.dataChunks = dataChunks
        chunkCount = Int((size + UInt64(requestSize) - 1) / UInt64(requestSize))
        threshold = sampleThreshold(percent)
        self.seed = seed
    }

    func next() throws -> ReadPiece? {
        guard chunk < chunkCount else { return nil }
        defer { chunk += 1 }
        while rangeIndex < dataChunks.count && dataChunks[rangeIndex].upperBound <= chunk { rangeIndex += 1 }
        let isData = rangeIndex < dataChunks.count && dataChunks[rangeIndex].contains(chunk)
        let offset = UInt64(chunk) * UInt64(requestSize)
        let piece = ReadPiece(offset: offset, length: Int(min(UInt64(requestSize), size - offset)), hole: !isData)
        if piece.hole && threshold > 0 && sampleMix(seed ^ (offset / ChangePlan.sampleRun)) <= threshold {
            return ReadPiece(offset: piece.offset, length: piece.length, expectZero: true)
        }
        return piece
    }
}

/// The hash value below which a run is sampled, for a share of `percent`.
func sampleThreshold(_ percent: Double) -> UInt64 {
    let share = min(max(percent, 0), 100) / 100
    return share >= 1 ? .max : UInt64(share * Double(UInt64(1) << 53)) << 11
}

/// splitmix64's finaliser: a well-spread 64-bit hash of a run's number.
func sampleMix(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// The changed ranges (and the damaged blocks to heal), widened to `unit`, and a sample of the rest. In a chain of
/// used blocks (`used`: what the filesystems use now, `freeBefore`: what the newest point holds as free), it reads
/// the changed ranges only where used now, and also every block used now that was free (a block a filesystem took
/// without writing it, as fallocate does, holds bytes the point does not have); it announces as free, without a
/// read, what was used and is free now (and damaged blocks that are free now); and it samples only blocks used both
/// then and now, the ones it keeps.
final class ChangePlan: ReadPlan {
    static let sampleRun: UInt64 = 4 << 20

    private let size: UInt64
    private let requestSize: UInt64
    private let unit: UInt64
    private let changed: any ChangedRanges
    private var heal: [Range<UInt64>]
    private let threshold: UInt64  // a run is sampled when its hash is below this
    private let seed: UInt64
    private var position: UInt64 = 0
    private var current: Range<UInt64>?  // the changed range at or after `position`
    private var pendingChanged: Range<UInt64>?  // the change source's next range, not yet widened
    private var lookahead: Range<UInt64>?  // the next range to read after `current`, widened
    private var changedDone = false
    private var run: UInt64 = 0  // the next sample run to consider
    private var sampleRange: Range<UInt64>?
    private let used: [Range<UInt64>]?
    private var usedIndex = 0
    private let announce: [Range<UInt64>]
    private var announceIndex = 0
    /// Bytes planned: changed (with healing) and sampled.
    private(set) var changedBytes: UInt64 = 0
    private(set) var sampledBytes: UInt64 = 0

    /// `samplePercent`: the share of the unchanged bytes to read as a check, 0-100. `heal`, `used` (whole units),
    /// `freeBefore`: byte ranges, sorted and disjoint.
    init(
        size: UInt64, requestSize: Int, unit: Int, changed: any ChangedRanges, heal: [Range<UInt64>], samplePercent: Double, seed: UInt64,
        used: [Range<UInt64>]? = nil, freeBefore: [Range<UInt64>] = []
    ) {
        self.size = size
        self.requestSize = UInt64(requestSize)
        self.unit = UInt64(unit)
        threshold = sampleThreshold(samplePercent)
        self.seed = seed
        self.used = used
        if let used {
            let freeNow = complementRanges(used, size: size)
            self.changed = IntersectedRanges(changed, used, size: size)
            var read = intersectRanges(heal, used)
            for r in intersectRanges(used, freeBefore) { read.append(r) }
            read.sort { $0.lowerBound < $1.lowerBound }
            self.heal = read.reversed()
            // Free now, and used then or damaged: what stays free and whole needs nothing.
            announce = subtractRanges(freeNow, subtractRanges(freeBefore, heal))
        } else {
            self.changed = changed
            self.heal = heal.reversed()
            announce = []
        }
    }

    func next() throws -> ReadPiece? {
        guard position < size else { return nil }
        let c = try nextChanged()
        let s = nextSample()
        let f = nextAnnounced()
        guard let start = [c?.lowerBound, s?.lowerBound, f?.lowerBound].compactMap({ $0 }).min() else { return nil }
        let gridEnd = (start / requestSize + 1) * requestSize
        let piece: ReadPiece
        if let c, c.contains(start) {
            piece = ReadPiece(offset: start, length: Int(min(c.upperBound, gridEnd) - start))
            changedBytes += UInt64(piece.length)
        } else if let f, f.contains(start) {
            // (Free now, used then: apart from every range read and every sample, which lie in used blocks.)
            let end = min(f.upperBound, gridEnd, c?.lowerBound ?? .max, s?.lowerBound ?? .max)
            piece = ReadPiece(offset: start, length: Int(end - start), hole: true, free: true)
        } else {
            let end = min(s!.upperBound, c?.lowerBound ?? .max, gridEnd)
            piece = ReadPiece(offset: start, length: Int(end - start), sample: true)
            sampledBytes += UInt64(piece.length)
        }
        position = piece.offset + UInt64(piece.length)
        return piece
    }

    /// The changed range at or after `position` (clipped to start there), widened to whole units.
    private func nextChanged() throws -> Range<UInt64>? {
        while true {
            if let r = current, r.upperBound > position { return max(r.lowerBound, position)..<r.upperBound }
            current = nil
            guard var r = try lookahead.take() ?? pull() else { return nil }
            // Join what touches or overlaps after widening: one range, so pieces never overlap.
            while let following = try pull() {
                if following.lowerBound <= r.upperBound {
                    r = r.lowerBound..<max(r.upperBound, following.upperBound)
                } else {
                    // Kept apart from pendingChanged: it may be a range to heal, and the changed range pending
                    // behind it must not be lost (it was, before: a capture healing damaged blocks read less).
                    lookahead = following
                    break
                }
            }
            current = r
        }
    }

    /// The next changed or damaged range, widened, in order (both lists are sorted).
    private func pull() throws -> Range<UInt64>? {
        if pendingChanged == nil && !changedDone {
            if let r = try changed.next() {
                guard r.lowerBound <= r.upperBound, r.upperBound <= size else {
                    throw ChainError.sourceUnavailable(path: "the change source", reason: "it named bytes \(r.lowerBound)..<\(r.upperBound), beyond the source's \(size)")
                }
                pendingChanged = r
            } else {
                changedDone = true
            }
        }
        let pick: Range<UInt64>
        if let h = heal.last, pendingChanged.map({ h.lowerBound <= $0.lowerBound }) ?? true {
            pick = heal.removeLast()
        } else if let p = pendingChanged {
            pick = p
            pendingChanged = nil
        } else {
            return nil
        }
        if pick.isEmpty { return try pull() }
        let lo = pick.lowerBound / unit * unit
        let hi = min((pick.upperBound + unit - 1) / unit * unit, size)
        return lo..<hi
    }

    /// The range announced free at or after `position`, clipped to start there.
    private func nextAnnounced() -> Range<UInt64>? {
        while announceIndex < announce.count && announce[announceIndex].upperBound <= position { announceIndex += 1 }
        guard announceIndex < announce.count else { return nil }
        return max(announce[announceIndex].lowerBound, position)..<announce[announceIndex].upperBound
    }

    /// The sampled run at or after `position`, clipped to start there (and, in a chain of used blocks, to the
    /// used blocks in it: one used range of it at a time).
    private func nextSample() -> Range<UInt64>? {
        guard threshold > 0 else { return nil }
        while true {
            if let r = sampleRange, r.upperBound > position {
                let from = max(r.lowerBound, position)
                guard let used else { return from..<r.upperBound }
                while usedIndex < used.count && used[usedIndex].upperBound <= from { usedIndex += 1 }
                if usedIndex < used.count && used[usedIndex].lowerBound < r.upperBound {
                    return max(from, used[usedIndex].lowerBound)..<min(r.upperBound, used[usedIndex].upperBound)
                }
            }
            sampleRange = nil
            run = max(run, position / Self.sampleRun)
            var found = false
            while run * Self.sampleRun < size {
                let k = run
                run += 1
                if sampleMix(seed ^ k) <= threshold {
                    sampleRange = k * Self.sampleRun..<min((k + 1) * Self.sampleRun, size)
                    if sampleRange!.upperBound > position { found = true; break }
                }
            }
            if !found { return nil }
        }
    }
}


/// A capture of used blocks: the used ranges (widened to `unit` and joined) read, except where a sparse file has
/// holes (`data`: its data ranges, nil for a device), which are zeros; the rest announced as free without a read;
/// in pieces that never cross the request grid. Used runs of one chunk with free blocks between them are read as
/// one piece of up to `ReadPiece.maxParts` reads, the free blocks between them its `unread` ranges: a filesystem
/// deleted down from full leaves its used blocks in many short runs (docs/DESIGN.md, "A chain of used blocks").
final class UsedPlan: ReadPlan {
    private let size: UInt64
    private let requestSize: UInt64
    /// The used ranges, widened to whole units and joined.
    private(set) var used: [Range<UInt64>] = []
    private let data: [Range<UInt64>]?
    private var index = 0, dataIndex = 0
    private var position: UInt64 = 0
    /// Bytes planned to be read.
    private(set) var usedBytes: UInt64 = 0

    /// `used`, `data`: sorted, disjoint byte ranges.
    init(size: UInt64, requestSize: Int, unit: Int, used ranges: [Range<UInt64>], data: [Range<UInt64>]? = nil) {
        self.size = size
        self.requestSize = UInt64(requestSize)
        self.data = data
        let unit = UInt64(unit)
        for r in ranges {
            let lo = r.lowerBound / unit * unit, hi = min((r.upperBound + unit - 1) / unit * unit, size)
            if lo < hi { used.appendJoining(lo..<hi) }
        }
        usedBytes = intersectRanges(used, data ?? [0..<size]).reduce(0) { $0 + UInt64($1.count) }
    }

    func next() throws -> ReadPiece? {
        guard position < size else { return nil }
        let gridEnd = min((position / requestSize + 1) * requestSize, size)
        let piece: ReadPiece
        if let end = usedEnd(at: position, before: gridEnd) {
            if let hole = holeEnd(at: position, before: end) {
                // A hole of the sparse file inside a used range: zeros the filesystem uses.
                piece = ReadPiece(offset: position, length: Int(hole - position), hole: true)
            } else {
                piece = gather(from: position, firstEnd: dataEnd(at: position, before: end), gridEnd: gridEnd)
            }
        } else {
            let end = index < used.count ? min(used[index].lowerBound, gridEnd) : gridEnd
            piece = ReadPiece(offset: position, length: Int(end - position), hole: true, free: true)
        }
        position += UInt64(piece.length)
        return piece
    }

    /// The end (before `limit`) of the used range holding `at`, or nil where `at` is free.
    private func usedEnd(at: UInt64, before limit: UInt64) -> UInt64? {
        while index < used.count && used[index].upperBound <= at { index += 1 }
        guard index < used.count && used[index].lowerBound <= at else { return nil }
        return min(used[index].upperBound, limit)
    }

    /// The end (before `limit`) of the sparse file's hole at `at`, or nil where `at` holds data (or on a device).
    private func holeEnd(at: UInt64, before limit: UInt64) -> UInt64? {
        guard let data else { return nil }
        while dataIndex < data.count && data[dataIndex].upperBound <= at { dataIndex += 1 }
        if dataIndex < data.count && data[dataIndex].lowerBound <= at { return nil }
        return dataIndex < data.count ? min(limit, data[dataIndex].lowerBound) : limit
    }

    /// The end (before `limit`) of the data at `at` (which holds data).
    private func dataEnd(at: UInt64, before limit: UInt64) -> UInt64 {
        guard let data else { return limit }
        return min(limit, data[dataIndex].upperBound)
    }

    /// A piece from `start` (used data to `firstEnd`) on: further used runs of the chunk are gathered into it
    /// while the blocks before each are free, the run is data, and the piece has reads to spare. It ends where a
    /// run ends short of its used range's end (a hole follows), or at the chunk's end.
    private func gather(from start: UInt64, firstEnd: UInt64, gridEnd: UInt64) -> ReadPiece {
        var end = firstEnd
        var unread: [Range<UInt64>] = []
        while unread.count + 1 < ReadPiece.maxParts, end < gridEnd, index < used.count, used[index].upperBound == end {
            guard index + 1 < used.count, used[index + 1].lowerBound < gridEnd else { break }
            let next = used[index + 1].lowerBound
            guard holeEnd(at: next, before: gridEnd) == nil else { break }
            index += 1
            unread.append(end..<next)
            end = dataEnd(at: next, before: min(used[index].upperBound, gridEnd))
        }
        return ReadPiece(offset: start, length: Int(end - start), unread: unread)
    }
}

// MARK: Sorted, disjoint byte ranges

/// The parts of `a` that lie in `b` (both sorted and disjoint).
func intersectRanges(_ a: [Range<UInt64>], _ b: [Range<UInt64>]) -> [Range<UInt64>] {
    var out: [Range<UInt64>] = []
    var j = 0
    for r in a {
        while j < b.count && b[j].upperBound <= r.lowerBound { j += 1 }
        var k = j
        while k < b.count && b[k].lowerBound < r.upperBound {
            let lo = max(r.lowerBound, b[k].lowerBound), hi = min(r.upperBound, b[k].upperBound)
            if lo < hi { out.append(lo..<hi) }
            k += 1
        }
    }
    return out
}

/// What of 0..<size the ranges `a` (sorted, disjoint) leave.
func complementRanges(_ a: [Range<UInt64>], size: UInt64) -> [Range<UInt64>] {
    var out: [Range<UInt64>] = []
    var at: UInt64 = 0
    for r in a {
        if r.lowerBound > at { out.append(at..<min(r.lowerBound, size)) }
        at = max(at, r.upperBound)
    }
    if at < size { out.append(at..<size) }
    return out
}

/// The parts of `a` outside `b` (both sorted and disjoint).
func subtractRanges(_ a: [Range<UInt64>], _ b: [Range<UInt64>]) -> [Range<UInt64>] {
    intersectRanges(a, complementRanges(b, size: max(a.last?.upperBound ?? 0, b.last?.upperBound ?? 0)))
}

/// A change source's ranges, as they come, clipped to `within` (sorted, disjoint): what of them is used now. A
/// range that is not one or reaches past `size` comes through as it is, for ChangePlan to refuse.
final class IntersectedRanges: ChangedRanges {
    private let ranges: any ChangedRanges
    private let within: [Range<UInt64>]
    private let size: UInt64
    private var index = 0
    private var pending: Range<UInt64>?

    init(_ ranges: any ChangedRanges, _ within: [Range<UInt64>], size: UInt64) {
        self.ranges = ranges
        self.within = within
        self.size = size
    }

    func next() throws -> Range<UInt64>? {
        while true {
            if pending == nil {
                guard let r = try ranges.next() else { return nil }
                guard r.lowerBound <= r.upperBound, r.upperBound <= size else { return r }
                pending = r
            }
            let r = pending!
            while index < within.count && within[index].upperBound <= r.lowerBound { index += 1 }
            guard index < within.count, within[index].lowerBound < r.upperBound else {
                pending = nil
                continue
            }
            let w = within[index]
            pending = w.upperBound < r.upperBound ? w.upperBound..<r.upperBound : nil
            return max(r.lowerBound, w.lowerBound)..<min(r.upperBound, w.upperBound)
        }
    }
}
