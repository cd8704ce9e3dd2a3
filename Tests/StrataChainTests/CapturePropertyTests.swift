// The property that matters most: after any sequence of nights, every point of the chain restores bit for bit
// to that night's disk. Seeds are fixed so a failure reproduces; each test names its seed.
import Foundation
import TestSupport
import StrataChain
import StrataIO
import XCTest

final class CapturePropertyTests: XCTestCase {
    var dir = ""
    /// Where `runNights` puts its chains: `dir`, or a bucket (`testRandomNightsInABucket`).
    var chains = ""
    static let gateway = LazyRGW()
    override func setUpWithError() throws { dir = try scratchDirectory(); chains = dir }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }
    override class func tearDown() { gateway.stop() }

    /// Captures `nights` nights of a model disk from `source` (written by `write`), then restores every point
    /// into a file and compares it with that night's bytes.
    func runNights(
        seed: UInt64, size: Int, nights: Int, blockSize: UInt32?, engine: IOEngineChoice, threads: Int = 2,
        source: String? = nil, write: ((DiskModel, String) throws -> Void)? = nil, random: Int = 0
    ) throws {
        var rng = SeededGenerator(seed: seed)
        var disk = DiskModel(size: size, rng: &rng)
        disk.overwrite(at: size / 8, count: random, rng: &rng)  // incompressible data: images of that size
        let src = source ?? "\(dir)/source.img"
        let writeDisk = write ?? { try $0.writeSparse(to: $1) }
        let chain = "\(chains)/chain-\(seed)"
        var states: [[UInt8]] = []
        var options = CaptureOptions()
        options.blockSize = blockSize
        options.engine = engine
        options.threads = threads
        options.queueDepth = 8
        for n in 0..<nights {
            if n > 0 { disk.night(n - 1 + Int(seed % 4), rng: &rng) }
            try writeDisk(disk, src)
            let r = try Capture.run(source: src, chain: chain, options: options)
            XCTAssertEqual(r.point, UInt32(n + 1), "seed \(seed)")
            XCTAssertEqual(r.kind, n == 0 ? .full : .incremental)
            if n > 0 && disk.bytes == states.last! { XCTAssertEqual(r.blocksChanged, 0, "quiet night stores nothing, seed \(seed)") }
            states.append(disk.bytes)
        }
        for (i, state) in states.enumerated() {
            var ro = RestoreOptions.overwriting
            ro.point = UInt32(i + 1)
            ro.engine = engine
            ro.threads = threads
            let out = "\(dir)/restored-\(i + 1).img"
            let r = try Restore.run(chain: chain, target: out, options: ro)
            XCTAssertEqual(r.bytesWritten, UInt64(size))
            let back = try readFile(out)
            XCTAssertEqual(back.count, state.count, "seed \(seed) point \(i + 1) size")
            if back != state {
                let first = zip(back, state).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? -1
                XCTFail("seed \(seed) engine \(engine) point \(i + 1): first differing byte \(first)")
            }
            try? FileManager.default.removeItem(atPath: out)
        }
    }

    /// Forces io_uring: fails (never falls back to pread) on a machine where io_uring can be used.
    func testRandomNightsIoUring() throws {
        if let reason = URingQueue.unavailableReason() { throw XCTSkip(reason) }
        for seed: UInt64 in [1, 2] {
            try runNights(seed: seed, size: 6 << 20 + 1536, nights: 6, blockSize: nil, engine: .uring)
        }
    }

    /// Chunks wholly of changed data are compressed straight from their read slots, and a frame being filled
    /// from partly zero or partly unchanged chunks is sent off short before one: a full capture and an
    /// incremental alternating the two kinds of chunk restore bit for bit, and verify finds the chain whole.
    func testWholeChunkFramesBetweenPartlyZeroChunks() throws {
        let mib = 1 << 20
        var rng = SeededGenerator(seed: 11)
        var disk = DiskModel(size: 8 * mib, rng: &rng)
        disk.zero(at: 0, count: 8 * mib)
        for chunk in [1, 2, 4, 6] { disk.overwrite(at: chunk * mib, count: mib, rng: &rng) }  // wholly data
        disk.overwrite(at: 100_000, count: 300_000, rng: &rng)  // partly zero
        disk.overwrite(at: 3 * mib, count: mib, rng: &rng)
        disk.zero(at: 3 * mib + 500_000, count: 4096)
        disk.overwrite(at: 7 * mib + 4096, count: 40_000, rng: &rng)
        let source = "\(dir)/source.img", chain = "\(dir)/chain"
        var states: [[UInt8]] = []
        for night in 0..<2 {
            if night == 1 {
                disk.overwrite(at: mib + 8192, count: 20_000, rng: &rng)  // a few blocks of chunk 1, then all of 2
                disk.overwrite(at: 2 * mib, count: mib, rng: &rng)
                disk.overwrite(at: 5 * mib, count: mib, rng: &rng)  // zeros become data, after unchanged chunk 4
            }
            try disk.writeSparse(to: source)
            var options = CaptureOptions()
            options.threads = 3
            _ = try Capture.run(source: source, chain: chain, options: options)
            states.append(disk.bytes)
        }
        for (i, state) in states.enumerated() {
            var ro = RestoreOptions.overwriting
            ro.point = UInt32(i + 1)
            let out = "\(dir)/restored.img"
            _ = try Restore.run(chain: chain, target: out, options: ro)
            XCTAssertTrue(try readFile(out) == state, "point \(i + 1)")
        }
        XCTAssertTrue(try Verify.run(chain: chain, options: VerifyOptions()).isWhole)
    }

    /// `treatAsChanged` (bench's simulated night) stores exactly the blocks it names anew, data or zero, and
    /// the point restores as before.
    func testBlocksTreatedAsChangedAreStoredAnew() throws {
        var rng = SeededGenerator(seed: 12)
        var disk = DiskModel(size: 4 << 20, rng: &rng)
        disk.zero(at: 1 << 20, count: 256 << 10)
        let source = "\(dir)/source.img", chain = "\(dir)/chain"
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        var options = CaptureOptions()
        options.treatAsChanged = { $0 % 10 == 3 }
        let r = try Capture.run(source: source, chain: chain, options: options)
        XCTAssertEqual(r.blocksChanged, UInt64((0..<1024).filter { $0 % 10 == 3 }.count))
        XCTAssertEqual(try Capture.run(source: source, chain: chain, options: CaptureOptions()).blocksChanged, 0)
        var ro = RestoreOptions.overwriting
        ro.point = 2
        _ = try Restore.run(chain: chain, target: "\(dir)/restored.img", options: ro)
        XCTAssertTrue(try readFile("\(dir)/restored.img") == disk.bytes)
    }

    func testRandomNightsPread() throws {
        try runNights(seed: 3, size: 5 << 20 + 512, nights: 6, blockSize: nil, engine: .pread, threads: 1)
    }

    /// The nightly property on chains in a bucket of a real store (Ceph's RADOS Gateway), the images larger than
    /// one 16 MiB upload part so that parts go up while the capture runs.
    func testRandomNightsInABucket() throws {
        chains = try Self.gateway.bucketLocation("nights")
        try runNights(seed: 41, size: 48 << 20 + 4096, nights: 5, blockSize: nil, engine: .auto, random: 36 << 20)
        try runNights(seed: 42, size: 3 << 20 + 512, nights: 6, blockSize: 16384, engine: .pread, threads: 1)
    }

    func testSmallAndLargeBlockSizes() throws {
        try runNights(seed: 4, size: 3 << 20 + 512, nights: 4, blockSize: 512, engine: .auto)
        try runNights(seed: 5, size: 9 << 20 + 100, nights: 4, blockSize: 65536, engine: .pread)
        try runNights(seed: 6, size: 4 << 20, nights: 3, blockSize: 1 << 20, engine: .auto, threads: 3)
    }

    func testUringEngineWithFourKiBAlignedSize() throws {
        if let reason = URingQueue.unavailableReason() { throw XCTSkip(reason) }
        try runNights(seed: 7, size: 4 << 20 + 4096, nights: 5, blockSize: nil, engine: .uring)
    }

    /// The same property on a real block device, with each engine; restores also go to a block device.
    func testLoopDevice() throws {
        if let reason = LoopDevice.unavailableReason() { throw XCTSkip(reason) }
        let size = 8 << 20
        let uring = URingQueue.unavailableReason() == nil
        for (seed, engine) in [(UInt64(8), IOEngineChoice.pread), (9, uring ? .uring : .pread)] {
            let loop = try LoopDevice(size: size, in: dir)
            try runNights(seed: seed, size: size, nights: 5, blockSize: nil, engine: engine, source: loop.path) { disk, path in
                try disk.writeInPlace(to: path)
            }
            let target = try LoopDevice(size: size + 65536, in: dir)
            var ro = RestoreOptions.overwriting
            ro.engine = engine
            _ = try Restore.run(chain: "\(dir)/chain-\(seed)", target: target.path, options: ro)
            XCTAssertEqual(try readFile(target.path, count: size), try readFile(loop.path, count: size))
        }
    }
}
