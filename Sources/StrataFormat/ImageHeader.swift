// The first 4096 bytes of every image file (docs/FORMAT.md, "Image header"). Written once as a placeholder
// when an image is started and rewritten with the index location when it is finished, so a reader checks
// one structure to learn everything needed to trust the rest of the file.

public enum ImageKind: UInt32, Sendable {
    /// Holds every block of the source: restoring it needs no other image.
    case full = 0
    /// Holds only the blocks that changed since its parent.
    case incremental = 1
}

/// Feature bits. Unknown incompatible bits make a reader refuse the file; unknown compatible bits are ignored.
public enum ImageFeatures {
    /// Incompatible bit 0: a frame may hold blocks that no extent uses (a merged image keeps a frame whole while
    /// most of its blocks are live, instead of re-compressing the live ones). Extents still use each frame's
    /// blocks in order, without overlap; a reader that does not know the bit refuses the image.
    public static let sparseFrames: UInt64 = 1 << 0
    /// Incompatible bit 1: the index is chunked (IndexChunks.swift): frame and extent records in checksummed
    /// chunks among the frames, and a table of them where the index would be, so neither a writer nor a reader
    /// holds a whole index. Set on every image this version writes.
    public static let chunkedIndex: UInt64 = 1 << 1
    /// Incompatible bit 2: the image is encrypted (docs/ENCRYPTION.md): frames sealed, frame chunks authenticated,
    /// extent chunks sealed, the header and chunk table authenticated by `authenticator`.
    public static let encrypted: UInt64 = 1 << 2
    /// Incompatible bit 3: frames may be stored as independent zstd sub-frames (`FrameCodec.zstdSubframes`), so
    /// a reader decodes only the part of a frame it wants. Set on the images of a seekable chain (`capture
    /// --seekable`: a chain whose newest image has it stays so) and on any image holding such frames.
    public static let subframes: UInt64 = 1 << 3
    public static let knownIncompatible: UInt64 = sparseFrames | chunkedIndex | encrypted | subframes
    public static let knownCompatible: UInt64 = 0
}

public struct ImageHeader: Equatable, Sendable {
    public static let size = 4096
    public static let magic: [UInt8] = Array("STRATAIM".utf8)
    public static let version: UInt32 = 1
    /// Frames hold at most this many bytes of blocks, and a block is at most this large.
    public static let maxBlockSize: UInt32 = 1 << 20
    public static let minBlockSize: UInt32 = 512
    /// A source is addressed by off_t: a size beyond it is damage, and refused before any arithmetic uses it.
    public static let maxSourceSize = UInt64(Int64.max)

    public var incompatibleFeatures: UInt64 = 0
    public var compatibleFeatures: UInt64 = 0
    public var kind: ImageKind
    public var blockSize: UInt32
    public var sourceSize: UInt64
    public var chainID: Identifier
    public var imageID: Identifier
    public var parentID: Identifier
    /// The points whose changes this image holds: first == last for a capture, a range after a merge.
    public var firstPoint: UInt32
    public var lastPoint: UInt32
    /// Seconds since the Unix epoch when the image was made.
    public var createdAt: UInt64
    public var indexOffset: UInt64 = 0
    public var indexLength: UInt64 = 0
    public var indexChecksum: UInt32 = 0
    /// The exact length of the finished file; a reader rejects any other length.
    public var fileSize: UInt64 = 0
    public var frameCount: UInt64 = 0
    public var extentCount: UInt64 = 0
    public var dataBlocks: UInt64 = 0
    public var zeroBlocks: UInt64 = 0
    public var unreadableBlocks: UInt64 = 0
    /// Bytes of frames (hashes and payloads) in the file.
    public var storedBytes: UInt64 = 0
    /// Encrypted images: keyed BLAKE2b-256 of bytes 0..191 and the chunk table (bytes 192..223). Zeros otherwise.
    public var authenticator = [UInt8](repeating: 0, count: 32)
    /// The bytes the authenticator covers, before the chunk table.
    public static let authenticatedPrefix = 192

    public init(
        kind: ImageKind, blockSize: UInt32, sourceSize: UInt64, chainID: Identifier, imageID: Identifier,
        parentID: Identifier, firstPoint: UInt32, lastPoint: UInt32, createdAt: UInt64
    ) {
        self.kind = kind
        self.blockSize = blockSize
        self.sourceSize = sourceSize
        self.chainID = chainID
        self.imageID = imageID
        self.parentID = parentID
        self.firstPoint = firstPoint
        self.lastPoint = lastPoint
        self.createdAt = createdAt
    }

    /// Whether the index is chunked (feature bit 1) rather than one table.
    public var isChunked: Bool { incompatibleFeatures & ImageFeatures.chunkedIndex != 0 }

    /// Whether the image is encrypted (feature bit 2).
    public var isEncrypted: Bool { incompatibleFeatures & ImageFeatures.encrypted != 0 }
    public var isSeekable: Bool { incompatibleFeatures & ImageFeatures.subframes != 0 }

    /// Number of blocks covering the source; the last may be partial.
    public var blockCount: UInt64 { blockCountFor(sourceSize: sourceSize, blockSize: blockSize) }

