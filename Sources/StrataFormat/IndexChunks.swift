// The chunked image index (docs/FORMAT.md, "Chunked index"; incompatible feature bit 1): frame records and
// extent records in fixed-size chunks written among the frames as a capture goes, each with its CRC-32C, and a
// small top-level table of them at the end of the file, where a version-1 index would be. A writer holds one
// chunk of each kind and the table; a reader holds the table and the chunks it is reading. Frame chunks hold the
// table's `framesPerChunk` records (the last fewer), so frame n lies in chunk n / framesPerChunk; extent chunks
// hold its `extentsPerChunk` (the last fewer) and say which blocks they cover, so the chunk holding a block is
// found by a binary search of the table.

public enum IndexChunks {
    /// What writers use: 4096 frame records (128 KiB) and 8192 extent records (192 KiB) a chunk.
    public static let framesPerChunk = 4096
    public static let extentsPerChunk = 8192
    /// The range a table may give: powers of two in it.
    public static let perChunkRange: ClosedRange<UInt32> = 16...65536
    static let frameMagic: [UInt8] = Array("STRATAFC".utf8)
    static let extentMagic: [UInt8] = Array("STRATAEC".utf8)
    /// Magic and record count.
    static let chunkHeaderSize = 16

    public static func frameChunkLength(_ count: Int) -> Int { chunkHeaderSize + count * FrameRecord.encodedSize }
    public static func extentChunkLength(_ count: Int) -> Int { chunkHeaderSize + count * ExtentRecord.encodedSize }

    /// All the index bytes a writer adds for `frames` frames and `extents` extents: its chunks and their table.
    public static func indexLength(frames: UInt64, extents: UInt64, encrypted: Bool = false) -> UInt64 {
        let f = TopIndex.chunks(frames, per: UInt32(framesPerChunk)), e = TopIndex.chunks(extents, per: UInt32(extentsPerChunk))
        let added = Sealing.chunkOverhead(encrypted: encrypted)
        return (f + e) * UInt64(chunkHeaderSize) + f * UInt64(added.frames) + e * UInt64(added.extents) + frames * UInt64(FrameRecord.encodedSize) + extents * UInt64(ExtentRecord.encodedSize)
            + TopIndex.encodedLength(frames: frames, extents: extents, framesPerChunk: UInt32(framesPerChunk), extentsPerChunk: UInt32(extentsPerChunk))
    }

    public static func encode(frames: ArraySlice<FrameRecord>) -> [UInt8] {
        encode(frameMagic, frames, length: frameChunkLength(frames.count)) { $1.encode(into: &$0) }
    }

    public static func encode(extents: ArraySlice<ExtentRecord>) -> [UInt8] {
        encode(extentMagic, extents, length: extentChunkLength(extents.count)) { $1.encode(into: &$0) }
    }

    private static func encode<R>(_ magic: [UInt8], _ records: ArraySlice<R>, length: Int, _ record: (inout ByteWriter, R) -> Void) -> [UInt8] {
        var w = ByteWriter(capacity: length)
        w.raw(magic)
        w.u64(UInt64(records.count))
        for r in records { record(&w, r) }
        return w.bytes
    }

    /// A chunk's bytes checked against what its table entry says (length, checksum, magic, count), ready for its
    /// records. `open` turns the stored bytes (checked by the CRC) into the plain chunk: identity unless the
    /// image is encrypted (then it checks the frame chunk's tag, or opens the sealed extent chunk).
    private static func records(
        _ bytes: [UInt8], what: String, magic: [UInt8], count: UInt32, length: Int, checksum: UInt32, open: ([UInt8]) throws -> [UInt8]
    ) throws -> ByteReader {
        guard bytes.count == length else { throw FormatError.truncated(what, at: UInt64(bytes.count)) }
        guard CRC32C.checksum(bytes) == checksum else { throw FormatError.checksumMismatch(what) }
        var r = ByteReader(try open(bytes), what: what)
        guard try r.raw(8) == magic, try r.u64() == UInt64(count) else { throw FormatError.invalid("\(what) is not the chunk the index names") }
        return r
    }

