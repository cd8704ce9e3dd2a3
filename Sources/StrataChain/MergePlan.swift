// What a merge writes, decided before a byte is written. The images of the range are resolved newest-wins; each
// source frame is then either copied whole (every block of it survives) or re-packed (some survive). Whole
// frames are written first, in order of first use, then the re-packed ones, so every frame's number is known
// when the extents are planned, and the new image obeys the index's rules (each frame's blocks used in order).
import StrataCodec
import StrataFormat
import StrataIO

#if canImport(Glibc)
import Glibc
#endif

final class MergePlan {
    private let sources: [ImageFile]
    private let resolved: [ResolvedExtent]
    private let blockSize: Int
    private let blocksPerFrame: Int
    /// (image << 32 | frame) -> blocks of it that survive.
    private var surviving: [UInt64: Int] = [:]
    private(set) var framesCopied = 0
    private(set) var framesRepacked = 0

    init(sources: [ImageFile]) {
        self.sources = sources
        resolved = ExtentResolver.resolve(sources.map(\.index.extents))
        blockSize = Int(sources[0].header.blockSize)
        blocksPerFrame = max(1, Int(ImageHeader.maxBlockSize) / blockSize)
        for e in resolved where e.kind == .data { surviving[key(e), default: 0] += Int(e.blockCount) }
    }

    private func key(_ e: ResolvedExtent) -> UInt64 { UInt64(e.image) << 32 | UInt64(e.frame) }
    private func record(_ k: UInt64) -> FrameRecord { sources[Int(k >> 32)].index.frames[Int(k & 0xFFFF_FFFF)] }
    private func isWhole(_ k: UInt64) -> Bool { surviving[k] == Int(record(k).blockCount) }

    /// The merged image is never larger than the frames it draws from.
    var bytesUpperBound: UInt64 {
        surviving.keys.reduce(UInt64(0)) { $0 + UInt64(record($1).length) } + UInt64(resolved.count * ExtentRecord.encodedSize)
            + UInt64(surviving.count * FrameRecord.encodedSize)
    }

    func write(to writer: ImageWriter, level: Int32, progress: ProgressHandler?) throws {
        // Frame numbers: whole frames in order of first use, then packed frames in block order.
        var wholeOrder: [UInt64] = []
        var wholeNumber: [UInt64: UInt32] = [:]
        var packedBlocks = 0
        for e in resolved where e.kind == .data {
            let k = key(e)
            if isWhole(k) {
                if wholeNumber[k] == nil {
                    wholeNumber[k] = UInt32(wholeOrder.count)
                    wholeOrder.append(k)
                }
            } else {
                packedBlocks += Int(e.blockCount)
            }
        }
        framesCopied = wholeOrder.count
        var packedIndex = 0
        for e in resolved {
            switch e.kind {
            case .zero, .unreadable:
                writer.addExtent(block: e.firstBlock, count: e.blockCount, kind: e.kind)
            case .data:
                if let n = wholeNumber[key(e)] {
                    writer.addExtent(block: e.firstBlock, count: e.blockCount, kind: .data, frame: n, frameBlock: e.frameBlock)
                } else {
                    // Packed blocks may straddle two new frames.
                    var done = 0
                    while done < Int(e.blockCount) {
                        let frame = wholeOrder.count + packedIndex / blocksPerFrame
                        let at = packedIndex % blocksPerFrame
                        let n = min(Int(e.blockCount) - done, blocksPerFrame - at)
                        writer.addExtent(block: e.firstBlock + UInt64(done), count: UInt32(n), kind: .data, frame: UInt32(frame), frameBlock: UInt32(at))
                        done += n
                        packedIndex += n
                    }
                }
            }
        }
        let total = wholeOrder.reduce(UInt64(0)) { $0 + UInt64(record($1).length) } + UInt64(packedBlocks * blockSize)
        var done: UInt64 = 0
        try copyWholeFrames(wholeOrder, to: writer) { done += $0; progress?(done, total) }
        try repack(into: writer, level: level) { done += $0; progress?(min(done, total), total) }
    }

    private func copyWholeFrames(_ order: [UInt64], to writer: ImageWriter, progress: (UInt64) -> Void) throws {
        guard let largest = order.map({ Int(record($0).length) }).max() else { return }
        let buffer = AlignedSlab(slotSize: largest, slotCount: 1)
        for k in order {
            let image = sources[Int(k >> 32)]
            let r = record(k)
            let n = try Sys.preadFully(image.fd, buffer.base, Int(r.length), r.offset, path: image.path)
            guard n == Int(r.length) else { throw ChainError.damaged(file: image.name, detail: "frame \(k & 0xFFFF_FFFF) is cut short") }
            guard Checksum.xxh3(buffer.base, count: n) == r.checksum else {
                throw ChainError.corruptData(file: image.name, detail: "frame \(k & 0xFFFF_FFFF) at byte \(r.offset) fails its checksum")
            }
            _ = try writer.appendFrame(copying: r, from: buffer.base)
            progress(UInt64(r.length))
        }
    }

