// Checking and decoding one stored frame, shared by restore and merge: the frame's checksum, then its payload
// (zstd or raw) into exactly `blockCount` blocks, then every block (or every block used) against the hash stored
// beside it. Errors name the image file and, for a block, its number on the source.
import StrataCodec
import StrataFormat

extension ImageFile {
    /// `stored` holds the frame's `length` bytes as read from the file; `decoded` receives its blocks. Without
    /// `checkingBlocks`, the caller checks the blocks it uses with `checkBlocks` (a merge uses few of some frames).
    func decode(
        frame: UInt32, stored: UnsafeRawPointer, into decoded: UnsafeMutableRawPointer, decompressor: FrameDecompressor,
        checkingBlocks: Bool = true
    ) throws {
        let record = index.frames[Int(frame)]
        let blockSize = Int(header.blockSize)
        try checkChecksum(frame: frame, stored: stored)
        let blocks = Int(record.blockCount)
        let payload = stored + record.hashesLength
        switch record.codec {
        case .raw:
            guard record.payloadLength == blocks * blockSize else {
                throw ChainError.corruptData(file: name, detail: "frame \(frame) has the wrong length")
            }
            decoded.copyMemory(from: payload, byteCount: record.payloadLength)
        case .zstd:
            do { try decompressor.decompress(payload, count: record.payloadLength, into: decoded, expected: blocks * blockSize) } catch {
                throw ChainError.corruptData(file: name, detail: "frame \(frame) does not decompress (\(error))")
            }
        }
        if checkingBlocks { try checkBlocks(0..<blocks, frame: frame, stored: stored, decoded: decoded) }
    }

    /// Checks blocks `range` of a decoded frame against the hashes stored beside them.
    func checkBlocks(_ range: Range<Int>, frame: UInt32, stored: UnsafeRawPointer, decoded: UnsafeRawPointer) throws {
        let blockSize = Int(header.blockSize)
        for b in range {
            let expected = BlockHash(
                low: UInt64(littleEndian: stored.loadUnaligned(fromByteOffset: b * 16, as: UInt64.self)),
                high: UInt64(littleEndian: stored.loadUnaligned(fromByteOffset: b * 16 + 8, as: UInt64.self)))
            guard BlockHash.of(decoded + b * blockSize, count: blockSize) == expected else {
                let e = index.extents.first { $0.kind == .data && $0.frame == frame && $0.frameBlock <= b && b < $0.frameBlock + $0.blockCount }
                let block = e.map { $0.firstBlock + UInt64(UInt32(b) - $0.frameBlock) } ?? 0
                throw ChainError.corruptData(file: name, detail: "block \(block) (in frame \(frame)) does not match its hash")
            }
        }
    }

    /// Checks a stored frame's checksum (which covers its block hashes and its payload).
    func checkChecksum(frame: UInt32, stored: UnsafeRawPointer) throws {
        let record = index.frames[Int(frame)]
        guard Checksum.xxh3(stored, count: Int(record.length)) == record.checksum else {
            throw ChainError.corruptData(file: name, detail: "frame \(frame) at byte \(record.offset) fails its checksum")
        }
    }
}
