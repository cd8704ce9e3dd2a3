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

    /// Found by the fuzzer in CI (Fuzz/corpus/regression-hashmap-source-size): a source size near 2^64 behind a
    /// valid checksum trapped on an overflow while its block count was worked out; it is refused.
    func testAbsurdSourceSizeIsRefusedNotACrash() {
        for size in [UInt64.max, UInt64.max - 4095, ImageHeader.maxSourceSize + 1] {
            var h = HashMapHeader(blockSize: 4096, sourceSize: size, chainID: Fixtures.chainID, imageID: Fixtures.imageID, point: 7)
            h.chunkCount = h.expectedChunkCount
            XCTAssertThrowsError(try HashMapHeader.decode(h.encode()), "\(size)") {
                XCTAssertEqual($0 as? FormatError, .invalid("hash map source size is implausible"))
            }
        }
    }

    func testBlockCountRoundsUpWithoutOverflow() {
        XCTAssertEqual(blockCountFor(sourceSize: 0, blockSize: 4096), 0)
        XCTAssertEqual(blockCountFor(sourceSize: 4096, blockSize: 4096), 1)
        XCTAssertEqual(blockCountFor(sourceSize: 4097, blockSize: 4096), 2)
        XCTAssertEqual(blockCountFor(sourceSize: .max, blockSize: 4096), 1 << 52)
        XCTAssertEqual(blockCountFor(sourceSize: .max, blockSize: 512), 1 << 55)
    }

    func testChunkHeaderRoundTrip() throws {
        let c = HashMapChunkHeader(storedLength: 5000, codec: .zstd, checksum: 42)
        XCTAssertEqual(c.encode().count, 16)
        XCTAssertEqual(try HashMapChunkHeader.decode(c.encode()), c)
        XCTAssertThrowsError(try HashMapChunkHeader.decode(HashMapChunkHeader(storedLength: 0, codec: .raw, checksum: 0).encode()))
    }
}
