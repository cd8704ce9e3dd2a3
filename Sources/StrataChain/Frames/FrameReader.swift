// The one way to read and check a frame, used by restore, merge and verify (and by random reads of a point
// next). A frame is named by a `FrameRef` (which opened image, which frame); `FrameReader` knows where each
// lies, reads it through the chain store (synchronously, or by starting a read on an I/O pump for the
// pipelines that keep many in flight) and checks what arrived: that all of it arrived, its checksum (which
// covers its block hashes and its payload), then, when asked, its payload decompressed into exactly its
// blocks and every block (or only those the caller takes) against the hash stored beside it. Errors name the
// image and the frame, and for a block, its number on the source.
import StrataCodec
import StrataFormat
import StrataIO

/// One frame of a set of opened images: the image's position in that set, and the frame's number in it.
struct FrameRef: Hashable, Comparable, Sendable {
    var image: Int
    var frame: UInt32

    init(image: Int, frame: UInt32) {
        self.image = image
        self.frame = frame
    }

    static func < (a: FrameRef, b: FrameRef) -> Bool { (a.image, a.frame) < (b.image, b.frame) }
}

/// How much of a frame to check.
enum FrameCheck {
    /// The checksum only (a frame copied byte for byte, `verify --checksums-only`).
    case checksum
    /// Checksum, decompression, and every block against its hash.
    case everyBlock
    /// Checksum and decompression; the caller checks the blocks it takes with `checkBlocks`.
    case decodeOnly
}

final class FrameReader {
    /// The images frames are read from; nil for one that could not be opened (verify goes on without it).
    let images: [ImageFile?]

    init(_ images: [ImageFile?]) { self.images = images }
    convenience init(_ images: [ImageFile]) { self.init(images.map { Optional($0) }) }

    func image(_ f: FrameRef) -> ImageFile { images[f.image]! }
    func record(_ f: FrameRef) throws -> FrameRecord { try image(f).index.frame(f.frame) }

    /// The largest stored frame and the most blocks in one frame of the opened images (buffer sizes), from their
    /// indexes' tables: no frame record is read.
    var largest: (stored: Int, blocks: Int) {
        let indexes = images.compactMap { $0?.index }
        return (indexes.map(\.maxFrameLength).max() ?? 0, indexes.map(\.maxFrameBlocks).max() ?? 0)
    }

    // MARK: Reading

    /// Reads the frame's stored bytes into `stored` through the store and checks that all arrived; with
    /// `hashesOnly`, only its block hashes (the first 16 bytes a block).
    func read(_ f: FrameRef, into stored: UnsafeMutableRawPointer, hashesOnly: Bool = false) throws {
        let r = try record(f)
        let n = try image(f).object.read(into: stored, count: Self.readLength(r, hashesOnly: hashesOnly), at: r.offset)
        try arrived(f, bytes: n, hashesOnly: hashesOnly)
    }

    /// The bytes a read of the frame (or of its hashes) covers: a sealed frame's hashes are read with it whole.
    static func readLength(_ r: FrameRecord, hashesOnly: Bool) -> Int { hashesOnly && !r.sealed ? r.hashesLength : Int(r.length) }

    /// Room a buffer for a hashes-only read of these images' frames needs.
    var hashesReadRoom: Int {
        images.contains { $0?.header.isEncrypted == true } ? max(largest.stored, 1) : max(largest.blocks * 16, 1)
    }

    /// After a hashes-only read: a sealed frame is checked and opened, so its hashes lie at `stored` as an
    /// unsealed frame's do. (An unsealed frame's hashes are checked against its blocks where they are used.)
    func openHashes(_ f: FrameRef, stored: UnsafeMutableRawPointer) throws {
        guard try record(f).sealed else { return }
        try check(f, stored: stored, .checksum)
        try open(f, stored: stored)
    }

    /// Opens a sealed frame in place (its checksum checked): its hashes and payload are then at `stored`.
    private func open(_ f: FrameRef, stored: UnsafeRawPointer) throws {
        let image = image(f)
        let r = try record(f)
        guard let keys = image.keys else { throw ChainError.keyNeeded(path: image.name) }
        guard keys.openFrame(UnsafeMutableRawPointer(mutating: stored), storedLength: Int(r.length)) else {
            throw ChainError.corruptData(file: image.name, detail: "frame \(f.frame) at byte \(r.offset) does not open with this chain's key (moved from another image or chain, or altered)")
        }
    }

