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

    func testAbsurdCountsDoNotOverflow() {
        XCTAssertEqual(ImageIndex.encodedLength(frames: UInt64.max / 2, extents: 1), UInt64.max)
    }
}
