// The index at the end of every image file (docs/FORMAT.md, "Image index"): a table of frames, where the
// compressed bytes lie, and a table of extents, which blocks of the source each frame holds. Extents are
// sorted and never overlap; a full image's extents cover every block, an incremental's only the changed ones.

public enum FrameCodec: UInt8, Sendable {
    case raw = 0
    case zstd = 1
    /// Independent zstd frames of a few blocks each, after a table of their lengths (`SubframeTable`): a reader
    /// decodes only the part of the frame it wants. Images holding such frames have `ImageFeatures.subframes`.
    case zstdSubframes = 2
}

/// The payload of a `zstdSubframes` frame: u32 blocks per sub-frame B, u32 sub-frames n (= ceil(blocks / B), at
/// most 64), n u32 stored lengths, then the n zstd frames back to back; sub-frame i holds blocks
/// `i * B ..< min((i + 1) * B, blocks)`. Read in place from a frame's bytes (no copy, no allocation).
public struct SubframeTable {
    public static let mostSubframes = 64
    private let payload: UnsafeRawPointer
    public let blocksPerSubframe: Int
    public let count: Int
    /// Bytes of the table before the first sub-frame.
    public var length: Int { Self.length(count: count) }
    public static func length(count: Int) -> Int { 8 + 4 * count }

    /// The table at the head of a payload of `payloadLength` bytes holding `blockCount` blocks, checked: its counts
    /// agree with the blocks, and its lengths, each at least 1, add up to the payload's.
    public init(payload: UnsafeRawPointer, payloadLength: Int, blockCount: Int) throws {
        guard payloadLength >= 8 else { throw FormatError.invalid("sub-frame table is cut short") }
        self.payload = payload
        let b = Int(UInt32(littleEndian: payload.loadUnaligned(as: UInt32.self)))
        let n = Int(UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        guard b >= 1, n >= 1, n <= Self.mostSubframes, n == (blockCount + b - 1) / b, Self.length(count: n) <= payloadLength else {
            throw FormatError.invalid("sub-frame table does not fit the frame's blocks")
        }
        (blocksPerSubframe, count) = (b, n)
        var total = Self.length(count: n)
        for i in 0..<n {
            let l = storedLength(i)
            guard l >= 1 else { throw FormatError.invalid("sub-frame \(i) is empty") }
            total += l
        }
        guard total == payloadLength else { throw FormatError.invalid("sub-frame lengths do not add up to the frame's") }
    }

    /// The stored length of sub-frame `i`.
    public func storedLength(_ i: Int) -> Int { Int(UInt32(littleEndian: payload.loadUnaligned(fromByteOffset: 8 + 4 * i, as: UInt32.self))) }

    /// Where sub-frame `i` starts in the payload.
    public func offset(_ i: Int) -> Int {
        var at = length
        for k in 0..<i { at += storedLength(k) }
        return at
    }

    /// The blocks of the frame sub-frame `i` holds.
    public func blocks(_ i: Int, of blockCount: Int) -> Range<Int> { (i * blocksPerSubframe)..<min((i + 1) * blocksPerSubframe, blockCount) }

    /// The sub-frames holding `blocks`.
    public func subframes(holding blocks: Range<Int>) -> Range<Int> { Self.subframes(holding: blocks, blocksPerSubframe: blocksPerSubframe) }

    /// The sub-frames holding `blocks` where each holds `blocksPerSubframe` (what a cache of decoded sub-frames asks,
    /// without the table).
    public static func subframes(holding blocks: Range<Int>, blocksPerSubframe b: Int) -> Range<Int> {
        (blocks.lowerBound / b)..<((blocks.upperBound + b - 1) / b)
    }

    /// Writes a table's head (its lengths go in with `setLength`) at `payload`.
    public static func start(at payload: UnsafeMutableRawPointer, blocksPerSubframe: Int, count: Int) {
        payload.storeBytes(of: UInt32(blocksPerSubframe).littleEndian, as: UInt32.self)
        payload.storeBytes(of: UInt32(count).littleEndian, toByteOffset: 4, as: UInt32.self)
    }

    public static func setLength(_ length: Int, of i: Int, at payload: UnsafeMutableRawPointer) {
        payload.storeBytes(of: UInt32(length).littleEndian, toByteOffset: 8 + 4 * i, as: UInt32.self)
    }
}

/// One frame on disk: `16 * blockCount` bytes of block hashes (XXH3-128, little-endian low then high),
/// then the payload, compressed or raw. `checksum` is XXH3-64 over both. A sealed frame (encrypted images; bit 7
/// of the codec byte) is hashes and payload encrypted, then a 24-byte salt and a 16-byte tag (`Sealing`), and its
/// checksum covers all of that as stored.
public struct FrameRecord: Equatable, Sendable {
    public static let encodedSize = 32
    public var offset: UInt64
    public var length: UInt32
    public var blockCount: UInt32
    public var codec: FrameCodec
    public var checksum: UInt64
    /// Encrypted: salt, ciphertext of hashes and payload, tag.
    public var sealed: Bool