    /// Starts reading the frame's stored bytes (or, `hashesOnly`, its block hashes) on `reads` (the store's)
    /// under `tag`; its completion goes to `arrived`. With `direct` (the buffer aligned to
    /// `StoredObjects.directAlignment`, with `directSlack` bytes of room beyond the frame) the read goes past
    /// the cache where the store can: it then covers the aligned pages around the frame, the frame starts the
    /// returned number of bytes into `stored`, and that number goes to `arrived`. Nil: the read was not direct.
    @discardableResult
    func startRead(_ f: FrameRef, into stored: UnsafeMutableRawPointer, reads: ObjectReads, tag: Int, hashesOnly: Bool = false, direct: Bool = false) throws -> Int? {
        let r = try record(f)
        return reads.start(image(f).object, into: stored, count: Self.readLength(r, hashesOnly: hashesOnly), at: r.offset, tag: tag, direct: direct)
    }

    /// Room a buffer for `startRead(direct: true)` needs beyond the frame: the aligned pages around it.
    static let directSlack = 2 * StoredObjects.directAlignment

    /// Checks that a read of the frame (or of its hashes) delivered all its bytes, or names the frame that could
    /// not be read. `direct`: the read was `startRead(direct: true)`'s, whose returned lead it is (such a read
    /// covers aligned pages: it delivers the frame after `lead` bytes, and may deliver more after it).
    func arrived(_ f: FrameRef, bytes: Int, error: Error? = nil, hashesOnly: Bool = false, direct lead: Int? = nil) throws {
        let r = try record(f)
        if let error {
            if error is StoreError || error is ChainError { throw damaged(image(f).name, error) }
            let reason = (error as? IOError)?.reason ?? "\(error)"
            throw ChainError.damaged(file: image(f).name, detail: "frame \(f.frame) at byte \(r.offset) cannot be read (\(reason))")
        }
        let needed = Self.readLength(r, hashesOnly: hashesOnly)
        if !(lead.map { bytes >= $0 + needed } ?? (bytes == needed)) {
            throw ChainError.damaged(file: image(f).name, detail: "frame \(f.frame) at byte \(r.offset) is cut short")
        }
    }

