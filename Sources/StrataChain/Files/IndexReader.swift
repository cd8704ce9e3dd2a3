// An image's index as its readers see it, a piece at a time. A chunked index (every image this version writes)
// keeps only its top-level table in memory: frame records come from frame chunks read on demand through a small
// cache (shared by the threads of a pipeline, so behind a lock), extent records from extent chunks an
// `ExtentCursor` reads in block order. An index of the first format (one table, read whole) answers the same
// questions from memory: such images keep their old cost until a merge or a new full rewrites them.
import StrataCodec
import StrataFormat
import StrataIO

final class IndexReader {
    private enum Source {
        case whole(ImageIndex)
        case chunked(TopIndex)
    }

    let name: String
    let header: ImageHeader
    private let object: StoredObject
    private let source: Source
    /// The longest frame and the most blocks a frame holds: what readers size their buffers by.
    let maxFrameLength: Int
    let maxFrameBlocks: Int

    /// The last four frame chunks (4096 records, 128 KiB, each) and extent chunks (8192, 192 KiB) read, decoded:
    /// frames are read in about file order, at most a few places at once (a merged image's copied frames and its
    /// re-packed ones), and random reads of a point land in the same chunks again. Shared by a pipeline's threads.
    private let frameChunks = ChunkCache<FrameRecord>(capacity: 4)
    private let extentChunks = ChunkCache<ExtentRecord>(capacity: 4)

    /// An encrypted image's keys; nil without them (frame records are read unchecked by their tags, extents not at all).
    private let keys: ChainKeys?

    init(name: String, header h: ImageHeader, object: StoredObject, keys: ChainKeys?) throws {
        self.name = name
        header = h
        self.object = object
        self.keys = keys
        let bytes = try Self.read(object, h.indexOffset, Int(h.indexLength), what: "image index")
        if h.isChunked {
            let top = try TopIndex.decode(bytes, header: h)
            if h.isEncrypted, let keys {
                guard h.chainID.bytes == keys.chainID else { throw ChainError.damaged(file: name, detail: "it belongs to another chain (\(h.chainID))") }
                guard keys.authenticator(IndexSealing.headerParts(h, table: bytes), length: 32) == h.authenticator else {
                    throw FormatError.invalid("the image's header and index fail authentication with this chain's key")
                }
            }
            source = .chunked(top)
            maxFrameLength = Int(top.maxFrameLength)
            maxFrameBlocks = Int(max(ImageHeader.maxBlockSize / h.blockSize, 1))
        } else {
            let index = try ImageIndex.decode(bytes, header: h)
            source = .whole(index)
            maxFrameLength = Int(index.frames.map(\.length).max() ?? 0)
            maxFrameBlocks = Int(index.frames.map(\.blockCount).max() ?? 0)
        }
    }

    var frameCount: Int { Int(header.frameCount) }

    /// Frame `n`'s record (n < frameCount).
    func frame(_ n: UInt32) throws -> FrameRecord {
        switch source {
        case .whole(let index): return index.frames[Int(n)]
        case .chunked(let top):
            let c = Int(n) / Int(top.framesPerChunk)
            let records = try frameChunks.get(c) {
                let entry = top.frameChunks[c]
                do {
                    return try IndexChunks.decodeFrames(Self.read(object, entry.offset, Int(entry.length)), chunk: c, of: top, header: header) {
                        try IndexSealing.openFrameChunk($0, chunk: c, header: self.header, keys: self.keys)
                    }
                } catch {
                    throw damaged(name, error)
                }
            }
            return records[Int(n) % Int(top.framesPerChunk)]
        }
    }

    /// How many extent chunks the index has (a one-table index: one).
    var extentChunkCount: Int {
        switch source {
        case .whole(let index): return index.extents.isEmpty ? 0 : 1
        case .chunked(let top): return top.extentChunks.count
        }
    }

    /// The number of extent chunk `c`'s first extent.
    func firstExtent(ofChunk c: Int) -> Int {
        switch source {
        case .whole: return 0
        case .chunked(let top): return c * Int(top.extentsPerChunk)
        }
    }

    /// The extent chunk holding `block`, or the first after it.
    func extentChunk(atOrAfter block: UInt64) -> Int {
        switch source {
        case .whole(let index): return index.extents.last.map { $0.endBlock > block ? 0 : 1 } ?? 0
        case .chunked(let top): return top.extentChunk(atOrAfter: block)
        }
    }

    /// A block at which at most `n` of the extents from `block` on (and one chunk more) lie before it, past
    /// `block`: where a window of about `n` extents ends (UInt64.max when they all fit).
    func block(after n: Int, from block: UInt64) -> UInt64 {
        switch source {
        case .whole(let index):
            let lo = index.extents.firstEnding(after: block, \.endBlock)
            return n < index.extents.count - lo ? index.extents[lo + n].firstBlock : .max
        case .chunked(let top):
            var held = 0
            for c in top.extentChunk(atOrAfter: block)..<top.extentChunks.count {
                held += Int(top.extentChunks[c].count)
                if held >= n { return top.extentChunks[c].endBlock }
            }
            return .max
        }
    }

