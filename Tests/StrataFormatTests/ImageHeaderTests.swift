import XCTest

@testable import StrataFormat

final class ImageHeaderTests: XCTestCase {
    func testRoundTrip() throws {
        let h = Fixtures.header
        let bytes = h.encode()
        XCTAssertEqual(bytes.count, 4096)
        XCTAssertEqual(try ImageHeader.decode(bytes), h)
    }

    /// Pins the documented offsets of docs/FORMAT.md.
    func testFieldOffsets() throws {
        let b = Fixtures.header.encode()
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) } }
        func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
        XCTAssertEqual(Array(b[0..<8]), Array("STRATAIM".utf8))
        XCTAssertEqual(u32(8), 1)
        XCTAssertEqual(u32(12), 4096)
        XCTAssertEqual(u32(32), 0)  // kind full
        XCTAssertEqual(u32(36), 4096)
        XCTAssertEqual(u64(40), 40000)
        XCTAssertEqual(Array(b[48..<64]), Fixtures.chainID.bytes)
        XCTAssertEqual(Array(b[64..<80]), Fixtures.imageID.bytes)
        XCTAssertEqual(Array(b[80..<96]), Identifier.none.bytes)
        XCTAssertEqual(u32(96), 1)
        XCTAssertEqual(u32(100), 1)
        XCTAssertEqual(u64(104), 1_800_000_000)
        XCTAssertEqual(u64(112), Fixtures.header.indexOffset)
        XCTAssertEqual(u64(136), Fixtures.header.fileSize)
        XCTAssertEqual(u64(144), 2)
        XCTAssertEqual(u64(152), 5)
        XCTAssertEqual(u64(160), 4)
        XCTAssertEqual(u64(168), 6)
        XCTAssertEqual(u64(184), 148 + 4112)
        XCTAssertEqual(u32(4092), CRC32C.checksum(b[0..<4092]))
    }

    func testGoldenFile() throws {
        try assertGolden(Fixtures.header.encode(), "image-header-v1.bin")
    }

    func testEveryBitFlipIsDetected() {
        let good = Fixtures.header.encode()
        for bit in stride(from: 0, to: 200 * 8, by: 7) {
            var b = good
            b[bit / 8] ^= 1 << UInt8(bit % 8)
            XCTAssertThrowsError(try ImageHeader.decode(b), "bit \(bit)")
        }
    }

    func testForeignAndTruncatedInput() {
        XCTAssertThrowsError(try ImageHeader.decode(Array(repeating: 0, count: 4096))) {
            XCTAssertEqual($0 as? FormatError, .badMagic("image header"))
        }
        XCTAssertThrowsError(try ImageHeader.decode(Array(Fixtures.header.encode()[0..<100]))) {
            XCTAssertEqual($0 as? FormatError, .truncated("image header", at: 100))
        }
    }

    func testUnknownIncompatibleFeatureIsRefused() {
        var h = Fixtures.header
        h.incompatibleFeatures = 1 << 40
        XCTAssertThrowsError(try ImageHeader.decode(h.encode())) {
            XCTAssertEqual($0 as? FormatError, .unsupported("image feature bits 10000000000"))
        }
        var c = Fixtures.header
        c.compatibleFeatures = 1 << 3
        XCTAssertNoThrow(try ImageHeader.decode(c.encode()))
    }

    func testNewerVersionIsRefused() {
        var b = Fixtures.header.encode()
        b[8] = 2
        let crc = CRC32C.checksum(b[0..<4092])
        for i in 0..<4 { b[4092 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
        XCTAssertThrowsError(try ImageHeader.decode(b)) { XCTAssertEqual($0 as? FormatError, .unsupported("image format version 2")) }
    }

    func testCRC32CKnownVector() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
    }
}

/// Compares `bytes` with Tests/StrataFormatTests/Golden/NAME. Set STRATA_REGENERATE_GOLDEN=1 to rewrite them
/// (only when the format version changes: a golden file pins the layout readers in the field depend on).
func assertGolden(_ bytes: [UInt8], _ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
    let path = URL(fileURLWithPath: "\(#filePath)").deletingLastPathComponent().appendingPathComponent("Golden/\(name)")
    if ProcessInfo.processInfo.environment["STRATA_REGENERATE_GOLDEN"] == "1" {
        try Data(bytes).write(to: path)
        return
    }
    let golden = try Data(contentsOf: path)
    XCTAssertEqual([UInt8](golden), bytes, "\(name) differs from its golden file", file: file, line: line)
}

/// Hostile values behind a valid checksum: absurd counts, sizes and offsets are refused, never trapped on and
/// never allocated for (the fuzz target in Fuzz/ explores the rest).
final class HostileHeaderTests: XCTestCase {
    private func resealed(_ change: (inout [UInt8]) -> Void) -> [UInt8] {
        var b = Fixtures.header.encode()
        change(&b)
        let crc = CRC32C.checksum(b[0..<4092])
        for i in 0..<4 { b[4092 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
        return b
    }

    private func put(_ v: UInt64, _ b: inout [UInt8], at o: Int) {
        for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }

    func testAbsurdCountsAndOffsetsAreRefused() {
        let cases: [(String, (inout [UInt8]) -> Void)] = [
            ("frame count", { self.put(.max, &$0, at: 144) }),
            ("extent count", { self.put(1 << 62, &$0, at: 152) }),
            ("index length", { self.put(.max, &$0, at: 120) }),
            ("index offset", { self.put(.max - 10, &$0, at: 112) }),
            ("file size", { self.put(1, &$0, at: 136) }),
            ("block size", { $0[36] = 3 }),
            ("kind", { $0[32] = 7 }),
            ("points", { $0[96] = 9 }),
            ("source size", { self.put(.max, &$0, at: 40) }),
        ]
        for (what, change) in cases {
            XCTAssertThrowsError(try ImageHeader.decode(resealed(change)), what) { XCTAssertTrue($0 is FormatError, "\(what): \($0)") }
        }
    }

    func testIndexCountsBeyondItsBytesAreRefused() {
        var h = Fixtures.header
        let index = Fixtures.index.encode()
        h.frameCount = 3
        XCTAssertThrowsError(try ImageIndex.decode(index, header: h))
        h = Fixtures.header
        XCTAssertThrowsError(try ImageIndex.decode(Array(index.dropLast(24)), header: h))
    }
}