    /// The block hashes stored at the head of a frame (16 bytes a block), read alone: `restore --verify` compares
    /// the target with them without reading payloads. (Restore checked the whole frame as it wrote it.)
    func storedHashes(_ f: FrameRef) throws -> [BlockHash] {
        let r = try record(f)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(Self.readLength(r, hashesOnly: true), 1), alignment: 16)
        defer { raw.deallocate() }
        try read(f, into: raw, hashesOnly: true)
        try openHashes(f, stored: raw)
        return Self.hashes(raw, count: Int(r.blockCount))
    }

    /// Block `b`'s hash in a frame's stored hash table (XXH3-128, low then high, little-endian).
    @inline(__always)
    static func hash(_ table: UnsafeRawPointer, _ b: Int) -> BlockHash {
        BlockHash(
            low: UInt64(littleEndian: table.loadUnaligned(fromByteOffset: b * 16, as: UInt64.self)),
            high: UInt64(littleEndian: table.loadUnaligned(fromByteOffset: b * 16 + 8, as: UInt64.self)))
    }

    /// The first `count` hashes of a stored hash table.
    static func hashes(_ table: UnsafeRawPointer, count: Int) -> [BlockHash] { (0..<count).map { hash(table, $0) } }

    // MARK: Checking

    /// Checks the stored bytes of a frame that arrived whole; with `.everyBlock` or `.decodeOnly`, decodes its
    /// payload into `decoded` (room for its blocks). A sealed frame is opened in place first: after this, `stored`
    /// holds its hashes and payload as an unsealed frame's (what `checkBlocks` takes).
    func check(
        _ f: FrameRef, stored: UnsafeRawPointer, _ depth: FrameCheck, decoded: UnsafeMutableRawPointer? = nil,
        decompressor: FrameDecompressor? = nil
    ) throws {
        let image = image(f)
        let r = try record(f)
        guard Checksum.xxh3(stored, count: Int(r.length)) == r.checksum else {
            throw ChainError.corruptData(file: image.name, detail: "frame \(f.frame) at byte \(r.offset) fails its checksum")
        }
        if case .checksum = depth { return }
        guard let decoded, let decompressor else { preconditionFailure("decoding a frame needs room and a decompressor") }
        if r.sealed { try open(f, stored: stored) }
        let blockSize = Int(image.header.blockSize)
        let blocks = Int(r.blockCount)
        let payload = stored + r.hashesLength
        switch r.codec {
        case .raw:
            guard r.payloadLength == blocks * blockSize else {
                throw ChainError.corruptData(file: image.name, detail: "frame \(f.frame) has the wrong length")
            }
            decoded.copyMemory(from: payload, byteCount: r.payloadLength)
        case .zstd:
            do { try decompressor.decompress(payload, count: r.payloadLength, into: decoded, expected: blocks * blockSize) } catch {
                throw ChainError.corruptData(file: image.name, detail: "frame \(f.frame) does not decompress (\(error))")
            }
        case .zstdSubframes:
            let table = try subframeTable(f, r, payload: payload)
            try decode(f, r, table, 0..<table.count, payload: payload, into: decoded, decompressor: decompressor)
        }
        if case .everyBlock = depth { try checkBlocks(f, 0..<blocks, stored: stored, decoded: decoded) }
    }

    /// The sub-frame table at the head of a `zstdSubframes` frame's payload, checked against the frame's record `r`.
    private func subframeTable(_ f: FrameRef, _ r: FrameRecord, payload: UnsafeRawPointer) throws -> SubframeTable {
        do { return try SubframeTable(payload: payload, payloadLength: r.payloadLength, blockCount: Int(r.blockCount)) } catch {
            throw ChainError.corruptData(file: image(f).name, detail: "frame \(f.frame) at byte \(r.offset): \(error)")
        }
    }

    /// Decodes sub-frames `subframes` of frame `f` (record `r`) whose payload (table first) is at `payload` into
    /// their blocks' places in `decoded` (room for the frame's blocks). Blocks are not checked against their hashes here.
    private func decode(
        _ f: FrameRef, _ r: FrameRecord, _ table: SubframeTable, _ subframes: Range<Int>, payload: UnsafeRawPointer,
        into decoded: UnsafeMutableRawPointer, decompressor: FrameDecompressor
    ) throws {
        let blockSize = Int(image(f).header.blockSize)
        var at = table.offset(subframes.lowerBound)
        for i in subframes {
            let blocks = table.blocks(i, of: Int(r.blockCount))
            do {
                try decompressor.decompress(
                    payload + at, count: table.storedLength(i), into: decoded + blocks.lowerBound * blockSize, expected: blocks.count * blockSize)
            } catch {
                throw ChainError.corruptData(file: image(f).name, detail: "frame \(f.frame) does not decompress (sub-frame \(i): \(error))")
            }
            at += table.storedLength(i)
        }
    }

    /// Reads only the part of frame `f` (record `r`, unsealed: a sealed frame opens whole) that holds `blocks`,
    /// skipping the parts in `have` (bit i: part i), and its block hashes into `hashes` (once: not when completing
    /// an entry, `have` not empty). A frame stored in sub-frames: the sub-frames holding them, decoded (two reads,
    /// the frame's head, hashes and table, and the sub-frames wanted). A raw frame (incompressible blocks, stored as
    /// they are): runs of blocks, at most 64 runs a frame, copied out (a read of its hashes, one of the runs
    /// wanted); read whole, a 4 KiB read of one cost reading, checksumming and copying 1 MiB, the slow tail of
    /// random reads. Reads go into `scratch` (room for the whole frame) where a whole read would put them.
    /// Returns the parts now in `decoded` (with `have`) and the blocks a part holds, (0, 0) once all are; nil where
    /// the frame cannot be read in part (zstd in one piece, sealed), and the caller reads it whole. The frame's
    /// checksum is not checked (it covers the whole frame): every block a reader hands out is checked against its
    /// hash (`checkBlocks`), which a damaged sub-frame, table, block or hash fails.
    func readPart(
        _ f: FrameRef, record r: FrameRecord, blocks: Range<Int>, have: UInt64 = 0, scratch: UnsafeMutableRawPointer,
        hashes: UnsafeMutableRawPointer, decoded: UnsafeMutableRawPointer, decompressor: FrameDecompressor
    ) throws -> (parts: UInt64, blocksPerPart: Int)? {
        guard r.codec != .zstd, !r.sealed else { return nil }
        func read(_ count: Int, at within: Int) throws {
            guard try image(f).object.read(into: scratch + within, count: count, at: r.offset + UInt64(within)) == count else {
                throw ChainError.damaged(file: image(f).name, detail: "frame \(f.frame) at byte \(r.offset) is cut short")
            }
        }
        if r.codec == .raw { return try readRawPart(f, r, blocks: blocks, have: have, read: read, scratch: scratch, hashes: hashes, decoded: decoded) }
        // The head: the block hashes (unless the entry has them already, from its first read) and the table.
        let headFrom = have == 0 ? 0 : r.hashesLength
        try read(min(Int(r.length), r.hashesLength + SubframeTable.length(count: SubframeTable.mostSubframes)) - headFrom, at: headFrom)
        let payload = scratch + r.hashesLength
        let table = try subframeTable(f, r, payload: payload)
        let wanted = Self.missing(table.subframes(holding: blocks), have: have)
        var parts = have
        if let last = wanted.last {
            let from = table.offset(wanted.lowerBound), to = table.offset(last) + table.storedLength(last)
            try read(to - from, at: r.hashesLength + from)
            // Sub-frames decoded already are left alone: other readers may be copying blocks out of them.
            for i in wanted where have & (1 << UInt64(i)) == 0 {
                try decode(f, r, table, i..<(i + 1), payload: payload, into: decoded, decompressor: decompressor)
                parts |= 1 << UInt64(i)
            }
        }
        if have == 0 { hashes.copyMemory(from: scratch, byteCount: r.hashesLength) }
        return Self.entryParts(parts, of: table.count, blocksPerPart: table.blocksPerSubframe)
    }

    /// Parts `wanted` less those at either end that are in `have` already (one read covers the rest: parts in
    /// `have` between them are read again but left alone).
    private static func missing(_ wanted: Range<Int>, have: UInt64) -> Range<Int> {
        var w = wanted
        while !w.isEmpty && have & (1 << UInt64(w.lowerBound)) != 0 { w = (w.lowerBound + 1)..<w.upperBound }
        while !w.isEmpty && have & (1 << UInt64(w.upperBound - 1)) != 0 { w = w.lowerBound..<(w.upperBound - 1) }
        return w
    }

    /// What `readPart` returns: the parts in the entry and the blocks a part holds, (0, 0) once all `count` are.
    private static func entryParts(_ parts: UInt64, of count: Int, blocksPerPart: Int) -> (parts: UInt64, blocksPerPart: Int) {
        let all: UInt64 = count == 64 ? .max : (1 << UInt64(count)) - 1
        return parts & all == all ? (0, 0) : (parts, blocksPerPart)
    }

    /// `readPart` of a raw frame: its blocks in runs of `rawRunBlocks`, those holding `blocks` and not in `have`
    /// read in one piece and copied into their places in `decoded` (the runs already there are left alone: other
    /// readers may be copying blocks out of them).
    private func readRawPart(
        _ f: FrameRef, _ r: FrameRecord, blocks: Range<Int>, have: UInt64, read: (Int, Int) throws -> Void, scratch: UnsafeMutableRawPointer,
        hashes: UnsafeMutableRawPointer, decoded: UnsafeMutableRawPointer
    ) throws -> (parts: UInt64, blocksPerPart: Int) {
        let blockSize = Int(image(f).header.blockSize)
        let count = Int(r.blockCount)
        guard r.payloadLength == count * blockSize else {
            throw ChainError.corruptData(file: image(f).name, detail: "frame \(f.frame) has the wrong length")
        }
        let per = Self.rawRunBlocks(count)
        let runs = (count + per - 1) / per
        if have == 0 {
            try read(r.hashesLength, 0)
            hashes.copyMemory(from: scratch, byteCount: r.hashesLength)
        }
        let wanted = Self.missing(SubframeTable.subframes(holding: blocks.clamped(to: 0..<count), blocksPerSubframe: per), have: have)
        var parts = have
        if !wanted.isEmpty {
            let from = wanted.lowerBound * per * blockSize, to = min(wanted.upperBound * per, count) * blockSize
            try read(to - from, r.hashesLength + from)
            for i in wanted where have & (1 << UInt64(i)) == 0 {
                let at = i * per * blockSize, length = (min((i + 1) * per, count) - i * per) * blockSize
                (decoded + at).copyMemory(from: scratch + r.hashesLength + at, byteCount: length)
                parts |= 1 << UInt64(i)
            }
        }
        return Self.entryParts(parts, of: runs, blocksPerPart: per)
    }

    /// The blocks of a run of a raw frame of `count` blocks read in part: as few as leave the frame at most 64 runs
    /// (one bit each in the cache's entry): 4 of a 1 MiB frame of 4 KiB blocks.
    static func rawRunBlocks(_ count: Int) -> Int { max(1, (count + SubframeTable.mostSubframes - 1) / SubframeTable.mostSubframes) }

    /// Checks blocks `range` of a decoded frame against the hashes stored beside them.
    func checkBlocks(_ f: FrameRef, _ range: Range<Int>, stored: UnsafeRawPointer, decoded: UnsafeRawPointer) throws {
        let image = image(f)
        let blockSize = Int(image.header.blockSize)
        let hasher = image.hasher
        for b in range {
            guard hasher.hash(decoded + b * blockSize, count: blockSize) == Self.hash(stored, b) else {
                throw ChainError.corruptData(file: image.name, detail: "block \(sourceBlock(f, b)) (in frame \(f.frame)) does not match its hash")
            }
        }
    }

    /// The source block that block `b` of a frame holds, found by a walk of its image's extents (only to name a
    /// damaged block; "?" when the index cannot say).
    private func sourceBlock(_ f: FrameRef, _ b: Int) -> String {
        var found: UInt64?
        try? image(f).index.forEachExtent { e in
            if found == nil && e.kind == .data && e.frame == f.frame && Int(e.frameBlock) <= b && b < Int(e.frameBlock) + Int(e.blockCount) {
                found = e.firstBlock + UInt64(b - Int(e.frameBlock))
            }
        }
        return found.map(String.init) ?? "?"
    }
}