    /// Decodes frame chunk `c` of an image and checks it against its entry in the table: checksum, count, each
    /// frame inside the data area, after the one before, and no larger than its blocks allow.
    public static func decodeFrames(
        _ bytes: [UInt8], chunk c: Int, of top: TopIndex, header h: ImageHeader, open: ([UInt8]) throws -> [UInt8] = { $0 }
    ) throws -> [FrameRecord] {
        let entry = top.frameChunks[c]
        let what = "frame chunk \(c)"
        let length = frameChunkLength(Int(entry.count)) + Sealing.chunkOverhead(encrypted: h.isEncrypted).frames
        var r = try records(bytes, what: what, magic: frameMagic, count: entry.count, length: length, checksum: entry.checksum, open: open)
        var frames = [FrameRecord]()
        frames.reserveCapacity(Int(entry.count))
        var next = entry.firstOffset
        for i in 0..<Int(entry.count) {
            let n = c * Int(top.framesPerChunk) + i
            let f = try FrameRecord.decode(&r, number: n)
            guard f.sealed == h.isEncrypted else { throw FormatError.invalid("frame \(n) is \(f.sealed ? "" : "not ")sealed in an image that is \(h.isEncrypted ? "" : "not ")encrypted") }
            // (Compared without adding: a damaged offset near 2^64 must not overflow.)
            guard f.offset >= next, f.fitsItsBlocks(blockSize: h.blockSize), f.offset <= entry.endOffset,
                UInt64(f.length) <= entry.endOffset - f.offset
            else { throw FormatError.invalid("frame \(n) lies outside the image's data area") }
            guard i > 0 || f.offset == entry.firstOffset else { throw FormatError.invalid("\(what) does not start where the index says") }
            next = f.offset + UInt64(f.length)
            frames.append(f)
        }
        guard next == entry.endOffset else { throw FormatError.invalid("\(what) does not end where the index says") }
        return frames
    }

    /// Decodes extent chunk `c` and checks it against its entry: checksum, count, order, the blocks and block
    /// counts the entry gives, frames that exist. (That a data extent stays inside its frame is checked where the
    /// frame's record is read: `ExtentRecord.check(inside:number:)`.)
    public static func decodeExtents(
        _ bytes: [UInt8], chunk c: Int, of top: TopIndex, header h: ImageHeader, open: ([UInt8]) throws -> [UInt8] = { $0 }
    ) throws -> [ExtentRecord] {
        let entry = top.extentChunks[c]
        let what = "extent chunk \(c)"
        let length = extentChunkLength(Int(entry.count)) + Sealing.chunkOverhead(encrypted: h.isEncrypted).extents
        var r = try records(bytes, what: what, magic: extentMagic, count: entry.count, length: length, checksum: entry.checksum, open: open)
        var extents = [ExtentRecord]()
        extents.reserveCapacity(Int(entry.count))
        var nextBlock = entry.firstBlock
        var data: UInt64 = 0, zero: UInt64 = 0, unreadable: UInt64 = 0
        for i in 0..<Int(entry.count) {
            let n = c * Int(top.extentsPerChunk) + i
            let e = try ExtentRecord.decode(&r, number: n)
            guard e.blockCount > 0, e.firstBlock >= nextBlock, e.firstBlock < entry.endBlock, UInt64(e.blockCount) <= entry.endBlock - e.firstBlock,
                i > 0 || e.firstBlock == entry.firstBlock
            else { throw FormatError.invalid("extent \(n) is out of order or beyond the source") }
            if h.kind == .full && e.firstBlock != nextBlock { throw FormatError.invalid("full image does not cover block \(nextBlock)") }
            switch e.kind {
            case .data:
                guard UInt64(e.frame) < h.frameCount else { throw FormatError.invalid("extent \(n) points outside its frame") }
                data += UInt64(e.blockCount)
            case .zero, .free: zero += UInt64(e.blockCount)
            case .unreadable: unreadable += UInt64(e.blockCount)
            }
            nextBlock = e.endBlock
            extents.append(e)
        }
        guard nextBlock == entry.endBlock, data == entry.dataBlocks, zero == entry.zeroBlocks, unreadable == entry.unreadableBlocks else {
            throw FormatError.invalid("\(what) differs from what the index says it holds")
        }
        return extents
    }
}

