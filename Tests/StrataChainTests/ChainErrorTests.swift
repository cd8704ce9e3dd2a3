// Bad input gets one clear error, its exit code, and leaves the chain exactly as it was.
import Foundation
import StrataChain
import StrataCodec
import StrataFormat
import StrataIO
import XCTest

final class ChainErrorTests: XCTestCase {
    var dir = ""
    var source = ""
    var chain = ""
    var rng = SeededGenerator(seed: 42)

    override func setUpWithError() throws {
        dir = try scratchDirectory("errors")
        source = "\(dir)/source.img"
        chain = "\(dir)/chain"
        var disk = DiskModel(size: 2 << 20, rng: &rng)
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        disk.night(0, rng: &rng)
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// Every file of the chain and its bytes, to show an operation left it untouched.
    func snapshot() throws -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: chain) where name != ".lock" {
            out[name] = try readFile("\(chain)/\(name)")
        }
        return out
    }

    func assertFails(_ expected: ChainError, code: Int32, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) throws {
        let before = try snapshot()
        XCTAssertThrowsError(try body(), file: file, line: line) {
            XCTAssertEqual($0 as? ChainError, expected, file: file, line: line)
            XCTAssertEqual(($0 as? ChainError)?.exitCode, code, file: file, line: line)
        }
        XCTAssertEqual(try snapshot(), before, "chain changed", file: file, line: line)
    }

    func testMissingSource() throws {
        try assertFails(.sourceUnavailable(path: "\(dir)/nope", reason: "No such file or directory"), code: 66) {
            _ = try Capture.run(source: "\(dir)/nope", chain: chain, options: CaptureOptions())
        }
        XCTAssertEqual(
            ChainError.sourceUnavailable(path: "/x", reason: "No such file or directory").description,
            "cannot read source /x: No such file or directory; check the path and your permissions")
    }

    func testSourceOfAnotherSize() throws {
        truncate(source, 3 << 20)
        try assertFails(.sourceMismatch(detail: "the source has 3145728 bytes, the chain's has 2097152"), code: 65) {
            _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        }
    }

    func testOtherBlockSize() throws {
        var o = CaptureOptions()
        o.blockSize = 8192
        try assertFails(.sourceMismatch(detail: "--block-size 8192 differs from the chain's 4096"), code: 65) {
            _ = try Capture.run(source: source, chain: chain, options: o)
        }
    }

    func testInvalidBlockSize() throws {
        var o = CaptureOptions()
        o.blockSize = 3000
        try assertFails(.invalidOption("block size 3000 is not a power of two between 512 and 1048576"), code: 64) {
            _ = try Capture.run(source: source, chain: chain, options: o)
        }
    }

    func testDirectoryThatIsNotAChain() throws {
        let other = "\(dir)/photos"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: "\(other)/holiday.jpg", contents: Data([1, 2, 3]))
        XCTAssertThrowsError(try Capture.run(source: source, chain: other, options: CaptureOptions())) {
            XCTAssertEqual($0 as? ChainError, .notAChain(path: other))
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: other), ["holiday.jpg"])
        XCTAssertThrowsError(try Restore.run(chain: "\(dir)/missing", target: "\(dir)/out", options: RestoreOptions.overwriting)) {
            XCTAssertEqual($0 as? ChainError, .notAChain(path: "\(dir)/missing"))
            XCTAssertEqual(($0 as? ChainError)?.exitCode, 65)
        }
    }

    func testNoSuchPoint() throws {
        var o = RestoreOptions.overwriting
        o.point = 9
        try assertFails(.noSuchPoint(9, available: [1, 2]), code: 64) {
            _ = try Restore.run(chain: chain, target: "\(dir)/out.img", options: o)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out.img"), "nothing written for a bad point")
    }

    func testDamagedManifest() throws {
        var m = try readFile("\(chain)/chain.manifest")
        m[20] ^= 1
        try Data(m).write(to: URL(fileURLWithPath: "\(chain)/chain.manifest"))
        try assertFails(.damaged(file: "chain.manifest", detail: "chain manifest fails its checksum"), code: 65) {
            _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        }
        XCTAssertThrowsError(try ChainListing.read(chain: chain))
    }

    func testTruncatedImage() throws {
        let path = "\(chain)/p000002.strata"
        let size = try readFile(path).count
        truncate(path, off_t(size - 10))
        try assertFails(.damaged(file: "p000002.strata", detail: "image file (\(size - 10) bytes, header says \(size)) is truncated at byte \(size - 10)"), code: 65) {
            _ = try Restore.run(chain: chain, target: "\(dir)/out.img", options: RestoreOptions.overwriting)
        }
    }

    func testMissingImage() throws {
        unlink("\(chain)/p000001.strata")
        try assertFails(.damaged(file: "p000001.strata", detail: "the file is missing"), code: 65) {
            _ = try Restore.run(chain: chain, target: "\(dir)/out.img", options: RestoreOptions.overwriting)
        }
    }

    /// A flipped byte inside a frame is found by its checksum and named; nothing is restored silently.
    func testCorruptFrameIsNamed() throws {
        let path = "\(chain)/p000001.strata"
        var bytes = try readFile(path)
        bytes[4096 + 5000] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        var o = RestoreOptions.overwriting
        o.point = 1
        XCTAssertThrowsError(try Restore.run(chain: chain, target: "\(dir)/out.img", options: o)) {
            guard case .corruptData(let file, let detail) = $0 as? ChainError else { return XCTFail("\($0)") }
            XCTAssertEqual(file, "p000001.strata")
            XCTAssertEqual(detail, "frame 0 at byte 4096 fails its checksum")
            XCTAssertEqual(($0 as? ChainError)?.exitCode, 65)
        }
    }

    func testChainInUse() throws {
        let holder = try DirectoryLock(directory: chain)
        XCTAssertNotNil(holder)
        try assertFails(.chainInUse(path: chain), code: 75) {
            _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        }
        _ = holder
    }

    /// Readers (restore, verify, list) run beside a writer, which holds the writer's lock; a second writer fails
    /// at once with exit 75.
    func testReadersRunBesideAWriterWritersExcludeEachOther() throws {
        let writer = try DirectoryLock(directory: chain)
        XCTAssertNotNil(writer)
        _ = try Restore.run(chain: chain, target: "\(dir)/out.img", options: RestoreOptions.overwriting)
        XCTAssertTrue(try Verify.run(chain: chain, options: VerifyOptions()).isWhole)
        XCTAssertEqual(try ChainListing.read(chain: chain).points.count, 2)
        try assertFails(.chainInUse(path: chain), code: 75) {
            _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        }
        try assertFails(.chainInUse(path: chain), code: 75) {
            _ = try Merge.run(chain: chain, options: MergeOptions(to: 2))
        }
        _ = writer
    }

    func testTargetThatCannotBeWritten() throws {
        try assertFails(.targetUnavailable(path: "\(dir)/no/such/dir/out.img", reason: "No such file or directory"), code: 73) {
            _ = try Restore.run(chain: chain, target: "\(dir)/no/such/dir/out.img", options: RestoreOptions.overwriting)
        }
    }

    func testDeviceTooSmall() throws {
        if let reason = LoopDevice.unavailableReason() { throw XCTSkip(reason) }
        let small = try LoopDevice(size: 1 << 20, in: dir)
        let before = try readFile(small.path, count: 1 << 20)
        try assertFails(.targetTooSmall(path: small.path, size: 1 << 20, needed: 2 << 20), code: 73) {
            _ = try Restore.run(chain: chain, target: small.path, options: RestoreOptions.overwriting)
        }
        XCTAssertEqual(try readFile(small.path, count: 1 << 20), before, "nothing written to a too-small device")
    }

    func testStaleTemporaryFilesAreCleanedUp() throws {
        _ = FileManager.default.createFile(atPath: "\(chain)/.strata-tmp-999-p000003.strata", contents: Data([1]))
        _ = FileManager.default.createFile(atPath: "\(chain)/p000003.strata", contents: Data([1]))
        _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        let names = try FileManager.default.contentsOfDirectory(atPath: chain).sorted()
        XCTAssertEqual(names, [".lock", "chain.manifest", "map-p000003.strata", "p000001.strata", "p000002.strata", "p000003.strata"])
    }

    func testMountedSourceIsRefusedUnlessAllowed() throws {
        if let reason = LoopDevice.unavailableReason() { throw XCTSkip(reason) }
        let loop = try LoopDevice(size: 8 << 20, in: dir)
        guard shell(["mkfs.ext4", "-q", "-F", loop.path]).status == 0 else { throw TestFailure("mkfs.ext4 failed (Tools/setup installs e2fsprogs)") }
        let mnt = "\(dir)/mnt"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        guard shell(["mount", loop.path, mnt]).status == 0 else { throw TestFailure("mount of \(loop.path) failed as root") }
        defer { shell(["umount", mnt]) }
        XCTAssertThrowsError(try Capture.run(source: loop.path, chain: "\(dir)/mounted", options: CaptureOptions())) {
            XCTAssertEqual($0 as? ChainError, .sourceMounted(path: loop.path, mountPoint: mnt))
            XCTAssertEqual(($0 as? ChainError)?.exitCode, 77)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/mounted"), "refused before the chain is created")
        var options = CaptureOptions()
        options.allowMounted = true
        var notices: [String] = []
        let r = try Capture.run(source: loop.path, chain: "\(dir)/mounted", options: options, notice: { notices.append($0) })
        XCTAssertEqual(r.point, 1)
        XCTAssertTrue(notices.contains { $0.hasPrefix("warning: \(loop.path) is mounted read-write at \(mnt)") }, "\(notices)")
    }

    /// A block whose stored hash disagrees with its content is named by its block number, even when every
    /// checksum around it was recomputed to match (as a bug in a writer could do).
    func testBlockHashMismatchIsNamed() throws {
        let path = "\(chain)/p000001.strata"
        var bytes = try readFile(path)
        var header = try ImageHeader.decode(Array(bytes[0..<4096]))
        XCTAssertTrue(header.isChunked)
        var top = try TopIndex.decode(Array(bytes[Int(header.indexOffset)...]), header: header)
        let entry = top.frameChunks[0]
        let chunk = { Array(bytes[Int(entry.offset)..<(Int(entry.offset) + Int(entry.length))]) }
        var frames = try IndexChunks.decodeFrames(chunk(), chunk: 0, of: top, header: header)
        let frame = frames[0]
        bytes[Int(frame.offset) + 16 + 3] ^= 0xFF  // the second block's stored hash
        frames[0].checksum = bytes.withUnsafeBytes { Checksum.xxh3($0.baseAddress! + Int(frame.offset), count: Int(frame.length)) }
        let chunkBytes = IndexChunks.encode(frames: frames[...])
        bytes.replaceSubrange(Int(entry.offset)..<(Int(entry.offset) + chunkBytes.count), with: chunkBytes)
        top.frameChunks[0].checksum = CRC32C.checksum(chunkBytes)
        let indexBytes = top.encode()
        header.indexChecksum = CRC32C.checksum(indexBytes)
        bytes.replaceSubrange(0..<4096, with: header.encode())
        bytes.replaceSubrange(Int(header.indexOffset)..., with: indexBytes)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        var extents: [ExtentRecord] = []
        for (c, e) in top.extentChunks.enumerated() {
            extents += try IndexChunks.decodeExtents(Array(bytes[Int(e.offset)..<(Int(e.offset) + Int(e.length))]), chunk: c, of: top, header: header)
        }
        let extent = extents.first { $0.kind == .data && $0.frame == 0 && $0.frameBlock <= 1 && 1 < $0.frameBlock + $0.blockCount }!
        var o = RestoreOptions.overwriting
        o.point = 1
        XCTAssertThrowsError(try Restore.run(chain: chain, target: "\(dir)/out.img", options: o)) {
            XCTAssertEqual(
                $0 as? ChainError,
                .corruptData(file: "p000001.strata", detail: "block \(extent.firstBlock + 1 - UInt64(extent.frameBlock)) (in frame 0) does not match its hash"))
        }
    }
}
