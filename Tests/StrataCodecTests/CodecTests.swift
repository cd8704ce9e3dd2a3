import CXXH3
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

    /// XXH3-64 and XXH3-128 of a fixed pattern at lengths across every code path (short, mid-size, the long loop
    /// with and without a partial stripe), as Debian's libxxhash 0.8.1 computes them; each compiled-in variant
    /// (AVX2 where this CPU has it, and the default) must give exactly these, or every stored hash is wrong.
    func testXXH3VariantsMatchTheReferenceLibrary() {
        let vectors: [(Int, UInt64, UInt64, UInt64)] = [
            (0, 0x2d06800538d394c2, 0x6001c324468d497f, 0x99aa06d3014798d8),
            (1, 0x4c5cca45d0f4811f, 0x4c5cca45d0f4811f, 0x495b62073ef70ca4),
            (16, 0x7e484c18d74895d0, 0xf853dd94614dfa07, 0x650fe308c566747d),
            (17, 0x208bde5ee2bed407, 0x78c349fe81b2f26c, 0x18217300b5132d5a),
            (128, 0xf92b70eaa21a6288, 0x1e04fad9f0cacb4d, 0xb4f87b99d2db8a51),
            (129, 0xf8f76713f2bb60fa, 0xc51bc887976aef63, 0x6881633650cd8924),
            (240, 0xccc7375172c41f03, 0x93e173833f75ab66, 0xde57aab31e77a2ff),
            (241, 0x0b3b630948ce4a00, 0x0b3b630948ce4a00, 0x92b991a7192f3f08),
            (1024, 0x802a7b75d723b480, 0x802a7b75d723b480, 0xe697787d9642d5c3),
            (4096, 0x0d8c6a22f49cd045, 0x0d8c6a22f49cd045, 0x08f59afd28002189),
            (4097, 0x483451041a2dc807, 0x483451041a2dc807, 0xa2049cb160552e05),
            (65536, 0xe4d3dfdc1279b8cb, 0xe4d3dfdc1279b8cb, 0x75fcd0f636a56f92),
            (1048576, 0x56b7de8e76240a45, 0x56b7de8e76240a45, 0xca44b2fa11a6ec5b),
            (1048579, 0xc731e9cd8e690640, 0xc731e9cd8e690640, 0xacfa94e46d447dd5),
        ]
        let bytes = (0..<1_048_579).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7 &+ ($0 >> 8)) }
        var variants: [(String, (UnsafeRawPointer, Int) -> UInt64, (UnsafeRawPointer, Int) -> strata_xxh128)] = [
            ("default", { strata_xxh3_64_default($0, $1) }, { strata_xxh3_128_default($0, $1) }),
            ("dispatched (avx2: \(strata_xxh3_has_avx2() != 0))", { strata_xxh3_64($0, $1) }, { strata_xxh3_128($0, $1) }),
        ]
        if strata_xxh3_has_avx2() != 0 {
            variants.append(("avx2", { strata_xxh3_64_avx2($0, $1) }, { strata_xxh3_128_avx2($0, $1) }))
        }
        bytes.withUnsafeBytes { buffer in
            for (name, h64, h128) in variants {
                for (length, x64, low, high) in vectors {
                    XCTAssertEqual(h64(buffer.baseAddress!, length), x64, "\(name) XXH3-64 of \(length) bytes")
                    let h = h128(buffer.baseAddress!, length)
                    XCTAssertEqual([h.low64, h.high64], [low, high], "\(name) XXH3-128 of \(length) bytes")
                }
            }
        }
        XCTAssertEqual(Checksum.xxh3(Array(bytes[0..<4096])), 0x0d8c6a22f49cd045)
        XCTAssertEqual(bytes.withUnsafeBytes { BlockHash.of($0.baseAddress!, count: 4096) }, BlockHash(low: 0x0d8c6a22f49cd045, high: 0x08f59afd28002189))
    }
}