    /// Whether the image's extents cover every block of the source (a full image, a synthetic full, a capture
    /// that compared nothing): points from it on need no older image. The index checks its extents are sorted,
    /// disjoint and add up to these counts.
    public var coversEveryBlock: Bool {
        let (a, o1) = dataBlocks.addingReportingOverflow(zeroBlocks)
        let (b, o2) = a.addingReportingOverflow(unreadableBlocks)
        return !o1 && !o2 && b == blockCount
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter(capacity: Self.size)
        w.raw(Self.magic)  // 0
        w.u32(Self.version)  // 8
        w.u32(UInt32(Self.size))  // 12
        w.u64(incompatibleFeatures)  // 16
        w.u64(compatibleFeatures)  // 24
        w.u32(kind.rawValue)  // 32
        w.u32(blockSize)  // 36
        w.u64(sourceSize)  // 40
        w.raw(chainID.bytes)  // 48
        w.raw(imageID.bytes)  // 64
        w.raw(parentID.bytes)  // 80
        w.u32(firstPoint)  // 96
        w.u32(lastPoint)  // 100
        w.u64(createdAt)  // 104
        w.u64(indexOffset)  // 112
        w.u64(indexLength)  // 120
        w.u32(indexChecksum)  // 128
        w.u32(0)  // 132 reserved
        w.u64(fileSize)  // 136
        w.u64(frameCount)  // 144
        w.u64(extentCount)  // 152
        w.u64(dataBlocks)  // 160
        w.u64(zeroBlocks)  // 168
        w.u64(unreadableBlocks)  // 176
        w.u64(storedBytes)  // 184
        w.raw(authenticator)  // 192
        w.pad(to: Self.size - 4)
        w.u32(CRC32C.checksum(w.bytes))  // 4092
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> ImageHeader {
        let what = "image header"
        guard bytes.count >= size else { throw FormatError.truncated(what, at: UInt64(bytes.count)) }
        guard Array(bytes[0..<8]) == magic else { throw FormatError.badMagic(what) }
        var r = ByteReader(bytes, what: what, offset: 8)
        let version = try r.u32()
        guard version <= Self.version else { throw FormatError.unsupported("image format version \(version)") }
        guard try r.u32() == UInt32(size) else { throw FormatError.invalid("image header has a wrong size field") }
        var c = ByteReader(bytes, what: what, offset: size - 4)
        guard try c.u32() == CRC32C.checksum(bytes[0..<(size - 4)]) else {
            throw FormatError.checksumMismatch(what)
        }
        let incompatible = try r.u64()
        guard incompatible & ~ImageFeatures.knownIncompatible == 0 else {
            throw FormatError.unsupported("image feature bits \(String(incompatible, radix: 16))")
        }
        let compatible = try r.u64()
        guard let kind = ImageKind(rawValue: try r.u32()) else { throw FormatError.invalid("unknown image kind") }
        let blockSize = try r.u32()
        guard isValidBlockSize(blockSize) else { throw FormatError.invalid("image block size \(blockSize) is invalid") }
        var h = ImageHeader(
            kind: kind, blockSize: blockSize, sourceSize: try r.u64(), chainID: Identifier(bytes: try r.raw(16)),
            imageID: Identifier(bytes: try r.raw(16)), parentID: Identifier(bytes: try r.raw(16)),
            firstPoint: try r.u32(), lastPoint: try r.u32(), createdAt: try r.u64())
        h.incompatibleFeatures = incompatible
        h.compatibleFeatures = compatible
        h.indexOffset = try r.u64()
        h.indexLength = try r.u64()
        h.indexChecksum = try r.u32()
        _ = try r.u32()
        h.fileSize = try r.u64()
        h.frameCount = try r.u64()
        h.extentCount = try r.u64()
        h.dataBlocks = try r.u64()
        h.zeroBlocks = try r.u64()
        h.unreadableBlocks = try r.u64()
        h.storedBytes = try r.u64()
        h.authenticator = try r.raw(32)
        guard h.isEncrypted ? h.isChunked : h.authenticator.allSatisfy({ $0 == 0 }) else {
            throw FormatError.invalid("image header's encryption fields are inconsistent")
        }
        guard h.sourceSize <= maxSourceSize else { throw FormatError.invalid("image source size \(h.sourceSize) is implausible") }
        guard h.firstPoint >= 1, h.firstPoint <= h.lastPoint else { throw FormatError.invalid("image point range is invalid") }
        guard h.indexOffset >= UInt64(size), h.indexLength <= h.fileSize, h.indexOffset == h.fileSize - h.indexLength
        else { throw FormatError.invalid("image index location is invalid") }
        // A chunked index's exact length depends on its chunk size, which it gives itself (TopIndex.decode).
        guard h.isChunked
            ? h.indexLength <= TopIndex.maxEncodedLength(frames: h.frameCount, extents: h.extentCount)
            : h.indexLength == ImageIndex.encodedLength(frames: h.frameCount, extents: h.extentCount)
        else {
            throw FormatError.invalid("image index length does not match its counts")
        }
        return h
    }
}

public func isValidBlockSize(_ size: UInt32) -> Bool {
    size >= ImageHeader.minBlockSize && size <= ImageHeader.maxBlockSize && size & (size - 1) == 0
}

public func blockCountFor(sourceSize: UInt64, blockSize: UInt32) -> UInt64 {
    // Rounded up without adding first, so no size can overflow it.
    sourceSize / UInt64(blockSize) + (sourceSize % UInt64(blockSize) == 0 ? 0 : 1)
}
