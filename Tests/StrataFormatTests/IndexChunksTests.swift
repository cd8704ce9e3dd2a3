// The chunked index (feature bit 1): chunks and their table round-trip, and every check of the table and of a
// chunk refuses what a damaged or hostile file could hold.
import XCTest

@testable import StrataFormat

final class IndexChunksTests: XCTestCase {
    /// A full image of 100 blocks in chunks of 16 records: 40 data and zero extents alternating (over 3 extent
    /// chunks) and 20 frames of one or two blocks (2 frame chunks), laid out as a writer lays them out.
    struct Layout {
        var header: ImageHeader
        var top: TopIndex
        var frames: [FrameRecord] = []
        var extents: [ExtentRecord] = []
        var file: [UInt8] = []
    }

    static func layout(per: UInt32 = 16) -> Layout {
        var h = ImageHeader(
            kind: .full, blockSize: 4096, sourceSize: 100 * 4096, chainID: Identifier(bytes: Array(0..<16)), imageID: Identifier(bytes: Array(16..<32)),
            parentID: .none, firstPoint: 1, lastPoint: 1, createdAt: 1_800_000_000)
        h.incompatibleFeatures = ImageFeatures.chunkedIndex
        var l = Layout(header: h, top: TopIndex(framesPerChunk: per, extentsPerChunk: per))
        var block: UInt64 = 0
        var frame: UInt32 = 0
        while block < 100 {
            if frame < 20 && block % 5 == 0 {
                let n: UInt32 = frame % 2 == 0 ? 1 : 2
                l.extents.append(ExtentRecord(firstBlock: block, blockCount: n, kind: .data, frame: frame, frameBlock: 0))
                l.frames.append(FrameRecord(offset: 0, length: n * 16 + 100, blockCount: n, codec: .zstd, checksum: UInt64(frame) * 7))
                frame += 1
                block += UInt64(n)
            } else {
                let end = min(100, (block / 5 + 1) * 5)
                l.extents.append(ExtentRecord(firstBlock: block, blockCount: UInt32(end - block), kind: .zero))
                block = end
            }
        }
        // File: header, then frames with a frame chunk after every `per` frames, extent chunks at the end.
        l.file = [UInt8](repeating: 0, count: ImageHeader.size)
        var pending: [FrameRecord] = []
        func flushFrames() {
            guard !pending.isEmpty else { return }
            let bytes = IndexChunks.encode(frames: pending[...])
            l.top.frameChunks.append(
                TopIndex.FrameChunk(
                    offset: UInt64(l.file.count), length: UInt32(bytes.count), count: UInt32(pending.count), firstOffset: pending.first!.offset,
                    endOffset: pending.last!.offset + UInt64(pending.last!.length), checksum: CRC32C.checksum(bytes)))
            l.file += bytes
            pending = []
        }
        for i in l.frames.indices {
            if pending.count == Int(per) { flushFrames() }
            l.frames[i].offset = UInt64(l.file.count)
            l.file += [UInt8](repeating: UInt8(i), count: Int(l.frames[i].length))
            pending.append(l.frames[i])
            l.top.maxFrameLength = max(l.top.maxFrameLength, l.frames[i].length)
        }
        flushFrames()
        for start in stride(from: 0, to: l.extents.count, by: Int(per)) {
            let chunk = l.extents[start..<min(start + Int(per), l.extents.count)]
            let bytes = IndexChunks.encode(extents: chunk)
            var c = TopIndex.ExtentChunk(
                offset: UInt64(l.file.count), length: UInt32(bytes.count), count: UInt32(chunk.count), firstBlock: chunk.first!.firstBlock,
                endBlock: chunk.last!.endBlock, dataBlocks: 0, zeroBlocks: 0, unreadableBlocks: 0, checksum: CRC32C.checksum(bytes))
            for e in chunk { if e.kind == .data { c.dataBlocks += UInt64(e.blockCount) } else { c.zeroBlocks += UInt64(e.blockCount) } }
            l.top.extentChunks.append(c)
            l.file += bytes
        }
        l.header.dataBlocks = l.extents.filter { $0.kind == .data }.reduce(0) { $0 + UInt64($1.blockCount) }
        l.header.zeroBlocks = 100 - l.header.dataBlocks
        l.header.frameCount = UInt64(l.frames.count)
        l.header.extentCount = UInt64(l.extents.count)
        seal(&l)
        return l
    }

    /// Writes the table after the data area and the header in front, as a writer finishes.
    static func seal(_ l: inout Layout) {
        let dataEnd = Int(l.top.extentChunks.last!.offset) + Int(l.top.extentChunks.last!.length)
        l.file.removeSubrange(dataEnd...)
        let bytes = l.top.encode()
        l.header.indexOffset = UInt64(dataEnd)
        l.header.indexLength = UInt64(bytes.count)
        l.header.indexChecksum = CRC32C.checksum(bytes)
        l.header.fileSize = UInt64(dataEnd + bytes.count)
        l.file += bytes
        l.file.replaceSubrange(0..<ImageHeader.size, with: l.header.encode())
    }

    func chunk(_ l: Layout, _ offset: UInt64, _ length: UInt32) -> [UInt8] { Array(l.file[Int(offset)..<(Int(offset) + Int(length))]) }

