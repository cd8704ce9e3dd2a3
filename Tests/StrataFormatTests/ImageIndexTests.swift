import XCTest

@testable import StrataFormat

final class ImageIndexTests: XCTestCase {
    func testRoundTripAndGolden() throws {
        let bytes = Fixtures.index.encode()
        XCTAssertEqual(UInt64(bytes.count), ImageIndex.encodedLength(frames: 2, extents: 5))
        XCTAssertEqual(try ImageIndex.decode(bytes, header: Fixtures.header), Fixtures.index)
        try assertGolden(bytes, "image-index-v1.bin")
    }

    func testChecksumMismatch() {
        var bytes = Fixtures.index.encode()
        bytes[30] ^= 0x40
        XCTAssertThrowsError(try ImageIndex.decode(bytes, header: Fixtures.header)) {
            XCTAssertEqual($0 as? FormatError, .checksumMismatch("image index"))
        }
    }

    /// Structurally wrong indexes with valid checksums are rejected, each with its reason.
    func testInvalidIndexes() {
        func check(_ mutate: (inout ImageIndex) -> Void, _ expected: String) {
            var index = Fixtures.index
            mutate(&index)
            var h = Fixtures.header
            let bytes = index.encode()
            h.indexChecksum = CRC32C.checksum(bytes)
            XCTAssertThrowsError(try ImageIndex.decode(bytes, header: h)) { XCTAssertEqual($0 as? FormatError, .invalid(expected)) }
        }
        check({ $0.extents.swapAt(0, 1) }, "full image does not cover block 0")
        check({ $0.extents[2].firstBlock = 1 }, "extent 2 is out of order or beyond the source")
        check({ $0.extents[4].blockCount = 2 }, "extent 4 is out of order or beyond the source")
        check({ $0.frames[1].offset += 1 }, "frame 1 lies outside the image's data area")
        check({ $0.extents[2].frameBlock = 1 }, "extent 2 points outside its frame")
        check({ $0.extents[3].frame = 7 }, "extent 3 points outside its frame")
        check({ $0.extents[1].firstBlock = 3; $0.extents[1].blockCount = 4 }, "full image does not cover block 2")
    }

    /// A free extent (a chain of used blocks) is a zero extent with bit 0 of its flags byte set: it reads back
    /// free, counts with the zero blocks, and a reader that skips the flags byte (every strata before it) reads a
    /// zero extent. The flag on anything but a zero extent is refused.
    func testFreeExtentsAreZeroExtentsWithAFlag() throws {
        var index = Fixtures.index
        index.extents[1].kind = .free
        let bytes = index.encode()
        var header = Fixtures.header
        header.indexChecksum = CRC32C.checksum(bytes)
        let decoded = try ImageIndex.decode(bytes, header: header)
        XCTAssertEqual(decoded.extents.map(\.kind), [.data, .free, .data, .data, .zero])
        // Its 24 bytes differ from the zero extent's in the flags byte alone (offset 13: after block, count, kind).
        let plain = Fixtures.index.encode()
        let at = bytes.count - (index.extents.count - 1) * ExtentRecord.encodedSize  // extent 1 (the extents come last)
        XCTAssertEqual((0..<bytes.count).filter { bytes[$0] != plain[$0] }, [at + 13], "only the flags byte differs")
        XCTAssertEqual(bytes[at + 12], ExtentKind.zero.rawValue)
        XCTAssertEqual(bytes[at + 13], 1)
        // The flag on a data extent.
        var wrong = bytes
        let data = at - ExtentRecord.encodedSize  // extent 0
        wrong[data + 13] = 1
        var h = Fixtures.header
        h.indexChecksum = CRC32C.checksum(wrong)
        XCTAssertThrowsError(try ImageIndex.decode(wrong, header: h)) {
            XCTAssertEqual($0 as? FormatError, .invalid("extent 0 is marked free but is not a zero extent"))
        }
    }

