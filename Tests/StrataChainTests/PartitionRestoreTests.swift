// `restore --partition`: a partition's blocks of a point, restored with and without --delta, with the pipeline's
// windows far narrower than the partition (extents cut at both of its ends and between windows) and the point's
// hash chunks (65536 blocks) crossed inside it with 512-byte blocks; the result is exactly the partition's bytes,
// and --delta writes exactly the blocks of the partition that differ.
import Foundation
import StrataCodec
import StrataFormat
import StrataIO
import XCTest

@testable import StrataChain

#if canImport(Glibc)
import Glibc
#endif

final class PartitionRestoreTests: XCTestCase {
    var dir: String!
    override func setUp() { dir = try! scratchDirectory("partition-restore") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// An MBR of two partitions in 512-byte sectors, written into `bytes` (sfdisk writes it: the table is libblkid's
    /// to read, not the test's).
    func writeTable(_ bytes: inout [UInt8], _ parts: [(start: Int, size: Int)]) throws {
        let file = "\(dir!)/table.img"
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        let script = "label: dos\n" + parts.map { "start=\($0.start), size=\($0.size), type=83\n" }.joined()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["sfdisk", "-q", "--no-reread", file]
        let input = Pipe()
        p.standardInput = input
        try p.run()
        input.fileHandleForWriting.write(Data(script.utf8))
        try input.fileHandleForWriting.close()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "sfdisk")
        bytes = try readFile(file)
    }

    func testPartitionsAcrossWindowsAndHashChunks() throws {
        // 40 MiB of 512-byte blocks: block 65536 (the second hash chunk) is at 32 MiB, inside partition 2.
        let size = 40 << 20
        var rng = SeededGenerator(seed: 7)
        var disk = [UInt8](repeating: 0, count: size)
        for i in stride(from: 1 << 20, to: size, by: 8) where (i >> 16) % 3 != 0 {
            var v = rng.next()
            withUnsafeBytes(of: &v) { for k in 0..<8 { disk[i + k] = $0[k] } }
        }
        let parts = [(start: 2048, size: 20001), (start: 61541, size: 16384)]  // the second's 1 MiB compare reads straddle block 65536
        try writeTable(&disk, parts)
        let source = "\(dir!)/disk.img", chain = "\(dir!)/chain"
        try Data(disk).write(to: URL(fileURLWithPath: source))
        var o = CaptureOptions()
        o.blockSize = 512
        o.threads = 2
        _ = try Capture.run(source: source, chain: chain, options: o)
        var night2 = disk
        for at in stride(from: 31 << 20, to: 34 << 20, by: 40960) {  // across the chunk boundary, in partition 2
            for k in 0..<700 { night2[at + k] ^= 0x5A }
        }
        for k in 0..<3000 { night2[2048 * 512 + 100_000 + k] = 0 }  // data turned to zeros in partition 1
        try Data(night2).write(to: URL(fileURLWithPath: source))
        _ = try Capture.run(source: source, chain: chain, options: o)

        for (number, p) in zip([1, 2], parts) {
            let bytes = p.start * 512..<(p.start + p.size) * 512
            for windowBlocks: UInt64 in [.max, 700] {
                var ro = RestoreOptions.overwriting
                ro.partition = number
                ro.threads = 2
                ro.tuning.maxWindowBlocks = windowBlocks
                ro.tuning.maxRestoreSlots = 6
                let target = "\(dir!)/p\(number).img"
                ro.point = 1
                let full = try Restore.run(chain: chain, target: target, options: ro)
                XCTAssertEqual(full.partition?.offset, UInt64(bytes.lowerBound))
                XCTAssertEqual(full.bytesWritten, UInt64(bytes.count))
                XCTAssertTrue(try readFile(target) == Array(disk[bytes]), "partition \(number) of point 1, windows of \(windowBlocks)")
                // Point 2 over point 1's partition: only the blocks that differ are written.
                ro.point = 2
                ro.delta = true
                ro.verify = true
                let delta = try Restore.run(chain: chain, target: target, options: ro)
                XCTAssertTrue(try readFile(target) == Array(night2[bytes]), "partition \(number) of point 2 by --delta, windows of \(windowBlocks)")
                let differ = stride(from: bytes.lowerBound, to: bytes.upperBound, by: 512).filter { b in
                    disk[b..<min(b + 512, bytes.upperBound)] != night2[b..<min(b + 512, bytes.upperBound)]
                }.count
                XCTAssertGreaterThan(differ, 0)
                XCTAssertEqual(delta.blocksDiffering, UInt64(differ), "partition \(number): blocks differing")
                XCTAssertTrue(delta.verified)
            }
        }
    }
}