    /// The extents of chunk `c`, read and checked.
    func extents(chunk c: Int) throws -> [ExtentRecord] {
        switch source {
        case .whole(let index): return index.extents
        case .chunked(let top):
            return try extentChunks.get(c) {
                let entry = top.extentChunks[c]
                do {
                    return try IndexChunks.decodeExtents(Self.read(object, entry.offset, Int(entry.length)), chunk: c, of: top, header: header) {
                        try IndexSealing.openExtentChunk($0, chunk: c, header: self.header, keys: self.keys, name: self.name)
                    }
                } catch {
                    throw damaged(name, error)
                }
            }
        }
    }

    /// Every extent, in order, a chunk at a time.
    func forEachExtent(_ body: (ExtentRecord) throws -> Void) throws {
        for c in 0..<extentChunkCount { for e in try extents(chunk: c) { try body(e) } }
    }

    /// Reads and checks every chunk, and what no single chunk can show: that each data extent stays inside its
    /// frame, that extents use each frame's blocks in order without overlap, and every block of a frame (without
    /// the sparseFrames bit; with it, some). Four bytes a frame. (A one-table index was checked whole when read.)
    func checkWhole() throws {
        guard case .chunked = source else { return }
        let sparse = header.incompatibleFeatures & ImageFeatures.sparseFrames != 0
        var use = [UInt32](repeating: 0, count: frameCount)
        var i = 0
        try forEachExtent { e in
            defer { i += 1 }
            guard e.kind == .data else { return }
            let r = try frame(e.frame)
            do { try e.check(inside: r, number: i) } catch { throw damaged(name, error) }
            guard sparse ? e.frameBlock >= use[Int(e.frame)] : e.frameBlock == use[Int(e.frame)] else {
                throw ChainError.damaged(file: name, detail: "extent \(i) points outside its frame")
            }
            use[Int(e.frame)] = e.frameBlock + e.blockCount
        }
        for f in 0..<frameCount {
            let r = try frame(UInt32(f))
            guard sparse ? use[f] > 0 : use[f] == r.blockCount else {
                throw ChainError.damaged(file: name, detail: "a frame holds blocks that no extent uses")
            }
        }
    }

    private static func read(_ object: StoredObject, _ offset: UInt64, _ length: Int, what: String = "index chunk") throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: length)
        let n = try bytes.withUnsafeMutableBytes { try object.read(into: $0.baseAddress!, count: $0.count, at: offset) }
        guard n == length else { throw FormatError.truncated("\(what) at byte \(offset)", at: UInt64(n)) }
        return bytes
    }

    /// Decoded chunks, least recently used out, behind a lock (decoding happens outside it: two threads may
    /// decode the same chunk at once, and one copy stays).
    private final class ChunkCache<Record> {
        private let lock = Condition()
        private let capacity: Int
        private var entries: [(chunk: Int, records: [Record], used: Int)] = []
        private var clock = 0

        init(capacity: Int) { self.capacity = capacity }

        func get(_ c: Int, load: () throws -> [Record]) throws -> [Record] {
            if let hit = lock.withLock({ () -> [Record]? in
                clock += 1
                guard let k = entries.firstIndex(where: { $0.chunk == c }) else { return nil }
                entries[k].used = clock
                return entries[k].records
            }) { return hit }
            let records = try load()
            lock.withLock {
                if !entries.contains(where: { $0.chunk == c }) {
                    if entries.count >= capacity { entries.remove(at: entries.indices.min { entries[$0].used < entries[$1].used }!) }
                    entries.append((c, records, clock))
                }
            }
            return records
        }
    }
}

/// Reads an image's extents forward in block order, a chunk at a time, and hands them out clipped to the ranges
/// asked for. Each data extent is checked against its frame's record (that it stays inside the frame) once.
struct ExtentCursor {
    let index: IndexReader
    private var chunk: Int
    private var records: [ExtentRecord] = []
    private var i = 0
    private var checked = -1
    /// Blocks before this have been handed out.
    private(set) var position: UInt64

    init(_ index: IndexReader, from block: UInt64 = 0) {
        self.index = index
        chunk = index.extentChunk(atOrAfter: block) - 1
        position = block
    }

    /// Appends the extents (or parts of them) between `position` and `end` to `out`, and moves to `end`.
    mutating func take(upTo end: UInt64, into out: inout [ExtentRecord]) throws {
        while position < end {
            if i == records.count {
                guard chunk + 1 < index.extentChunkCount else { break }
                chunk += 1
                records = try index.extents(chunk: chunk)
                i = records.firstEnding(after: position, \.endBlock)
                checked = -1
                continue
            }
            let e = records[i]
            if e.firstBlock >= end { break }
            if e.kind == .data && checked < i {
                do { try e.check(inside: index.frame(e.frame), number: index.firstExtent(ofChunk: chunk) + i) } catch {
                    throw damaged(index.name, error)
                }
                checked = i
            }
            let start = max(e.firstBlock, position), stop = min(e.endBlock, end)
            if start < stop {
                var piece = e
                piece.firstBlock = start
                piece.blockCount = UInt32(stop - start)
                if e.kind == .data { piece.frameBlock = e.frameBlock + UInt32(start - e.firstBlock) }
                out.append(piece)
            }
            if e.endBlock <= end { i += 1 } else { break }
        }
        position = max(position, end)
    }
}