    /// A frame block no extent uses is refused, unless the header carries the sparseFrames feature bit (a
    /// merged image that kept a mostly live frame whole); extents must still use each frame in order.
    func testSparseFramesOnlyWithTheirFeatureBit() throws {
        var index = Fixtures.index
        // Block 8 no longer comes from frame 1 (its only block): make frame 0's last block unused instead.
        index.extents[2] = ExtentRecord(firstBlock: 7, blockCount: 1, kind: .zero)
        var h = Fixtures.header
        let bytes = index.encode()
        h.indexChecksum = CRC32C.checksum(bytes)
        h.dataBlocks = 3
        h.zeroBlocks = 7
        XCTAssertThrowsError(try ImageIndex.decode(bytes, header: h)) { XCTAssertEqual($0 as? FormatError, .invalid("a frame holds blocks that no extent uses")) }
        h.incompatibleFeatures = ImageFeatures.sparseFrames
        XCTAssertEqual(try ImageIndex.decode(bytes, header: h).extents, index.extents)
        XCTAssertEqual(try ImageHeader.decode(h.encode()), h, "the bit is known to this reader")

        // A gap at the start of a frame, then the rest in order: accepted; going back in a frame: refused.
        var gap = Fixtures.index
        gap.extents[0] = ExtentRecord(firstBlock: 0, blockCount: 1, kind: .zero)
        gap.extents.insert(ExtentRecord(firstBlock: 1, blockCount: 1, kind: .data, frame: 0, frameBlock: 1), at: 1)
        var g = Fixtures.header
        g.incompatibleFeatures = ImageFeatures.sparseFrames
        g.extentCount = 6
        g.dataBlocks = 3
        g.zeroBlocks = 7
        var b = gap.encode()
        g.indexLength = UInt64(b.count)
        g.fileSize = g.indexOffset + g.indexLength
        g.indexChecksum = CRC32C.checksum(b)
        XCTAssertEqual(try ImageIndex.decode(b, header: g).extents.count, 6)
        gap.extents[3].frameBlock = 0  // block 7 from frame 0's block 0, after block 1 used frame block 1
        b = gap.encode()
        g.indexChecksum = CRC32C.checksum(b)
        XCTAssertThrowsError(try ImageIndex.decode(b, header: g)) { XCTAssertEqual($0 as? FormatError, .invalid("extent 3 points outside its frame")) }
    }

    func testAbsurdCountsDoNotOverflow() {
        XCTAssertEqual(ImageIndex.encodedLength(frames: UInt64.max / 2, extents: 1), UInt64.max)
        // Found by the fuzzer in CI (Fuzz/corpus/regression-index-length-overflow): records that fit, whose
        // length plus the 24-byte preamble does not, trapped in a damaged header.
        XCTAssertEqual(ImageIndex.encodedLength(frames: 0, extents: UInt64.max / 24), UInt64.max)
        XCTAssertEqual(ImageIndex.encodedLength(frames: 1, extents: 2), 24 + 32 + 48)
    }

    /// A sub-frame table (FORMAT.md, codec 2): its fields where the format puts them, and every way its counts and
    /// lengths can disagree with the frame refused.
    func testSubframeTable() throws {
        func table(_ fields: [UInt32], payload: Int? = nil, blocks: Int) throws -> SubframeTable {
            var bytes: [UInt8] = []
            for f in fields { bytes += withUnsafeBytes(of: f.littleEndian) { Array($0) } }
            let length = payload ?? bytes.count + fields.dropFirst(2).reduce(0) { $0 + Int($1) }
            bytes += [UInt8](repeating: 7, count: max(0, length - bytes.count))
            return try bytes.withUnsafeBytes { try SubframeTable(payload: $0.baseAddress!, payloadLength: length, blockCount: blocks) }
        }
        // 40 blocks, 16 a sub-frame: three sub-frames of 100, 200 and 50 bytes after a 20-byte table.
        let t = try table([16, 3, 100, 200, 50], blocks: 40)
        XCTAssertEqual(t.count, 3)
        XCTAssertEqual(t.length, 20)
        XCTAssertEqual([t.offset(0), t.offset(1), t.offset(2)], [20, 120, 320])
        XCTAssertEqual([t.storedLength(0), t.storedLength(1), t.storedLength(2)], [100, 200, 50])
        XCTAssertEqual(t.blocks(2, of: 40), 32..<40)
        XCTAssertEqual(t.subframes(holding: 15..<17), 0..<2)
        XCTAssertEqual(t.subframes(holding: 39..<40), 2..<3)
        var written = [UInt8](repeating: 0, count: 20)
        written.withUnsafeMutableBytes {
            SubframeTable.start(at: $0.baseAddress!, blocksPerSubframe: 16, count: 3)
            for (i, l) in [100, 200, 50].enumerated() { SubframeTable.setLength(l, of: i, at: $0.baseAddress!) }
        }
        XCTAssertEqual(written, [16, 0, 0, 0, 3, 0, 0, 0, 100, 0, 0, 0, 200, 0, 0, 0, 50, 0, 0, 0])
        for (fields, payload, blocks) in [
            ([16, 2, 100, 200], nil, 40),  // too few sub-frames for the blocks
            ([16, 4, 100, 200, 50, 1], nil, 40),  // too many
            ([0, 3, 100, 200, 50], nil, 40),  // no blocks a sub-frame
            ([16, 3, 100, 0, 50], nil, 40),  // an empty sub-frame
            ([16, 3, 100, 200, 50], 371, 40),  // lengths short of the payload
            ([16, 3, 100, 200, 50], 369, 40),  // and past it
            ([1, 65, 1], nil, 65),  // more than 64 sub-frames
        ] as [([UInt32], Int?, Int)] {
            XCTAssertThrowsError(try table(fields, payload: payload, blocks: blocks), "\(fields)")
        }
        XCTAssertThrowsError(try table([16], payload: 4, blocks: 16))  // cut short
    }
}
