// The hash map of a chain's newest point (docs/FORMAT.md, "Hash map"): the XXH3-128 of every block of the
// source, in block order, so the next capture can tell changed blocks from unchanged ones while streaming.
// Stored as a 4096-byte header followed by fixed-size chunks, each compressed and checksummed on its own, so a
// capture reads it chunk by chunk beside the device and memory does not grow with the device.

public struct HashMapHeader: Equatable, Sendable {
    public static let size = 4096
    public static let magic: [UInt8] = Array("STRATAMP".utf8)
    public static let version: UInt32 = 1
    /// Blocks per chunk: 1 MiB of hashes, 256 MiB of source at 4 KiB blocks.
    public static let chunkBlocks: UInt32 = 65536

    public var blockSize: UInt32
    public var sourceSize: UInt64
    public var chainID: Identifier
    /// The image of the point whose block hashes these are.
    public var imageID: Identifier
    public var point: UInt32
    public var chunkCount: UInt64 = 0
    public var fileSize: UInt64 = 0

    public init(blockSize: UInt32, sourceSize: UInt64, chainID: Identifier, imageID: Identifier, point: UInt32) {
        self.blockSize = blockSize
        self.sourceSize = sourceSize
        self.chainID = chainID
        self.imageID = imageID
        self.point = point
    }

    public var blockCount: UInt64 { blockCountFor(sourceSize: sourceSize, blockSize: blockSize) }
    public var expectedChunkCount: UInt64 { (blockCount + UInt64(Self.chunkBlocks) - 1) / UInt64(Self.chunkBlocks) }

    public func encode() -> [UInt8] {
        var w = ByteWriter(capacity: Self.size)
        w.raw(Self.magic)  // 0
        w.u32(Self.version)  // 8
        w.u32(Self.chunkBlocks)  // 12
        w.u32(blockSize)  // 16
        w.u32(point)  // 20
        w.u64(sourceSize)  // 24
        w.raw(chainID.bytes)  // 32
        w.raw(imageID.bytes)  // 48
        w.u64(chunkCount)  // 64
        w.u64(fileSize)  // 72
        w.pad(to: Self.size - 4)
        w.u32(CRC32C.checksum(w.bytes))  // 4092
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> HashMapHeader {
        let what = "hash map header"
        guard bytes.count >= size else { throw FormatError.truncated(what, at: UInt64(bytes.count)) }
        guard Array(bytes[0..<8]) == magic else { throw FormatError.badMagic(what) }
        var c = ByteReader(bytes, what: what, offset: size - 4)
        guard try c.u32() == CRC32C.checksum(bytes[0..<(size - 4)]) else { throw FormatError.checksumMismatch(what) }
        var r = ByteReader(bytes, what: what, offset: 8)
        guard try r.u32() == version else { throw FormatError.unsupported("hash map version") }
        guard try r.u32() == chunkBlocks else { throw FormatError.unsupported("hash map chunk size") }
        let blockSize = try r.u32()
        guard isValidBlockSize(blockSize) else { throw FormatError.invalid("hash map block size is invalid") }
        let point = try r.u32()
        var h = HashMapHeader(
            blockSize: blockSize, sourceSize: try r.u64(), chainID: Identifier(bytes: try r.raw(16)),
            imageID: Identifier(bytes: try r.raw(16)), point: point)
        guard h.sourceSize <= ImageHeader.maxSourceSize else { throw FormatError.invalid("hash map source size is implausible") }
        h.chunkCount = try r.u64()
        h.fileSize = try r.u64()
        guard h.chunkCount == h.expectedChunkCount else { throw FormatError.invalid("hash map chunk count is wrong") }
        return h
    }
}

/// Precedes each hash-map chunk: 16 bytes. A sealed chunk (encrypted chains; bit 7 of the codec byte) stores a salt,
/// the chunk's bytes encrypted and a tag (`Sealing`), and its checksum covers them as stored.
public struct HashMapChunkHeader: Equatable, Sendable {
    public static let size = 16
    public var storedLength: UInt32
    public var codec: FrameCodec
    public var checksum: UInt64
    public var sealed: Bool

    public init(storedLength: UInt32, codec: FrameCodec, checksum: UInt64, sealed: Bool = false) {
        self.storedLength = storedLength
        self.codec = codec
        self.checksum = checksum
        self.sealed = sealed
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter(capacity: Self.size)
        w.u32(storedLength)
        w.u8(codec.rawValue | (sealed ? Sealing.sealedCodecBit : 0))
        w.zeros(3)
        w.u64(checksum)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> HashMapChunkHeader {
        var r = ByteReader(bytes, what: "hash map chunk header")
        let length = try r.u32()
        let codecByte = try r.u8()
        guard let codec = FrameCodec(rawValue: codecByte & ~Sealing.sealedCodecBit), codec != .zstdSubframes else {
            throw FormatError.invalid("hash map chunk codec is unknown")
        }
        try r.skip(3)
        guard length > 0, length <= HashMapHeader.chunkBlocks * 16 + 65536 + UInt32(Sealing.overhead) else {
            throw FormatError.invalid("hash map chunk length is implausible")
        }
        return HashMapChunkHeader(storedLength: length, codec: codec, checksum: try r.u64(), sealed: codecByte & Sealing.sealedCodecBit != 0)
    }
}
