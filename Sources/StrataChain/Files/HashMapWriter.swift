// Writing the hash map (layout in StrataFormat/HashMapFormat.swift) through the chain store, one 1 MiB chunk
// of hashes at a time, compressed and checksummed: a capture holds one chunk of the new map in memory, whatever
// the size of the device.
import StrataCodec
import StrataFormat
import StrataIO

/// Hashes are stored as XXH3-128 low then high, little-endian: exactly `BlockHash`'s memory layout on the
/// little-endian machines Strata runs on, so chunks move between memory and disk without conversion.
let hashMapChunkBytes = Int(HashMapHeader.chunkBlocks) * MemoryLayout<BlockHash>.stride

final class HashMapWriter {
    let name: String
    private let object: NewObject
    private var header: HashMapHeader
    private let hashes: UnsafeMutablePointer<BlockHash>
    private var filled = 0
    private var offset = UInt64(HashMapHeader.size)
    private let compressed: UnsafeMutableRawPointer
    private let compressedCapacity: Int
    private let compressor: FrameCompressor
    /// An encrypted chain's keys: each chunk is sealed, bound to the map's point and its number.
    private let keys: ChainKeys?

    init(store: ChainStore, name: String, header: HashMapHeader, keys: ChainKeys?) throws {
        precondition(MemoryLayout<BlockHash>.stride == 16 && UInt64(1).littleEndian == 1)
        self.name = name
        self.header = header
        self.keys = keys
        object = try store.create(name, expectedSize: header.blockCount * 17 + (1 << 20))  // 16 bytes a block and chunk headers
        hashes = .allocate(capacity: Int(HashMapHeader.chunkBlocks))
        compressedCapacity = FrameCompressor.storeBound(hashMapChunkBytes) + HashMapChunkHeader.size + Sealing.overhead
        compressed = .allocate(byteCount: compressedCapacity, alignment: 64)
        compressor = try FrameCompressor(level: 1)
    }

    deinit {
        hashes.deallocate()
        compressed.deallocate()
    }

    /// Room for the hashes of the next `count` blocks, which the caller fills and then passes to `commit`.
    /// A run never straddles a chunk: capture runs are a power of two no larger than a chunk.
    func reserve(_ count: Int) -> UnsafeMutablePointer<BlockHash> {
        precondition(filled + count <= Int(HashMapHeader.chunkBlocks), "hash run straddles a chunk")
        return hashes + filled
    }

    func commit(_ count: Int) throws {
        filled += count
        if filled == Int(HashMapHeader.chunkBlocks) { try flushChunk() }
    }

    private func flushChunk() throws {
        guard filled > 0 else { return }
        let raw = filled * 16
        let payload = compressed + HashMapChunkHeader.size
        var (length, isCompressed) = compressor.compressOrStore(hashes, count: raw, into: payload, capacity: compressedCapacity - HashMapChunkHeader.size)
        if let keys {
            let context = hashMapContext(header, chunk: Int(header.chunkCount))
            let sealed = keys.seal(Array(UnsafeRawBufferPointer(start: payload, count: length)), .hashMapChunk, context: context)
            sealed.withUnsafeBytes { payload.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            length = sealed.count
        }
        let chunkHeader = HashMapChunkHeader(
            storedLength: UInt32(length), codec: isCompressed ? .zstd : .raw, checksum: Checksum.xxh3(payload, count: length), sealed: keys != nil)
        chunkHeader.encode().withUnsafeBytes { compressed.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        try object.write(compressed, count: length + HashMapChunkHeader.size, at: offset)
        offset += UInt64(length + HashMapChunkHeader.size)
        header.chunkCount += 1
        filled = 0
    }

    /// Flushes, writes the header and publishes the map (the caller syncs the store's published objects once,
    /// for everything it publishes).
    func finish() throws {
        try flushChunk()
        header.fileSize = offset
        let bytes = header.encode()
        try bytes.withUnsafeBytes { try object.write($0.baseAddress!, count: $0.count, at: 0) }
        try object.publish()
    }

    func abandon() { object.abandon() }
}

/// What binds a sealed hash-map chunk to its place: the map's point (its image id) and the chunk's number.
func hashMapContext(_ h: HashMapHeader, chunk: Int) -> [UInt8] {
    var w = ByteWriter(capacity: 24)
    w.raw(h.imageID.bytes)
    w.u64(UInt64(chunk))
    return w.bytes
}
