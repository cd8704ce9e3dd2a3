// Buffers in which frames are assembled before they are appended to an image, shared by capture and merge.
// Each buffer is laid out [blocks | block hashes | payload | room for salt and tag]: the caller copies up to
// `blocksPerFrame` blocks and their hashes in, then `seal` compresses the blocks (or stores them raw), moves the
// hashes to sit right before the payload, encrypts both in place for an encrypted chain (salt and tag after),
// and checksums what is stored, so the finished frame is one contiguous run of bytes, as on disk.
import StrataCodec
import StrataFormat
import StrataIO

/// A finished frame inside a `FrameBuffers` buffer: `length` bytes from `start`, ready to append.
struct SealedFrame {
    var start: UnsafeRawPointer
    var length: Int
    var blockCount: Int
    var codec: FrameCodec
    var checksum: UInt64
    var sealed: Bool
}

final class FrameBuffers {
    let blockSize: Int
    /// Blocks per frame: 1 MiB of them.
    let blocksPerFrame: Int
    var count: Int { slab.slotCount }
    private let slab: AlignedSlab
    private let hashOffset: Int
    private let payloadOffset: Int
    private let payloadCapacity: Int
    /// An encrypted chain's keys: frames are sealed.
    let keys: ChainKeys?

    /// How many blocks of `blockSize` a frame holds: 1 MiB of them (capture and merge plan with this).
    static func blocksPerFrame(blockSize: Int) -> Int { max(1, Int(ImageHeader.maxBlockSize) / blockSize) }

    init(blockSize: Int, count: Int, keys: ChainKeys?) {
        self.blockSize = blockSize
        self.keys = keys
        blocksPerFrame = Self.blocksPerFrame(blockSize: blockSize)
        let raw = blocksPerFrame * blockSize
        hashOffset = raw
        payloadOffset = raw + blocksPerFrame * 16
        payloadCapacity = FrameCompressor.storeBound(raw)
        slab = AlignedSlab(slotSize: payloadOffset + payloadCapacity + Sealing.overhead, slotCount: count, alignment: 64)
    }

    /// Where block `index` of buffer `buffer` goes.
    @inline(__always)
    func block(_ buffer: Int, _ index: Int) -> UnsafeMutableRawPointer { slab.slot(buffer) + index * blockSize }

    /// Where the hash of block `index` of buffer `buffer` goes (16 bytes, XXH3-128 low then high).
    @inline(__always)
    func hash(_ buffer: Int, _ index: Int) -> UnsafeMutableRawPointer { slab.slot(buffer) + hashOffset + index * 16 }

    /// Compresses the first `blockCount` blocks of `buffer` (or, with `blocks`, that many blocks elsewhere: a
    /// read slot holding a whole frame) into a frame; the buffer holds it until reused.
    func seal(_ buffer: Int, blockCount: Int, compressor: FrameCompressor, blocks: UnsafeRawPointer? = nil) -> SealedFrame {
        let base = slab.slot(buffer)
        let payload = base + payloadOffset
        let hashes = payload - blockCount * 16
        if blockCount < blocksPerFrame { hashes.copyMemory(from: base + hashOffset, byteCount: blockCount * 16) }
        let stored = compressor.compressOrStore(blocks ?? UnsafeRawPointer(base), count: blockCount * blockSize, into: payload, capacity: payloadCapacity)
        var length = blockCount * 16 + stored.length
        if let keys { length = keys.sealFrame(hashes, plainLength: length) }
        return SealedFrame(
            start: UnsafeRawPointer(hashes), length: length, blockCount: blockCount, codec: stored.compressed ? .zstd : .raw,
            checksum: Checksum.xxh3(hashes, count: length), sealed: keys != nil)
    }
}