/// The top-level table of a chunked index: where each chunk lies, what it covers, and its checksum.
public struct TopIndex: Equatable, Sendable {
    public static let magic: [UInt8] = Array("STRATAIT".utf8)
    static let headerSize = 40

    public struct FrameChunk: Equatable, Sendable {
        public static let encodedSize = 40
        /// Where the chunk lies in the file.
        public var offset: UInt64
        public var length: UInt32
        public var count: UInt32
        /// The first byte of its first frame and the byte after its last frame.
        public var firstOffset: UInt64
        public var endOffset: UInt64
        public var checksum: UInt32

        public init(offset: UInt64, length: UInt32, count: UInt32, firstOffset: UInt64, endOffset: UInt64, checksum: UInt32) {
            (self.offset, self.length, self.count) = (offset, length, count)
            (self.firstOffset, self.endOffset, self.checksum) = (firstOffset, endOffset, checksum)
        }
    }

    public struct ExtentChunk: Equatable, Sendable {
        public static let encodedSize = 64
        public var offset: UInt64
        public var length: UInt32
        public var count: UInt32
        /// The first block of its first extent and the block after its last.
        public var firstBlock: UInt64
        public var endBlock: UInt64
        public var dataBlocks: UInt64
        public var zeroBlocks: UInt64
        public var unreadableBlocks: UInt64
        public var checksum: UInt32

        public init(
            offset: UInt64, length: UInt32, count: UInt32, firstBlock: UInt64, endBlock: UInt64, dataBlocks: UInt64, zeroBlocks: UInt64,
            unreadableBlocks: UInt64, checksum: UInt32
        ) {
            (self.offset, self.length, self.count, self.firstBlock, self.endBlock) = (offset, length, count, firstBlock, endBlock)
            (self.dataBlocks, self.zeroBlocks, self.unreadableBlocks, self.checksum) = (dataBlocks, zeroBlocks, unreadableBlocks, checksum)
        }
    }

    public var frameChunks: [FrameChunk]
    public var extentChunks: [ExtentChunk]
    /// The longest frame (hashes and payload): what a reader sizes its buffers by.
    public var maxFrameLength: UInt32
    /// Records a chunk (the last of each kind may hold fewer).
    public var framesPerChunk: UInt32
    public var extentsPerChunk: UInt32

    public init(
        frameChunks: [FrameChunk] = [], extentChunks: [ExtentChunk] = [], maxFrameLength: UInt32 = 0,
        framesPerChunk: UInt32 = UInt32(IndexChunks.framesPerChunk), extentsPerChunk: UInt32 = UInt32(IndexChunks.extentsPerChunk)
    ) {
        self.frameChunks = frameChunks
        self.extentChunks = extentChunks
        self.maxFrameLength = maxFrameLength
        self.framesPerChunk = framesPerChunk
        self.extentsPerChunk = extentsPerChunk
    }

    static func chunks(_ records: UInt64, per: UInt32) -> UInt64 { records / UInt64(per) + (records % UInt64(per) == 0 ? 0 : 1) }

