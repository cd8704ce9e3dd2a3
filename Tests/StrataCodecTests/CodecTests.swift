import XCTest

@testable import StrataCodec

final class CodecTests: XCTestCase {
    func testCompressRoundTrip() throws {
        let c = try FrameCompressor(level: 1)
        let d = try FrameDecompressor()
        let text = Array(String(repeating: "strata keeps every block ", count: 4000).utf8)
        var out = [UInt8](repeating: 0, count: FrameCompressor.bound(text.count))
        let n = try XCTUnwrap(out.withUnsafeMutableBytes { o in text.withUnsafeBytes { c.compress($0.baseAddress!, count: $0.count, into: o.baseAddress!, capacity: o.count) } })
        XCTAssertLessThan(n, text.count / 10)
        var back = [UInt8](repeating: 0, count: text.count)
        try back.withUnsafeMutableBytes { b in try out.withUnsafeBytes { try d.decompress($0.baseAddress!, count: n, into: b.baseAddress!, expected: b.count) } }
        XCTAssertEqual(back, text)
    }

    func testIncompressibleIsStoredRaw() throws {
        let c = try FrameCompressor(level: 1)
        var g = SystemRandomNumberGenerator()
        let noise = (0..<65536).map { _ in UInt8.random(in: 0...255, using: &g) }
        var out = [UInt8](repeating: 0, count: FrameCompressor.bound(noise.count))
        let n = out.withUnsafeMutableBytes { o in noise.withUnsafeBytes { c.compress($0.baseAddress!, count: $0.count, into: o.baseAddress!, capacity: o.count) } }
        XCTAssertNil(n)
    }

    func testCorruptFrameIsAnErrorNotACrash() throws {
        let d = try FrameDecompressor()
        let junk: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 1, 2, 3, 4, 5, 6, 7, 8]
        var out = [UInt8](repeating: 0, count: 4096)
        XCTAssertThrowsError(try out.withUnsafeMutableBytes { o in try junk.withUnsafeBytes { try d.decompress($0.baseAddress!, count: $0.count, into: o.baseAddress!, expected: 4096) } })
    }

    func testZeroDetection() {
        let detector = ZeroBlockDetector(blockSize: 4096)
        var block = [UInt8](repeating: 0, count: 4096)
        XCTAssertEqual(block.withUnsafeBytes { detector.hash($0.baseAddress!) }, .zero)
        block[4095] = 1
        let h = block.withUnsafeBytes { detector.hash($0.baseAddress!) }
        XCTAssertNotEqual(h, .zero)
        XCTAssertEqual(h, block.withUnsafeBytes { BlockHash.of($0.baseAddress!, count: 4096) })
    }

    func testXXH3KnownValues() {
        // XXH3-64 of the empty input, from xxHash's own test vectors.
        XCTAssertEqual(Checksum.xxh3([]), 0x2D06_8005_38D3_94C2)
        XCTAssertNotEqual(Checksum.xxh3([1]), Checksum.xxh3([2]))
    }
}
