import XCTest

@testable import StrataFormat

final class HashMapFormatTests: XCTestCase {
    func testHeaderRoundTripAndGolden() throws {
        var h = HashMapHeader(blockSize: 4096, sourceSize: 1 << 30, chainID: Fixtures.chainID, imageID: Fixtures.imageID, point: 7)
        h.chunkCount = h.expectedChunkCount
        h.fileSize = 123_456
        XCTAssertEqual(h.chunkCount, 4)
        XCTAssertEqual(try HashMapHeader.decode(h.encode()), h)
        try assertGolden(h.encode(), "hash-map-header-v1.bin")
    }

    func testWrongChunkCountIsRejected() {
        var h = HashMapHeader(blockSize: 4096, sourceSize: 1 << 30, chainID: Fixtures.chainID, imageID: Fixtures.imageID, point: 7)
        h.chunkCount = 3
        XCTAssertThrowsError(try HashMapHeader.decode(h.encode())) {
            XCTAssertEqual($0 as? FormatError, .invalid("hash map chunk count is wrong"))
        }
    }

    func testChunkHeaderRoundTrip() throws {
        let c = HashMapChunkHeader(storedLength: 5000, codec: .zstd, checksum: 42)
        XCTAssertEqual(c.encode().count, 16)
        XCTAssertEqual(try HashMapChunkHeader.decode(c.encode()), c)
        XCTAssertThrowsError(try HashMapChunkHeader.decode(HashMapChunkHeader(storedLength: 0, codec: .raw, checksum: 0).encode()))
    }
}