    /// The table's length for an image of `frames` frames and `extents` extents, in chunks of the sizes given.
    public static func encodedLength(frames: UInt64, extents: UInt64, framesPerChunk: UInt32, extentsPerChunk: UInt32) -> UInt64 {
        let f = chunks(frames, per: framesPerChunk), e = chunks(extents, per: extentsPerChunk)
        // No overflow: chunk counts are at most 2^64 / 16.
        let (a, o1) = f.multipliedReportingOverflow(by: UInt64(FrameChunk.encodedSize))
        let (b, o2) = e.multipliedReportingOverflow(by: UInt64(ExtentChunk.encodedSize))
        let (s, o3) = a.addingReportingOverflow(b)
        return o1 || o2 || o3 ? UInt64.max : UInt64(headerSize) + s
    }

    /// The longest a table can be for these counts (chunks of the fewest records allowed): what a header may name.
    public static func maxEncodedLength(frames: UInt64, extents: UInt64) -> UInt64 {
        encodedLength(frames: frames, extents: extents, framesPerChunk: IndexChunks.perChunkRange.lowerBound, extentsPerChunk: IndexChunks.perChunkRange.lowerBound)
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter(capacity: Self.headerSize + frameChunks.count * FrameChunk.encodedSize + extentChunks.count * ExtentChunk.encodedSize)
        w.raw(Self.magic)
        w.u64(UInt64(frameChunks.count))
        w.u64(UInt64(extentChunks.count))
        w.u32(maxFrameLength)
        w.u32(framesPerChunk)
        w.u32(extentsPerChunk)
        w.zeros(4)
        for c in frameChunks {
            w.u64(c.offset)
            w.u32(c.length)
            w.u32(c.count)
            w.u64(c.firstOffset)
            w.u64(c.endOffset)
            w.u32(c.checksum)
            w.zeros(4)
        }
        for c in extentChunks {
            w.u64(c.offset)
            w.u32(c.length)
            w.u32(c.count)
            w.u64(c.firstBlock)
            w.u64(c.endBlock)
            w.u64(c.dataBlocks)
            w.u64(c.zeroBlocks)
            w.u64(c.unreadableBlocks)
            w.u32(c.checksum)
            w.zeros(4)
        }
        return w.bytes
    }