    public init(offset: UInt64, length: UInt32, blockCount: UInt32, codec: FrameCodec, checksum: UInt64, sealed: Bool = false) {
        self.offset = offset
        self.length = length
        self.blockCount = blockCount
        self.codec = codec
        self.checksum = checksum
        self.sealed = sealed
    }

    public var hashesLength: Int { Int(blockCount) * 16 }
    public var payloadLength: Int { Int(length) - hashesLength - (sealed ? Sealing.overhead : 0) }

    /// Whether the frame holds 1 to 1 MiB of blocks and a payload no larger than they can take (their size plus
    /// zstd's worst-case overhead, 4 KiB per MiB, rounded up): a damaged or hostile index cannot make a reader
    /// allocate more than one frame's worth.
    public func fitsItsBlocks(blockSize: UInt32) -> Bool {
        blockCount >= 1 && blockCount <= max(ImageHeader.maxBlockSize / blockSize, 1) && payloadLength > 0
            && payloadLength <= Int(blockCount) * Int(blockSize) + 65536
    }

    func encode(into w: inout ByteWriter) {
        w.u64(offset)
        w.u32(length)
        w.u32(blockCount)
        w.u8(codec.rawValue | (sealed ? Sealing.sealedCodecBit : 0))
        w.zeros(7)
        w.u64(checksum)
    }

    static func decode(_ r: inout ByteReader, number i: Int) throws -> FrameRecord {
        let offset = try r.u64(), length = try r.u32(), blocks = try r.u32()
        let codecByte = try r.u8()
        guard let codec = FrameCodec(rawValue: codecByte & ~Sealing.sealedCodecBit) else { throw FormatError.invalid("frame \(i) has an unknown codec") }
        try r.skip(7)
        return FrameRecord(
            offset: offset, length: length, blockCount: blocks, codec: codec, checksum: try r.u64(), sealed: codecByte & Sealing.sealedCodecBit != 0)
    }
}

public enum ExtentKind: UInt8, Sendable {
    /// Every byte is zero; nothing is stored.
    case zero = 0
    /// The blocks are stored in a frame.
    case data = 1
    /// The source could not be read here; restored as zeros and reported.
    case unreadable = 2
    /// Blocks no filesystem on the source used at capture (a chain of used blocks): restored as zeros, and left
    /// as they are by `restore --delta`. On disk a zero extent (kind 0) with bit 0 of its flags byte set, so that
    /// a reader that does not know the bit restores zeros there, as it always did; counted with the zero blocks.
    case free = 3

