// Every byte of an image is covered by a checksum: a flipped bit anywhere in a header, frame or index, or a
// truncation at any length, is found by verify and named, never restored silently, never a crash. And restore
// --verify's read-back finds a target that differs from the point.
import Foundation
import StrataFormat
import StrataIO
import XCTest

@testable import StrataChain

final class IntegrityTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try scratchDirectory("integrity") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A two-point chain of a small disk with data, zeros and changes.
    private func makeChain() throws -> (chain: String, states: [[UInt8]]) {
        var rng = SeededGenerator(seed: 31)
        var disk = DiskModel(size: 640 << 10, rng: &rng)
        let source = "\(dir)/source.img", chain = "\(dir)/chain"
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        let first = disk.bytes
        disk.night(0, rng: &rng)
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        return (chain, [first, disk.bytes])
    }

    private func verify(_ chain: String) throws -> VerifyReport { try Verify.run(chain: chain, options: VerifyOptions()) }

    func testEveryFlippedByteOfAnImageIsFound() throws {
        let (chain, states) = try makeChain()
        XCTAssertTrue(try verify(chain).isWhole)
        var rng = SeededGenerator(seed: 32)
        for name in ["p000001.strata", "p000002.strata"] {
            let path = "\(chain)/\(name)"
            let clean = try readFile(path)
            // Every byte of the header's fields and of the index, and a sample of the rest (frames, padding).
            var offsets = Array(0..<200) + Array(4088..<4096)
            let header = try ImageHeader.decode(Array(clean[0..<4096]))
            offsets += Array(Int(header.indexOffset)..<clean.count)
            offsets += (0..<300).map { _ in Int.random(in: 4096..<Int(header.indexOffset), using: &rng) }
            for offset in offsets {
                var bytes = clean
                bytes[offset] ^= UInt8(1 << (offset % 8))
                try Data(bytes).write(to: URL(fileURLWithPath: path))
                let report = try verify(chain)
                XCTAssertEqual(report.problems.map(\.file), [name], "a flip at byte \(offset) of \(name) must be found")
                let needed: [UInt32] = name == "p000001.strata" ? [1, 2] : [2]
                XCTAssertTrue(Set(report.affectedPoints).isSubset(of: Set(needed)) && !report.affectedPoints.isEmpty, "byte \(offset): \(report.affectedPoints)")
                var o = RestoreOptions.overwriting
                o.point = report.affectedPoints.first
                XCTAssertThrowsError(try Restore.run(chain: chain, target: "\(dir)/out.img", options: o), "byte \(offset): restored silently") {
                    XCTAssertEqual(($0 as? ChainError)?.exitCode, 65, "\($0)")
                }
            }
            try Data(clean).write(to: URL(fileURLWithPath: path))
        }
        XCTAssertTrue(try verify(chain).isWhole)
        for (i, state) in states.enumerated() {
            var o = RestoreOptions.overwriting
            o.point = UInt32(i + 1)
            _ = try Restore.run(chain: chain, target: "\(dir)/out.img", options: o)
            XCTAssertEqual(try readFile("\(dir)/out.img"), state)
        }
    }

    func testTruncatedImagesAndMapsAreNamed() throws {
        let (chain, _) = try makeChain()
        for name in ["p000001.strata", "p000002.strata", "map-p000002.strata"] {
            let path = "\(chain)/\(name)"
            let clean = try readFile(path)
            for length in [0, 1, 100, 4095, 4096, 4097, clean.count / 2, clean.count - 1] {
                try Data(clean[0..<length]).write(to: URL(fileURLWithPath: path))
                let report = try verify(chain)
                XCTAssertEqual(report.problems.map(\.file), [name], "\(name) cut to \(length) bytes")
                if name.hasPrefix("map-") { XCTAssertEqual(report.affectedPoints, [], "the map only serves the next capture") }
            }
            try Data(clean).write(to: URL(fileURLWithPath: path))
        }
        XCTAssertTrue(try verify(chain).isWhole)
    }

    func testReadBackFindsATargetThatDiffers() throws {
        let (chain, states) = try makeChain()
        let target = "\(dir)/out.img"
        var o = RestoreOptions.overwriting
        o.verify = true
        XCTAssertEqual(try Restore.run(chain: chain, target: target, options: o).verified, true)
        XCTAssertEqual(try readFile(target), states[1])

        // Change one data block and one zero block of the restored image, then read it back against point 2.
        let zeroBlock = states[1].indices.first { $0 % 4096 == 0 && states[1][$0..<($0 + 4096)].allSatisfy { $0 == 0 } }!
        let dataBlock = states[1].indices.first { $0 % 4096 == 0 && !states[1][$0..<($0 + 4096)].allSatisfy { $0 == 0 } }!
        var bytes = states[1]
        bytes[dataBlock + 7] ^= 1
        bytes[zeroBlock + 4000] = 9
        try Data(bytes).write(to: URL(fileURLWithPath: target))
        let c = try Chain(location: chain, access: .read)
        let images = try c.openImages(forPoint: 2)
        let check = try TargetCompare(
            try BlockSource(path: target), store: c.store, images: images, blockSize: 4096, sourceSize: UInt64(bytes.count),
            queue: PreadQueue(threads: 4))
        var runs: [Range<UInt64>] = []
        try check.run(depth: 4, progress: nil) { runs += $0 }
        XCTAssertEqual(check.differingBlocks, 2)
        XCTAssertEqual(check.firstDiffering, UInt64(min(zeroBlock, dataBlock) / 4096))
        let (a, b) = (UInt64(min(zeroBlock, dataBlock) / 4096), UInt64(max(zeroBlock, dataBlock) / 4096))
        XCTAssertEqual(runs, b == a + 1 ? [a..<(b + 1)] : [a..<(a + 1), b..<(b + 1)])  // the runs given, joined
    }
}
