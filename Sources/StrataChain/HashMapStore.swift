// Streaming reader and writer of the hash map file (layout in StrataFormat/HashMapFormat.swift). A capture
// holds one chunk of the old map and one of the new in memory (1 MiB each), whatever the size of the device.
import StrataCodec
import StrataFormat
import StrataIO

#if canImport(Glibc)
import Glibc
#endif

/// Hashes are stored as XXH3-128 low then high, little-endian: exactly `BlockHash`'s memory layout on the
/// little-endian machines Strata runs on, so chunks move between memory and disk without conversion.
private let chunkBytes = Int(HashMapHeader.chunkBlocks) * MemoryLayout<BlockHash>.stride

final class HashMapWriter {
    let directory: String
    let name: String
    private let temporaryPath: String
    private let fd: Int32
    private var header: HashMapHeader
    private let hashes: UnsafeMutablePointer<BlockHash>
    private var filled = 0
    private var offset = UInt64(HashMapHeader.size)
    private let compressed: UnsafeMutableRawPointer
    private let compressedCapacity: Int
    private let compressor: FrameCompressor

    init(directory: String, name: String, header: HashMapHeader) throws {
        precondition(MemoryLayout<BlockHash>.stride == 16 && UInt64(1).littleEndian == 1)
        self.directory = directory
        self.name = name
        self.header = header
        temporaryPath = "\(directory)/\(DurableFiles.temporaryName(for: name))"
        fd = try Sys.create(temporaryPath, O_WRONLY | O_TRUNC)
        hashes = .allocate(capacity: Int(HashMapHeader.chunkBlocks))
        compressedCapacity = FrameCompressor.storeBound(chunkBytes) + HashMapChunkHeader.size
        compressed = .allocate(byteCount: compressedCapacity, alignment: 64)
        compressor = try FrameCompressor(level: 1)
    }

    deinit {
        Sys.close(fd)
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
        let (length, isCompressed) = compressor.compressOrStore(hashes, count: raw, into: payload, capacity: compressedCapacity - HashMapChunkHeader.size)
        let chunkHeader = HashMapChunkHeader(storedLength: UInt32(length), codec: isCompressed ? .zstd : .raw, checksum: Checksum.xxh3(payload, count: length))
        chunkHeader.encode().withUnsafeBytes { compressed.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        try Sys.pwriteAll(fd, compressed, length + HashMapChunkHeader.size, offset, path: temporaryPath)
        offset += UInt64(length + HashMapChunkHeader.size)
        header.chunkCount += 1
        filled = 0
    }

    /// Flushes, writes the header, fsyncs and renames into place (the directory fsync is the caller's, once
    /// for everything it publishes).
    func finish() throws {
        try flushChunk()
        header.fileSize = offset
        let bytes = header.encode()
        try bytes.withUnsafeBytes { try Sys.pwriteAll(fd, $0.baseAddress!, $0.count, 0, path: temporaryPath) }
        try Sys.fsync(fd, path: temporaryPath)
        try Sys.rename(temporaryPath, "\(directory)/\(name)")
    }

    func abandon() { try? Sys.unlink(temporaryPath) }
}

final class HashMapReader {
    let name: String
    let header: HashMapHeader
    private let path: String
    private let fd: Int32
    private let hashes: UnsafeMutablePointer<BlockHash>
    private let stored: UnsafeMutableRawPointer
    private let decompressor: FrameDecompressor
    private var offset = UInt64(HashMapHeader.size)
    private var chunk: Int = -1
    private var fileSize: UInt64

    init(directory: String, name: String) throws {
        self.name = name
        let path = "\(directory)/\(name)"
        self.path = path
        let fd: Int32
        do { fd = try Sys.open(path, O_RDONLY) } catch { throw damaged(name, error) }
        self.fd = fd
        do {
            fileSize = UInt64(try Sys.fstat(fd, path: path).st_size)
            var bytes = [UInt8](repeating: 0, count: HashMapHeader.size)
            _ = try bytes.withUnsafeMutableBytes { try Sys.preadFully(fd, $0.baseAddress!, $0.count, 0, path: path) }
            header = try HashMapHeader.decode(bytes)
            guard header.fileSize == fileSize else { throw FormatError.truncated("hash map", at: fileSize) }
        } catch {
            Sys.close(fd)
            throw damaged(name, error)
        }
        hashes = .allocate(capacity: Int(HashMapHeader.chunkBlocks))
        stored = .allocate(byteCount: chunkBytes + 65536 + HashMapChunkHeader.size, alignment: 64)
        decompressor = try FrameDecompressor()
    }

    deinit {
        Sys.close(fd)
        hashes.deallocate()
        stored.deallocate()
    }

    /// The hashes of `count` blocks from `block`, which must not straddle a chunk. Runs must be asked for in
    /// increasing order: the map is read once, forward.
    func hashes(from block: UInt64, count: Int) throws -> UnsafePointer<BlockHash> {
        let per = UInt64(HashMapHeader.chunkBlocks)
        let c = Int(block / per)
        precondition(Int(block % per) + count <= Int(per), "hash run straddles a chunk")
        if c != chunk { try load(c) }
        return UnsafePointer(hashes + Int(block % per))
    }

    private func load(_ c: Int) throws {
        precondition(c > chunk, "hash map read backwards")
        while chunk < c {
            do { try readNextChunk() } catch { throw damaged(name, error) }
        }
    }

    private func readNextChunk() throws {
        let next = chunk + 1
        guard UInt64(next) < header.chunkCount else { throw FormatError.invalid("hash map has too few chunks") }
        let blocksInChunk = Int(min(UInt64(HashMapHeader.chunkBlocks), header.blockCount - UInt64(next) * UInt64(HashMapHeader.chunkBlocks)))
        var hb = [UInt8](repeating: 0, count: HashMapChunkHeader.size)
        let n = try hb.withUnsafeMutableBytes { try Sys.preadFully(fd, $0.baseAddress!, $0.count, offset, path: path) }
        guard n == HashMapChunkHeader.size else { throw FormatError.truncated("hash map chunk \(next)", at: offset) }
        let ch = try HashMapChunkHeader.decode(hb)
        let length = Int(ch.storedLength)
        guard offset + UInt64(HashMapChunkHeader.size + length) <= fileSize else { throw FormatError.truncated("hash map chunk \(next)", at: offset) }
        _ = try Sys.preadFully(fd, stored, length, offset + UInt64(HashMapChunkHeader.size), path: path)
        guard Checksum.xxh3(stored, count: length) == ch.checksum else { throw FormatError.checksumMismatch("hash map chunk \(next)") }
        let raw = blocksInChunk * 16
        switch ch.codec {
        case .raw:
            guard length == raw else { throw FormatError.invalid("hash map chunk \(next) has the wrong length") }
            UnsafeMutableRawPointer(hashes).copyMemory(from: stored, byteCount: raw)
        case .zstd:
            do { try decompressor.decompress(stored, count: length, into: hashes, expected: raw) } catch {
                throw FormatError.invalid("hash map chunk \(next) does not decompress: \(error)")
            }
        }
        offset += UInt64(HashMapChunkHeader.size + length)
        chunk = next
    }
}