    func testChunksAndTableRoundTrip() throws {
        let l = Self.layout()
        let h = try ImageHeader.decode(Array(l.file[0..<ImageHeader.size]))
        XCTAssertTrue(h.isChunked)
        let top = try TopIndex.decode(Array(l.file[Int(h.indexOffset)...]), header: h)
        XCTAssertEqual(top, l.top)
        XCTAssertEqual(top.frameChunks.count, 2)
        XCTAssertEqual(top.extentChunks.count, 3)
        var frames: [FrameRecord] = [], extents: [ExtentRecord] = []
        for c in top.frameChunks.indices {
            frames += try IndexChunks.decodeFrames(chunk(l, top.frameChunks[c].offset, top.frameChunks[c].length), chunk: c, of: top, header: h)
        }
        for c in top.extentChunks.indices {
            extents += try IndexChunks.decodeExtents(chunk(l, top.extentChunks[c].offset, top.extentChunks[c].length), chunk: c, of: top, header: h)
        }
        XCTAssertEqual(frames, l.frames)
        XCTAssertEqual(extents, l.extents)
        XCTAssertEqual(top.extentChunk(atOrAfter: 0), 0)
        XCTAssertEqual(top.extentChunk(atOrAfter: l.extents[16].firstBlock), 1)
        XCTAssertEqual(top.extentChunk(atOrAfter: 99), 2)
        XCTAssertEqual(top.extentChunk(atOrAfter: 100), 3)
    }

    func testTableChecks() throws {
        func refused(_ expected: String, _ mutate: (inout Layout) -> Void) {
            var l = Self.layout()
            mutate(&l)
            Self.seal(&l)
            XCTAssertThrowsError(try TopIndex.decode(Array(l.file[Int(l.header.indexOffset)...]), header: l.header), expected) {
                XCTAssertEqual($0 as? FormatError, .invalid(expected))
            }
        }
        refused("image index chunks hold 24 records, not a power of two from 16 to 65536") { $0.top.framesPerChunk = 24 }
        refused("image index chunks hold 8 records, not a power of two from 16 to 65536") { $0.top.extentsPerChunk = 8 }
        refused("image index counts differ from the header's") { $0.header.frameCount += 16 }
        refused("frame chunk 1 lies outside the image's data area") { $0.top.frameChunks[1].firstOffset = $0.top.frameChunks[0].firstOffset }
        refused("frame chunk 0 lies outside the image's data area") { $0.top.frameChunks[0].offset = 100 }
        refused("extent chunk 2 is out of order or beyond the source") { $0.top.extentChunks[2].endBlock = 101 }
        refused("full image does not cover block \(Self.layout().top.extentChunks[0].endBlock)") {
            $0.top.extentChunks[1].firstBlock += 1
            $0.top.extentChunks[1].zeroBlocks -= 1
        }
        refused("image block counts differ from the header's") {
            $0.top.extentChunks[0].dataBlocks -= 1
            $0.top.extentChunks[0].zeroBlocks += 1
        }
        // A damaged table fails its checksum; a header cannot name a table longer than the smallest chunks make.
        var l = Self.layout()
        l.file[Int(l.header.indexOffset) + 50] ^= 1
        XCTAssertThrowsError(try TopIndex.decode(Array(l.file[Int(l.header.indexOffset)...]), header: l.header)) {
            XCTAssertEqual($0 as? FormatError, .checksumMismatch("image index"))
        }
        var h = l.header
        h.indexLength = TopIndex.maxEncodedLength(frames: h.frameCount, extents: h.extentCount) + 8
        h.indexOffset = h.fileSize - h.indexLength
        XCTAssertThrowsError(try ImageHeader.decode(h.encode())) { XCTAssertEqual($0 as? FormatError, .invalid("image index length does not match its counts")) }
    }

    func testChunkChecks() throws {
        let l = Self.layout()
        let top = l.top
        let f0 = chunk(l, top.frameChunks[0].offset, top.frameChunks[0].length)
        let e1 = chunk(l, top.extentChunks[1].offset, top.extentChunks[1].length)
        var bad = e1
        bad[30] ^= 1
        XCTAssertThrowsError(try IndexChunks.decodeExtents(bad, chunk: 1, of: top, header: l.header)) {
            XCTAssertEqual($0 as? FormatError, .checksumMismatch("extent chunk 1"))
        }
        XCTAssertThrowsError(try IndexChunks.decodeFrames(Array(f0.dropLast()), chunk: 0, of: top, header: l.header)) {
            XCTAssertEqual($0 as? FormatError, .truncated("frame chunk 0", at: UInt64(f0.count - 1)))
        }
        // A chunk that is intact but not the one the table names (another chunk's bytes, checksum and all).
        var moved = top
        moved.extentChunks[1] = top.extentChunks[0]
        XCTAssertThrowsError(try IndexChunks.decodeExtents(e1, chunk: 1, of: moved, header: l.header))
        // Extents out of order inside a chunk whose checksum was made to match.
        var extents = try IndexChunks.decodeExtents(e1, chunk: 1, of: top, header: l.header)
        extents.swapAt(0, 1)
        let swapped = IndexChunks.encode(extents: extents[...])
        var t = top
        t.extentChunks[1].checksum = CRC32C.checksum(swapped)
        XCTAssertThrowsError(try IndexChunks.decodeExtents(swapped, chunk: 1, of: t, header: l.header)) {
            XCTAssertEqual($0 as? FormatError, .invalid("extent 16 is out of order or beyond the source"))
        }
        // A data extent past its frame's blocks is refused where its frame is known.
        let e = ExtentRecord(firstBlock: 0, blockCount: 2, kind: .data, frame: 0, frameBlock: 0)
        XCTAssertThrowsError(try e.check(inside: l.frames[0], number: 0)) { XCTAssertEqual($0 as? FormatError, .invalid("extent 0 points outside its frame")) }
    }
}
