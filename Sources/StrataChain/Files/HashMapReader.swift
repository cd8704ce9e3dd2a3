// Reading the hash map of the newest point, forward, one chunk at a time (each checked against its checksum):
// a capture holds one chunk of the old map in memory, whatever the size of the device.
import StrataCodec
import StrataFormat
import StrataIO

final class HashMapReader {
    let name: String
    let header: HashMapHeader
    private let object: StoredObject
    private let hashes: UnsafeMutablePointer<BlockHash>
    private let stored: UnsafeMutableRawPointer
    private let decompressor: FrameDecompressor
    private var offset = UInt64(HashMapHeader.size)
    private var chunk: Int = -1
    private var fileSize: UInt64
    /// Block ranges, sorted, whose hashes read as `.damaged` (their stored copies are damaged: a capture heals them).
    var damagedRuns: [Range<UInt64>] = []
    private let keys: ChainKeys?
    /// The next chunk's header, read with the chunk before it (one read a chunk, not two: each is a request to an
    /// object store).
    private var nextHeader: [UInt8]?

    init(store: ChainStore, name: String, keys: ChainKeys?) throws {
        self.name = name
        self.keys = keys
        do {
            let object = try store.open(name)
            self.object = object
            fileSize = object.size
            var bytes = [UInt8](repeating: 0, count: HashMapHeader.size)
            _ = try bytes.withUnsafeMutableBytes { try object.read(into: $0.baseAddress!, count: $0.count, at: 0) }
            header = try HashMapHeader.decode(bytes)
            guard header.fileSize == fileSize else { throw FormatError.truncated("hash map", at: fileSize) }
        } catch {
            throw damaged(name, error)
        }
        hashes = .allocate(capacity: Int(HashMapHeader.chunkBlocks))
        stored = .allocate(byteCount: hashMapChunkBytes + 65536 + HashMapChunkHeader.size + Sealing.overhead, alignment: 64)
        decompressor = try FrameDecompressor()
    }

    deinit {
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
        var hb = nextHeader ?? [UInt8](repeating: 0, count: HashMapChunkHeader.size)
        if nextHeader == nil {
            let n = try hb.withUnsafeMutableBytes { try object.read(into: $0.baseAddress!, count: $0.count, at: offset) }
            guard n == HashMapChunkHeader.size else { throw FormatError.truncated("hash map chunk \(next)", at: offset) }
        }
        nextHeader = nil
        let ch = try HashMapChunkHeader.decode(hb)
        let storedLength = Int(ch.storedLength)
        var length = storedLength
        let end = offset + UInt64(HashMapChunkHeader.size + length)
        guard end <= fileSize, length <= hashMapChunkBytes + 65536 + Sealing.overhead else { throw FormatError.truncated("hash map chunk \(next)", at: offset) }
        let withNext = end + UInt64(HashMapChunkHeader.size) <= fileSize ? HashMapChunkHeader.size : 0
        let n = try object.read(into: stored, count: length + withNext, at: offset + UInt64(HashMapChunkHeader.size))
        guard n == length + withNext else { throw FormatError.truncated("hash map chunk \(next)", at: offset) }
        if withNext > 0 { nextHeader = Array(UnsafeRawBufferPointer(start: stored + length, count: withNext)) }
        guard Checksum.xxh3(stored, count: length) == ch.checksum else { throw FormatError.checksumMismatch("hash map chunk \(next)") }
        guard ch.sealed == (keys != nil) else { throw FormatError.invalid("hash map chunk \(next) is \(ch.sealed ? "" : "not ")sealed in a chain that is \(keys != nil ? "" : "not ")encrypted") }
        if let keys {
            guard let plain = keys.open(Array(UnsafeRawBufferPointer(start: stored, count: length)), .hashMapChunk, context: hashMapContext(header, chunk: next)) else {
                throw FormatError.invalid("hash map chunk \(next) does not open with this chain's key")
            }
            length = plain.count
            stored.copyMemory(from: plain, byteCount: length)
        }
        let raw = blocksInChunk * 16
        switch ch.codec {
        case .raw:
            guard length == raw else { throw FormatError.invalid("hash map chunk \(next) has the wrong length") }
            UnsafeMutableRawPointer(hashes).copyMemory(from: stored, byteCount: raw)
        case .zstd:
            do { try decompressor.decompress(stored, count: length, into: hashes, expected: raw) } catch {
                throw FormatError.invalid("hash map chunk \(next) does not decompress: \(error)")
            }
        case .zstdSubframes:
            throw FormatError.invalid("hash map chunk \(next) has a frame's codec")  // refused when its header was read
        }
        offset += UInt64(HashMapChunkHeader.size + storedLength)
        chunk = next
        let first = UInt64(next) * UInt64(HashMapHeader.chunkBlocks)
        markDamaged(hashes, first: first, end: first + UInt64(blocksInChunk), damagedRuns)
    }
}