    /// Decompresses partly surviving frames as they are first needed (checking checksum and block hashes) and
    /// packs their surviving blocks, in block order, into new frames.
    private func repack(into writer: ImageWriter, level: Int32, progress: (UInt64) -> Void) throws {
        var lastUse: [UInt64: Int] = [:]
        for (i, e) in resolved.enumerated() where e.kind == .data && !isWhole(key(e)) { lastUse[key(e)] = i }
        guard !lastUse.isEmpty else { return }
        let compressor = try FrameCompressor(level: level)
        let decompressor = try FrameDecompressor()
        let frameBytes = blocksPerFrame * blockSize
        let maxStored = lastUse.keys.map { Int(record($0).length) }.max()!
        let stored = AlignedSlab(slotSize: maxStored, slotCount: 1)
        var decoded: [UInt64: (data: UnsafeMutableRawPointer, hashes: [BlockHash])] = [:]
        defer { for d in decoded.values { d.data.deallocate() } }
        let pack = AlignedSlab(slotSize: frameBytes + blocksPerFrame * 16 + FrameCompressor.bound(frameBytes), slotCount: 1)
        let hashArea = pack.base + frameBytes
        var fill = 0
        framesRepacked = lastUse.count

        func flush() throws {
            guard fill > 0 else { return }
            let payload = hashArea + fill * 16
            var codec = FrameCodec.zstd
            var length = compressor.compress(pack.base, count: fill * blockSize, into: payload, capacity: FrameCompressor.bound(frameBytes)) ?? 0
            if length == 0 {
                codec = .raw
                payload.copyMemory(from: pack.base, byteCount: fill * blockSize)
                length = fill * blockSize
            }
            _ = try writer.appendFrame(hashArea, length: fill * 16 + length, blockCount: fill, codec: codec, checksum: Checksum.xxh3(hashArea, count: fill * 16 + length))
            progress(UInt64(fill * blockSize))
            fill = 0
        }

        for (i, e) in resolved.enumerated() where e.kind == .data {
            let k = key(e)
            guard lastUse[k] != nil else { continue }
            if decoded[k] == nil { decoded[k] = try decode(k, stored: stored.base, decompressor: decompressor) }
            let source = decoded[k]!
            for b in 0..<Int(e.blockCount) {
                let fb = Int(e.frameBlock) + b
                (pack.base + fill * blockSize).copyMemory(from: source.data + fb * blockSize, byteCount: blockSize)
                (hashArea + fill * 16).storeBytes(of: source.hashes[fb].low.littleEndian, as: UInt64.self)
                (hashArea + fill * 16 + 8).storeBytes(of: source.hashes[fb].high.littleEndian, as: UInt64.self)
                fill += 1
                if fill == blocksPerFrame { try flush() }
            }
            if lastUse[k] == i {
                source.data.deallocate()
                decoded[k] = nil
            }
        }
        try flush()
    }

    private func decode(_ k: UInt64, stored: UnsafeMutableRawPointer, decompressor: FrameDecompressor) throws -> (data: UnsafeMutableRawPointer, hashes: [BlockHash]) {
        let image = sources[Int(k >> 32)]
        let frame = k & 0xFFFF_FFFF
        let r = record(k)
        let n = try Sys.preadFully(image.fd, stored, Int(r.length), r.offset, path: image.path)
        guard n == Int(r.length) else { throw ChainError.damaged(file: image.name, detail: "frame \(frame) is cut short") }
        guard Checksum.xxh3(stored, count: n) == r.checksum else {
            throw ChainError.corruptData(file: image.name, detail: "frame \(frame) at byte \(r.offset) fails its checksum")
        }
        let blocks = Int(r.blockCount)
        let data = UnsafeMutableRawPointer.allocate(byteCount: blocks * blockSize, alignment: 64)
        do {
            switch r.codec {
            case .raw:
                guard r.payloadLength == blocks * blockSize else { throw ChainError.corruptData(file: image.name, detail: "frame \(frame) has the wrong length") }
                data.copyMemory(from: stored + r.hashesLength, byteCount: r.payloadLength)
            case .zstd:
                do { try decompressor.decompress(stored + r.hashesLength, count: r.payloadLength, into: data, expected: blocks * blockSize) } catch {
                    throw ChainError.corruptData(file: image.name, detail: "frame \(frame) does not decompress (\(error))")
                }
            }
            var hashes = [BlockHash]()
            hashes.reserveCapacity(blocks)
            for b in 0..<blocks {
                let h = BlockHash(
                    low: UInt64(littleEndian: stored.loadUnaligned(fromByteOffset: b * 16, as: UInt64.self)),
                    high: UInt64(littleEndian: stored.loadUnaligned(fromByteOffset: b * 16 + 8, as: UInt64.self)))
                guard BlockHash.of(data + b * blockSize, count: blockSize) == h else {
                    throw ChainError.corruptData(file: image.name, detail: "a block of frame \(frame) does not match its hash")
                }
                hashes.append(h)
            }
            return (data, hashes)
        } catch {
            data.deallocate()
            throw error
        }
    }
}