    /// Whether every byte reads as zero (zero and free blocks).
    public var readsAsZeros: Bool { self == .zero || self == .free }
}

/// A run of consecutive blocks of one kind. For data, the run is `blockCount` consecutive blocks of frame
/// `frame`, starting at the frame's block number `frameBlock`.
public struct ExtentRecord: Equatable, Sendable {
    public static let encodedSize = 24
    public var firstBlock: UInt64
    public var blockCount: UInt32
    public var kind: ExtentKind
    public var frame: UInt32
    public var frameBlock: UInt32

    public init(firstBlock: UInt64, blockCount: UInt32, kind: ExtentKind, frame: UInt32 = 0, frameBlock: UInt32 = 0) {
        self.firstBlock = firstBlock
        self.blockCount = blockCount
        self.kind = kind
        self.frame = frame
        self.frameBlock = frameBlock
    }

    public var endBlock: UInt64 { firstBlock + UInt64(blockCount) }

    /// Bit 0 of the flags byte: the zero extent is free (`ExtentKind.free`).
    static let freeFlag: UInt8 = 1

    func encode(into w: inout ByteWriter) {
        w.u64(firstBlock)
        w.u32(blockCount)
        w.u8(kind == .free ? ExtentKind.zero.rawValue : kind.rawValue)
        w.u8(kind == .free ? Self.freeFlag : 0)
        w.zeros(2)
        w.u32(frame)
        w.u32(frameBlock)
    }

    static func decode(_ r: inout ByteReader, number i: Int) throws -> ExtentRecord {
        let first = try r.u64(), count = try r.u32()
        guard var kind = ExtentKind(rawValue: try r.u8()), kind != .free else { throw FormatError.invalid("extent \(i) has an unknown kind") }
        let flags = try r.u8()
        if flags & Self.freeFlag != 0 {
            guard kind == .zero else { throw FormatError.invalid("extent \(i) is marked free but is not a zero extent") }
            kind = .free
        }
        try r.skip(2)
        return ExtentRecord(firstBlock: first, blockCount: count, kind: kind, frame: try r.u32(), frameBlock: try r.u32())
    }

    /// Checks that a data extent stays inside its frame (`frame`: its record).
    public func check(inside frame: FrameRecord, number i: Int) throws {
        guard UInt64(frameBlock) + UInt64(blockCount) <= UInt64(frame.blockCount) else {
            throw FormatError.invalid("extent \(i) points outside its frame")
        }
    }
}

extension Array {
    /// In elements sorted by where they end (`end`), the first that ends after `block` (`count` when none does):
    /// a binary search. Extents, extent chunks. Inlinable, so that it is specialised where it is called: unspecialised,
    /// it copied every element it compared (4.6% of the server's CPU under random reads).
    @inlinable
    public func firstEnding(after block: UInt64, _ end: (Element) -> UInt64) -> Int {
        var lo = 0, hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            if end(self[mid]) <= block { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }
}

public struct ImageIndex: Equatable, Sendable {
    public static let magic: [UInt8] = Array("STRATAIX".utf8)
    public var frames: [FrameRecord]
    public var extents: [ExtentRecord]

    public init(frames: [FrameRecord] = [], extents: [ExtentRecord] = []) {
        self.frames = frames
        self.extents = extents
    }

    public static func encodedLength(frames: UInt64, extents: UInt64) -> UInt64 {
        // Overflow-checked so that absurd counts in a damaged header are rejected, not trapped on.
        let (f, o1) = frames.multipliedReportingOverflow(by: UInt64(FrameRecord.encodedSize))
        let (e, o2) = extents.multipliedReportingOverflow(by: UInt64(ExtentRecord.encodedSize))
        let (s, o3) = f.addingReportingOverflow(e)
        let (total, o4) = s.addingReportingOverflow(24)
        return o1 || o2 || o3 || o4 ? UInt64.max : total
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter(capacity: Int(Self.encodedLength(frames: UInt64(frames.count), extents: UInt64(extents.count))))
        w.raw(Self.magic)
        w.u64(UInt64(frames.count))
        w.u64(UInt64(extents.count))
        for f in frames { f.encode(into: &w) }
        for e in extents { e.encode(into: &w) }
        return w.bytes
    }

