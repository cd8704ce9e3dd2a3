// Buffers in which frames are assembled before they are appended to an image, shared by capture and merge.
// Each buffer is laid out [blocks | block hashes | payload | room for salt and tag]: the caller copies up to
// `blocksPerFrame` blocks and their hashes in, then `seal` compresses the blocks (or stores them raw), moves the
// hashes to sit right before the payload, encrypts both in place for an encrypted chain (salt and tag after),
// and checksums what is stored, so the finished frame is one contiguous run of bytes, as on disk. In a seekable
// chain (`capture --seekable`) the blocks are compressed as independent zstd sub-frames of 32 KiB
// (`FrameCodec.zstdSubframes`), so that a reader of a few blocks (a mounted point read at random) decodes 32 KiB,
// not the whole 1 MiB; docs/DESIGN.md, "Random reads", gives the measurements behind the size and the choice.
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

    /// Blocks a sub-frame holds; nil: frames are one zstd frame each.
    let blocksPerSubframe: Int?

    /// `subframeBytes`: the bytes of blocks a sub-frame holds (at least one block; `Tuning`'s). Readers take any
    /// size (each frame's table says its own): chains written before 2026-12-02 have 64 KiB sub-frames, and tests
    /// write such chains.
    init(blockSize: Int, count: Int, keys: ChainKeys?, subframes: Bool = false, subframeBytes: Int = Tuning().subframeBytes) {
        self.blockSize = blockSize
        self.keys = keys
        blocksPerFrame = Self.blocksPerFrame(blockSize: blockSize)
        let raw = blocksPerFrame * blockSize
        hashOffset = raw
        payloadOffset = raw + blocksPerFrame * 16
        let per = max(1, min(blocksPerFrame, subframeBytes / blockSize))
        let n = (blocksPerFrame + per - 1) / per
        precondition(n <= SubframeTable.mostSubframes, "sub-frames of \(subframeBytes) bytes are too small")
        blocksPerSubframe = subframes ? per : nil
        payloadCapacity = max(FrameCompressor.storeBound(raw), subframes ? SubframeTable.length(count: n) + n * FrameCompressor.bound(per * blockSize) : 0)
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
        let source = blocks ?? UnsafeRawPointer(base)
        let (stored, codec): (Int, FrameCodec)
        if let per = blocksPerSubframe {
            (stored, codec) = compress(source, blockCount: blockCount, per: per, into: payload, compressor: compressor)
        } else {
            let s = compressor.compressOrStore(source, count: blockCount * blockSize, into: payload, capacity: payloadCapacity)
            (stored, codec) = (s.length, s.compressed ? .zstd : .raw)
        }
        var length = blockCount * 16 + stored
        if let keys { length = keys.sealFrame(hashes, plainLength: length) }
        return SealedFrame(
            start: UnsafeRawPointer(hashes), length: length, blockCount: blockCount, codec: codec, checksum: Checksum.xxh3(hashes, count: length),
            sealed: keys != nil)
    }

    /// Compresses `blockCount` blocks into independent sub-frames after their table, or stores them raw where
    /// that would not be smaller. Returns the payload's length and codec.
    private func compress(
        _ source: UnsafeRawPointer, blockCount: Int, per: Int, into payload: UnsafeMutableRawPointer, compressor: FrameCompressor
    ) -> (Int, FrameCodec) {
        let raw = blockCount * blockSize
        let n = (blockCount + per - 1) / per
        SubframeTable.start(at: payload, blocksPerSubframe: per, count: n)
        var at = SubframeTable.length(count: n)
        for i in 0..<n where at < raw {
            let first = i * per, count = (min(first + per, blockCount) - first) * blockSize
            guard let l = compressor.frame(source + first * blockSize, count: count, into: payload + at, capacity: payloadCapacity - at) else {
                at = raw
                break
            }
            SubframeTable.setLength(l, of: i, at: payload)
            at += l
        }
        if at < raw { return (at, .zstdSubframes) }
        payload.copyMemory(from: source, byteCount: raw)
        return (raw, .raw)
    }
}