    /// Decodes and checks the table against its header: checksum, counts, every chunk inside the data area,
    /// frames in file order, extents in block order (covering every block for a full image), and block counts
    /// that add up to the header's. After this, each chunk can be read and checked on its own.
    public static func decode(_ bytes: [UInt8], header h: ImageHeader) throws -> TopIndex {
        let what = "image index"
        guard UInt64(bytes.count) == h.indexLength else { throw FormatError.truncated(what, at: UInt64(bytes.count)) }
        guard CRC32C.checksum(bytes) == h.indexChecksum else { throw FormatError.checksumMismatch(what) }
        var r = ByteReader(bytes, what: what)
        guard try r.raw(8) == magic else { throw FormatError.badMagic(what) }
        let frameChunkCount = try r.u64(), extentChunkCount = try r.u64()
        let maxFrameLength = try r.u32(), framesPerChunk = try r.u32(), extentsPerChunk = try r.u32()
        try r.skip(4)
        for n in [framesPerChunk, extentsPerChunk] where !IndexChunks.perChunkRange.contains(n) || n & (n - 1) != 0 {
            throw FormatError.invalid("image index chunks hold \(n) records, not a power of two from 16 to 65536")
        }
        guard frameChunkCount == chunks(h.frameCount, per: framesPerChunk), extentChunkCount == chunks(h.extentCount, per: extentsPerChunk),
            h.indexLength == encodedLength(frames: h.frameCount, extents: h.extentCount, framesPerChunk: framesPerChunk, extentsPerChunk: extentsPerChunk)
        else { throw FormatError.invalid("image index counts differ from the header's") }
        let maxBlocks = UInt64(max(ImageHeader.maxBlockSize / h.blockSize, 1))
        guard UInt64(maxFrameLength) <= maxBlocks * (16 + UInt64(h.blockSize)) + 65536 + UInt64(Sealing.overhead) else {
            throw FormatError.invalid("image index names a frame longer than any frame can be")
        }
        func expected(_ i: UInt64, of total: UInt64, per: UInt32) -> UInt64 { min(UInt64(per), total - i * UInt64(per)) }
        func inDataArea(_ offset: UInt64, _ length: UInt32) -> Bool {
            offset >= UInt64(ImageHeader.size) && offset <= h.indexOffset && UInt64(length) <= h.indexOffset - offset
        }
        var top = TopIndex(maxFrameLength: maxFrameLength, framesPerChunk: framesPerChunk, extentsPerChunk: extentsPerChunk)
        let added = Sealing.chunkOverhead(encrypted: h.isEncrypted)
        top.frameChunks.reserveCapacity(Int(frameChunkCount))
        var nextOffset = UInt64(ImageHeader.size)
        for i in 0..<frameChunkCount {
            let c = FrameChunk(
                offset: try r.u64(), length: try r.u32(), count: try r.u32(), firstOffset: try r.u64(), endOffset: try r.u64(), checksum: try r.u32())
            try r.skip(4)
            guard UInt64(c.count) == expected(i, of: h.frameCount, per: framesPerChunk),
                Int(c.length) == IndexChunks.frameChunkLength(Int(c.count)) + added.frames, inDataArea(c.offset, c.length),
                c.firstOffset >= nextOffset, c.firstOffset < c.endOffset, c.endOffset <= h.indexOffset
            else { throw FormatError.invalid("frame chunk \(i) lies outside the image's data area") }
            nextOffset = c.endOffset
            top.frameChunks.append(c)
        }
        top.extentChunks.reserveCapacity(Int(extentChunkCount))
        var nextBlock: UInt64 = 0
        var data: UInt64 = 0, zero: UInt64 = 0, unreadable: UInt64 = 0
        let blockCount = h.blockCount
        for i in 0..<extentChunkCount {
            let c = ExtentChunk(
                offset: try r.u64(), length: try r.u32(), count: try r.u32(), firstBlock: try r.u64(), endBlock: try r.u64(),
                dataBlocks: try r.u64(), zeroBlocks: try r.u64(), unreadableBlocks: try r.u64(), checksum: try r.u32())
            try r.skip(4)
            guard UInt64(c.count) == expected(i, of: h.extentCount, per: extentsPerChunk),
                Int(c.length) == IndexChunks.extentChunkLength(Int(c.count)) + added.extents, inDataArea(c.offset, c.length)
            else { throw FormatError.invalid("extent chunk \(i) lies outside the image's data area") }
            let (s1, o1) = c.dataBlocks.addingReportingOverflow(c.zeroBlocks)
            let (held, o2) = s1.addingReportingOverflow(c.unreadableBlocks)
            guard c.firstBlock >= nextBlock, c.firstBlock < c.endBlock, c.endBlock <= blockCount, !o1, !o2, held <= c.endBlock - c.firstBlock,
                held >= UInt64(c.count)
            else { throw FormatError.invalid("extent chunk \(i) is out of order or beyond the source") }
            if h.kind == .full && (c.firstBlock != nextBlock || held != c.endBlock - c.firstBlock) {
                throw FormatError.invalid("full image does not cover block \(nextBlock)")
            }
            nextBlock = c.endBlock
            data += c.dataBlocks
            zero += c.zeroBlocks
            unreadable += c.unreadableBlocks
            top.extentChunks.append(c)
        }
        if h.kind == .full && nextBlock != blockCount { throw FormatError.invalid("full image does not cover the whole source") }
        guard data == h.dataBlocks, zero == h.zeroBlocks, unreadable == h.unreadableBlocks else {
            throw FormatError.invalid("image block counts differ from the header's")
        }
        return top
    }

    /// The extent chunk holding `block`, or the first one after it (`extentChunks.count` when none).
    public func extentChunk(atOrAfter block: UInt64) -> Int { extentChunks.firstEnding(after: block, \.endBlock) }
}