    /// Decodes and validates an index against its header: checksum, counts, frame bounds, extent order and
    /// coverage. After this, every extent can be followed without further bounds checks.
    public static func decode(_ bytes: [UInt8], header h: ImageHeader) throws -> ImageIndex {
        let what = "image index"
        guard UInt64(bytes.count) == h.indexLength else { throw FormatError.truncated(what, at: UInt64(bytes.count)) }
        guard CRC32C.checksum(bytes) == h.indexChecksum else { throw FormatError.checksumMismatch(what) }
        var r = ByteReader(bytes, what: what)
        guard try r.raw(8) == magic else { throw FormatError.badMagic(what) }
        guard try r.u64() == h.frameCount, try r.u64() == h.extentCount else {
            throw FormatError.invalid("image index counts differ from the header's")
        }
        var frames = [FrameRecord]()
        frames.reserveCapacity(Int(h.frameCount))
        var nextOffset = UInt64(ImageHeader.size)
        for i in 0..<h.frameCount {
            let f = try FrameRecord.decode(&r, number: Int(i))
            guard f.offset == nextOffset, f.fitsItsBlocks(blockSize: h.blockSize), f.offset + UInt64(f.length) <= h.indexOffset
            else { throw FormatError.invalid("frame \(i) lies outside the image's data area") }
            nextOffset = f.offset + UInt64(f.length)
            frames.append(f)
        }
        guard nextOffset == h.indexOffset else { throw FormatError.invalid("frames do not fill the image's data area") }
        var extents = [ExtentRecord]()
        extents.reserveCapacity(Int(h.extentCount))
        var nextBlock: UInt64 = 0
        var data: UInt64 = 0, zero: UInt64 = 0, unreadable: UInt64 = 0
        var frameUse = [UInt32](repeating: 0, count: frames.count)  // the frame's next block an extent may use
        let sparse = h.incompatibleFeatures & ImageFeatures.sparseFrames != 0
        let blockCount = h.blockCount
        for i in 0..<h.extentCount {
            let e = try ExtentRecord.decode(&r, number: Int(i))
            let (first, count, kind) = (e.firstBlock, e.blockCount, e.kind)
            guard count > 0, first >= nextBlock, first <= blockCount, UInt64(count) <= blockCount - first else {
                throw FormatError.invalid("extent \(i) is out of order or beyond the source")
            }
            if h.kind == .full && first != nextBlock { throw FormatError.invalid("full image does not cover block \(nextBlock)") }
            switch kind {
            case .data:
                guard Int(e.frame) < frames.count, sparse ? e.frameBlock >= frameUse[Int(e.frame)] : e.frameBlock == frameUse[Int(e.frame)],
                    UInt64(e.frameBlock) + UInt64(count) <= UInt64(frames[Int(e.frame)].blockCount)
                else { throw FormatError.invalid("extent \(i) points outside its frame") }
                frameUse[Int(e.frame)] = e.frameBlock + count
                data += UInt64(count)
            case .zero, .free: zero += UInt64(count)
            case .unreadable: unreadable += UInt64(count)
            }
            nextBlock = e.endBlock
            extents.append(e)
        }
        if h.kind == .full && nextBlock != blockCount { throw FormatError.invalid("full image does not cover the whole source") }
        guard zip(frameUse, frames).allSatisfy({ sparse ? $0 > 0 : $0 == $1.blockCount }) else {
            throw FormatError.invalid("a frame holds blocks that no extent uses")
        }
        guard data == h.dataBlocks, zero == h.zeroBlocks, unreadable == h.unreadableBlocks else {
            throw FormatError.invalid("image block counts differ from the header's")
        }
        return ImageIndex(frames: frames, extents: extents)
    }
}
