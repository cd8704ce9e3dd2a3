// Merges and prunes never change what a remaining point restores to. Random sequences of captures, merges and
// prunes, checking every point after every step; bad ranges and damaged images leave the chain untouched.
import Foundation
import TestSupport
import StrataCodec
import StrataFormat
import XCTest

@testable import StrataChain

final class MergeTests: XCTestCase {
    var dir = ""
    /// Where the property test's chains go: `dir`, or a bucket (`testRandomMergesAndPrunesInABucket`).
    var chains = ""
    /// The sizes every capture, merge, restore and verify of the property test runs with.
    var tuning = Tuning()
    /// Tiny index chunks (16 records), windows of 37 blocks and two restore slots.
    static let small = Tuning(framesPerIndexChunk: 16, extentsPerIndexChunk: 16, maxRestoreSlots: 2, maxWindowBlocks: 37)
    static let gateway = LazyRGW()
    override func setUpWithError() throws { dir = try scratchDirectory("merge"); chains = dir }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }
    override class func tearDown() { gateway.stop() }

    func assertEveryPointRestores(_ chain: String, _ states: [UInt32: [UInt8]], _ context: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let points = try ChainListing.read(chain: chain).points.map(\.point)
        for p in points {
            var o = RestoreOptions.overwriting
            o.point = p
            o.tuning = tuning
            let out = "\(dir)/out.img"
            _ = try Restore.run(chain: chain, target: out, options: o)
            XCTAssertTrue(try readFile(out) == states[p], "\(context): point \(p) differs", file: file, line: line)
        }
    }

    func testRandomMergesAndPrunesKeepEveryPoint() throws {
        try randomMergesAndPrunes(seeds: [21, 22, 23])
    }

    /// The same on chains in a bucket of a real store (Ceph's RADOS Gateway), where merges place whole frames in
    /// source order; the second seed with tiny index chunks and windows, as below.
    func testRandomMergesAndPrunesInABucket() throws {
        chains = try Self.gateway.bucketLocation("merge")
        try randomMergesAndPrunes(seeds: [24], verify: true)
        tuning = Self.small
        try randomMergesAndPrunes(seeds: [25], verify: true)
    }

    /// The same with tiny index chunks (16 records), windows of 37 blocks for restore, verify, merge and the map
    /// rebuild, and two restore slots, so that every piece of the streamed index is crossed many times and
    /// frames leave their slots and are read again; every point is also verified whole after each step.
    func testRandomMergesWithSmallChunksWindowsAndSlots() throws {
        tuning = Self.small
        try randomMergesAndPrunes(seeds: [31, 32], verify: true)
        // The images written this way have many chunks of each kind.
        let chain = "\(dir)/chain-31"
        let full = try Chain(location: chain, access: .read).openImages(forPoint: try ChainListing.read(chain: chain).points.last!.point).first!
        XCTAssertGreaterThan(full.index.extentChunkCount, 4)

        // Windows ended by the chunk tables (a few extents an image) resolve every block as one window does.
        let images = try Chain(location: chain, access: .read).openImages(forPoint: try ChainListing.read(chain: chain).points.last!.point)
        func blocks(_ walk: PointWalk) throws -> (map: [[UInt64]], windows: Int) {
            var map: [[UInt64]] = [], windows = 0
            while let window = try walk.next() {
                windows += 1
                for e in window {
                    for k in 0..<UInt64(e.blockCount) {
                        map.append([e.firstBlock + k, UInt64(e.kind.rawValue), UInt64(e.image), UInt64(e.frame), UInt64(e.frameBlock) + (e.kind == .data ? k : 0)])
                    }
                }
            }
            return (map, windows)
        }
        let small = try blocks(PointWalk(images, extents: 3)), one = try blocks(PointWalk(images, extents: .max))
        XCTAssertEqual(one.windows, 1)
        XCTAssertGreaterThan(small.windows, 4)
        XCTAssertEqual(small.map, one.map)
    }

    func randomMergesAndPrunes(seeds: [UInt64], verify: Bool = false) throws {
        for seed in seeds {
            var rng = SeededGenerator(seed: seed)
            var disk = DiskModel(size: 3 << 20 + 2048, rng: &rng)
            let source = "\(dir)/source-\(seed).img"
            let chain = "\(chains)/chain-\(seed)"
            var states: [UInt32: [UInt8]] = [:]
            func capture() throws {
                try disk.writeSparse(to: source)
                var o = CaptureOptions()
                o.tuning = tuning
                let r = try Capture.run(source: source, chain: chain, options: o)
                states[r.point] = disk.bytes
            }
            try capture()
            for n in 0..<5 {
                disk.night(n, rng: &rng)
                try capture()
            }
            for step in 0..<14 {
                let points = try ChainListing.read(chain: chain).points.map(\.point)
                let action = Int.random(in: 0..<4, using: &rng)
                var what = ""
                if action == 0 || points.count < 2 {
                    disk.night(Int.random(in: 0..<4, using: &rng), rng: &rng)
                    try capture()
                    what = "capture"
                } else if action == 1 {
                    var o = MergeOptions(to: 0)
                    o.tuning = tuning
                    let r = try XCTUnwrap(Merge.prune(chain: chain, keep: Int.random(in: 1..<points.count, using: &rng), options: o))
                    XCTAssertEqual(r.kind, .full)
                    what = "prune to \(r.points)"
                } else {
                    let i = Int.random(in: 0..<(points.count - 1), using: &rng)
                    let j = Int.random(in: (i + 1)..<points.count, using: &rng)
                    var o = MergeOptions(to: points[j])
                    o.from = points[i]
                    o.threads = [1, 2, 5, 8][step % 4]  // one re-packer, or two with copiers joining at the end
                    o.tuning = tuning
                    let r = try Merge.run(chain: chain, options: o)
                    XCTAssertEqual(r.kind, i == 0 ? .full : .incremental)
                    XCTAssertLessThanOrEqual(r.bytesStored, r.bytesBefore + 4096, "a merged image is no larger than what it replaces")
                    what = "merge \(points[i])..\(points[j]) on \(o.threads) threads"
                }
                try assertEveryPointRestores(chain, states, "seed \(seed) step \(step) (\(what))")
                if verify {
                    var vo = VerifyOptions()
                    vo.tuning = tuning
                    let v = try Verify.run(chain: chain, options: vo)
                    XCTAssertTrue(v.isWhole, "seed \(seed) step \(step) (\(what)): \(v.problems)")
                }
            }
            // The head hash map stays valid: the next capture after merges is an ordinary incremental.
            var o = CaptureOptions()
            o.tuning = tuning
            let quiet = try Capture.run(source: source, chain: chain, options: o)
            XCTAssertEqual(quiet.kind, .incremental)
            XCTAssertEqual(quiet.blocksChanged, 0)
        }
    }

    /// In a bucket, whole frames back to back in a source image are copied by the store itself (UploadPartCopy), in
    /// parts of at least 5 MiB after what the upload's first part needs written: every point restores as before,
    /// verify passes, and the next capture is ordinary.
    func testWholeFramesAreCopiedInsideTheBucket() throws {
        let n = Nights(chain: try Self.gateway.bucketLocation("copy") + "/c", source: "\(dir)/s.img", seed: 77, size: 64 << 20, random: 40 << 20)
        let chain = n.chain
        try n.capture()
        for night in 0..<4 {
            n.overwrite(at: night * (9 << 20) + 4096 * night, count: 7 << 20)  // 7 MiB of new data a night
            // 600 KiB of the night before's frame 2 again: that frame is no longer mostly live.
            if night > 0 { n.overwrite(at: (night - 1) * (9 << 20) + 4096 * (night - 1) + (2 << 20) + (200 << 10), count: 600 << 10) }
            n.disk.night(0, rng: &n.rng)
            try n.capture()
        }
        // The frames later nights partly overwrote lie between whole ones: in a bucket they go along in the copies
        // (kept whole), where a directory re-packs them.
        let sources = try Chain(location: chain, access: .read).openImages(forPoint: 5, from: 2)
        let here = try MergePlan(sources: sources, copiesInStore: false), there = try MergePlan(sources: sources, copiesInStore: true)
        XCTAssertGreaterThanOrEqual(here.framesRepacked, 3)
        XCTAssertEqual(there.framesRepacked + there.framesCopied, here.framesRepacked + here.framesCopied)
        XCTAssertLessThanOrEqual(there.framesRepacked, here.framesRepacked - 3)
        var o = MergeOptions(to: 5)
        o.from = 2
        let r = try Merge.run(chain: chain, options: o)
        XCTAssertEqual(r.framesRepacked, there.framesRepacked)
        XCTAssertGreaterThan(r.framesCopiedInStore, 0)
        XCTAssertGreaterThan(r.bytesCopiedInStore, 10 << 20, "most of the 28 MiB copied whole went inside the store")
        XCTAssertLessThanOrEqual(r.framesCopiedInStore, r.framesCopied)
        XCTAssertLessThanOrEqual(r.bytesStored, r.bytesBefore, "frames kept whole between whole ones are not also re-packed")
        try assertEveryPointRestores(chain, n.states, "after the merge in the bucket")
        XCTAssertTrue(try Verify.run(chain: chain, options: VerifyOptions()).isWhole)
        // A synthetic full: the full image's frames too.
        let full = try Merge.run(chain: chain, options: MergeOptions(to: 5))
        XCTAssertEqual(full.kind, .full)
        XCTAssertGreaterThan(full.bytesCopiedInStore, 20 << 20)
        try assertEveryPointRestores(chain, n.states, "after the synthetic full in the bucket")
        XCTAssertTrue(try Verify.run(chain: chain, options: VerifyOptions()).isWhole)
        let quiet = try Capture.run(source: n.source, chain: chain, options: CaptureOptions())
        XCTAssertEqual(quiet.blocksChanged, 0)
        // A local chain's merge copies nothing inside its store.
        let local = Nights(chain: "\(dir)/local", source: n.source, seed: 79, size: 16 << 20, random: 8 << 20)
        try local.capture()
        local.overwrite(at: 0, count: 8 << 20)
        try local.capture()
        XCTAssertEqual(try Merge.run(chain: local.chain, options: MergeOptions(to: 2)).framesCopiedInStore, 0)
    }

    /// Where the image may leave room unused, a merge in a bucket downloads the source images' indexes and the
    /// frames it re-packs, nothing more: every whole frame is copied inside the store, the parts before copies are
    /// filled with zeros up to S3's smallest part (5 MiB), and a run of whole frames shorter than that goes with
    /// the bytes around it in its source image. Every point restores and verify passes.
    func testAMergeInTheBucketDownloadsOnlyTheFramesItRepacks() throws {
        let n = Nights(chain: try Self.gateway.bucketLocation("padding") + "/c", source: "\(dir)/s.img", seed: 78, size: 64 << 20, random: 40 << 20)
        let chain = n.chain
        try n.capture()
        n.overwrite(at: 0, count: 7 << 20)  // point 2: 7 frames
        try n.capture()
        n.overwrite(at: 16 << 20, count: 7 << 20)  // point 3: 7 frames, and 700 KiB of point 2's last: re-packed
        n.overwrite(at: (6 << 20) + (100 << 10), count: 700 << 10)
        try n.capture()
        n.overwrite(at: 32 << 20, count: 6 << 20)  // point 4: 6 frames
        try n.capture()
        // Point 5 overwrites point 4's first four frames: what survives of point 4 is a run of 2 MiB.
        n.overwrite(at: 32 << 20, count: 4 << 20)
        n.overwrite(at: 48 << 20, count: 3 << 20)
        try n.capture()
        let sources = try Chain(location: chain, access: .read).openImages(forPoint: 5, from: 2)
        var indexes: UInt64 = 0
        for s in sources {
            var frames: UInt64 = 0
            for f in 0..<s.index.frameCount { frames += UInt64(try s.index.frame(UInt32(f)).length) }
            indexes += s.header.fileSize - frames
        }
        var o = MergeOptions(to: 5)
        o.tuning.mergePaddingShare = 2
        o.from = 2
        let r = try Merge.run(chain: chain, options: o)
        XCTAssertGreaterThan(r.framesRepacked, 0)
        XCTAssertEqual(r.framesCopiedInStore, r.framesCopied, "every whole frame copied inside the store")
        let downloaded = try XCTUnwrap(r.bytesDownloaded)
        XCTAssertLessThanOrEqual(downloaded, r.bytesRepacked + indexes, "downloads: \(r.bytesRepacked) B re-packed, \(indexes) B of indexes")
        // The first part (5 MiB less the header and what was re-packed) and 3 MiB around point 4's last frames.
        XCTAssertGreaterThan(r.bytesPadding, 7 << 20)
        XCTAssertLessThanOrEqual(r.bytesPadding, r.bytesStored / 2)
        try assertEveryPointRestores(chain, n.states, "after a merge leaving bytes unused")
        XCTAssertTrue(try Verify.run(chain: chain, options: VerifyOptions()).isWhole)
        // The merged image stays a base for what comes next.
        n.overwrite(at: 8 << 20, count: 1 << 20)
        try n.capture()
        let full = try Merge.run(chain: chain, options: MergeOptions(to: 6))
        XCTAssertEqual(full.kind, .full)
        try assertEveryPointRestores(chain, n.states, "after a synthetic full over it")
        XCTAssertTrue(try Verify.run(chain: chain, options: VerifyOptions()).isWhole)
        // A directory neither counts downloads nor leaves room unused.
        let local = Nights(chain: "\(dir)/local", source: n.source, seed: 79, size: 16 << 20, random: 8 << 20)
        try local.capture()
        local.overwrite(at: 0, count: 8 << 20)
        try local.capture()
        let here = try Merge.run(chain: local.chain, options: MergeOptions(to: 2))
        XCTAssertNil(here.bytesDownloaded)
        XCTAssertEqual(here.bytesPadding, 0)
    }

    /// A seekable chain (`capture --seekable`) stays so: later captures and merges store their frames in
    /// sub-frames without being asked; `--no-seekable` makes ordinary frames from the next image on, and a merge
    /// follows its newest image. Every point restores bit for bit and verify passes throughout.
    func testSeekableChainsStaySoThroughCapturesAndMerges() throws {
        let n = Nights(chain: "\(dir)/chain", source: "\(dir)/s.img", seed: 81, size: 8 << 20, random: 0)
        func newest() throws -> ImageFile {
            let c = try Chain(location: n.chain, access: .read)
            return try ImageFile(store: c.store, name: c.manifest!.images.last!.file, keys: nil)
        }
        func codecs(_ image: ImageFile) throws -> Set<FrameCodec> { Set(try (0..<image.index.frameCount).map { try image.index.frame(UInt32($0)).codec }) }
        var o = CaptureOptions()
        o.seekable = true
        try n.disk.writeSparse(to: n.source)
        _ = try Capture.run(source: n.source, chain: n.chain, options: o)
        n.states[1] = n.disk.bytes
        XCTAssertTrue(try newest().header.isSeekable)
        XCTAssertEqual(try codecs(newest()), [.zstdSubframes])
        for _ in 0..<3 {
            n.disk.night(0, rng: &n.rng)
            n.overwrite(at: 1 << 20, count: 300 << 10)
            try n.capture()
            XCTAssertTrue(try newest().header.isSeekable, "a capture without the flag follows the chain")
        }
        var m = MergeOptions(to: 4)
        m.from = 2
        _ = try Merge.run(chain: n.chain, options: m)
        XCTAssertTrue(try newest().header.isSeekable, "a merge follows its newest image")
        XCTAssertFalse(try codecs(newest()).contains(.zstd))
        try assertEveryPointRestores(n.chain, n.states, "in a seekable chain")
        XCTAssertTrue(try Verify.run(chain: n.chain, options: VerifyOptions()).isWhole)
        o.seekable = false
        n.overwrite(at: 3 << 20, count: 1 << 20)
        try n.disk.writeSparse(to: n.source)
        n.states[try Capture.run(source: n.source, chain: n.chain, options: o).point] = n.disk.bytes
        XCTAssertFalse(try newest().header.isSeekable)
        XCTAssertFalse(try codecs(newest()).contains(.zstdSubframes))
        n.overwrite(at: 5 << 20, count: 100 << 10)
        try n.capture()
        XCTAssertFalse(try newest().header.isSeekable, "and the chain follows that")
        // A synthetic full over both kinds: copied frames keep their codec, the image says it holds sub-frames.
        let full = try Merge.run(chain: n.chain, options: MergeOptions(to: 6))
        let merged = try newest()
        XCTAssertEqual(full.kind, .full)
        XCTAssertTrue(try codecs(merged).contains(.zstdSubframes))
        XCTAssertNotEqual(merged.header.incompatibleFeatures & ImageFeatures.subframes, 0)
        try assertEveryPointRestores(n.chain, n.states, "after a synthetic full over seekable and ordinary images")
        XCTAssertTrue(try Verify.run(chain: n.chain, options: VerifyOptions()).isWhole)
    }

    /// A frame most of whose blocks survive is copied whole, dead blocks and all (the sparseFrames feature bit);
    /// one that is mostly dead is re-packed. Every point restores, verify passes, the next capture is ordinary.
    func testMostlyLiveFramesAreKeptWhole() throws {
        let n = Nights(chain: "\(dir)/chain", source: "\(dir)/s.img", seed: 41, size: 8 << 20, random: 8 << 20)
        let (source, chain) = (n.source, n.chain)
        try n.capture()
        n.overwrite(at: 0, count: 4 << 20)  // point 2: frames of 256 changed blocks
        try n.capture()
        n.overwrite(at: 0, count: 16 << 10)  // point 3: 4 blocks of point 2's first frame
        n.overwrite(at: 2 << 20, count: 3 << 19)  // and most of its third frame
        try n.capture()
        var o = MergeOptions(to: 3)
        o.from = 2
        let r = try Merge.run(chain: chain, options: o)
        XCTAssertEqual(r.framesRepacked, 1, "only the mostly dead frame is re-packed")
        XCTAssertGreaterThanOrEqual(r.framesCopied, 4)
        let image = try ImageFile(store: LocalDirectoryStore(path: chain), name: r.image, keys: nil)
        XCTAssertNotEqual(image.header.incompatibleFeatures & ImageFeatures.sparseFrames, 0)
        XCTAssertTrue(try Verify.run(chain: chain, options: VerifyOptions()).isWhole)
        try assertEveryPointRestores(chain, n.states, "after keeping mostly live frames whole")
        XCTAssertEqual(try Capture.run(source: source, chain: chain, options: CaptureOptions()).blocksChanged, 0)
    }

    func testBadRangesAreRefusedAndChainUntouched() throws {
        var rng = SeededGenerator(seed: 30)
        var disk = DiskModel(size: 1 << 20, rng: &rng)
        let source = "\(dir)/s.img", chain = "\(dir)/chain"
        for n in 0..<3 {
            if n > 0 { disk.night(0, rng: &rng) }
            try disk.writeSparse(to: source)
            _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        }
        let before = try FileManager.default.contentsOfDirectory(atPath: chain).sorted()
        func refuse(_ from: UInt32?, _ to: UInt32, _ expected: ChainError, code: Int32) {
            var o = MergeOptions(to: to)
            o.from = from
            XCTAssertThrowsError(try Merge.run(chain: chain, options: o)) {
                XCTAssertEqual($0 as? ChainError, expected)
                XCTAssertEqual(($0 as? ChainError)?.exitCode, code)
            }
        }
        refuse(2, 2, .invalidOption("the range 2..2 is empty; give --from lower than --to"), code: 64)
        refuse(3, 2, .invalidOption("the range 3..2 is reversed; give --from lower than --to"), code: 64)
        refuse(1, 9, .noSuchPoint(9, available: [1, 2, 3]), code: 64)
        refuse(0, 3, .noSuchPoint(0, available: [1, 2, 3]), code: 64)
        XCTAssertThrowsError(try Merge.prune(chain: chain, keep: 0))
        XCTAssertNil(try Merge.prune(chain: chain, keep: 3))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: chain).sorted(), before)

        // A damaged image in the range, in its first frame or its last: named, and nothing changes.
        let path = "\(chain)/p000002.strata"
        let intact = try readFile(path)
        let header = try ImageHeader.decode(Array(intact[0..<ImageHeader.size]))
        let top = try TopIndex.decode(Array(intact[Int(header.indexOffset)...]), header: header)
        let lastFrameEnd = Int(top.frameChunks.last!.endOffset)
        let lastExtentChunk = top.extentChunks.last!
        for at in [4096 + 40, lastFrameEnd - 1, Int(lastExtentChunk.offset) + Int(lastExtentChunk.length) - 1] {
            var bytes = intact
            bytes[at] ^= 1
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            var o = MergeOptions(to: 3)
            o.from = 2
            XCTAssertThrowsError(try Merge.run(chain: chain, options: o)) {
                switch $0 as? ChainError {
                case .corruptData(let file, _) where at < lastFrameEnd: XCTAssertEqual(file, "p000002.strata")
                case .damaged(let file, let detail) where at >= lastFrameEnd:
                    XCTAssertEqual(file, "p000002.strata")
                    XCTAssertEqual(detail, "extent chunk \(top.extentChunks.count - 1) fails its checksum")
                default: XCTFail("\($0)")
                }
            }
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: chain).sorted(), before)
        }
    }

    /// A merge reads only the images of its range: one below it that is damaged does not stop it (and is still
    /// named by what needs it); the merged range restores exactly.
    func testAMergeReadsNoImageBelowItsRange() throws {
        var rng = SeededGenerator(seed: 31)
        var disk = DiskModel(size: 1 << 20, rng: &rng)
        let source = "\(dir)/s.img", chain = "\(dir)/chain"
        var states: [UInt32: [UInt8]] = [:]
        for n in 0..<3 {
            if n > 0 { disk.night(0, rng: &rng) }
            try disk.writeSparse(to: source)
            states[try Capture.run(source: source, chain: chain, options: CaptureOptions()).point] = try readFile(source)
        }
        let full = "\(chain)/p000001.strata"
        let intact = try readFile(full)
        var damaged = intact
        damaged[damaged.count - 8] ^= 1  // in its index
        try Data(damaged).write(to: URL(fileURLWithPath: full))
        var o = MergeOptions(to: 3)
        o.from = 2
        let merged = try Merge.run(chain: chain, options: o)
        XCTAssertEqual(merged.points, [1, 3])
        XCTAssertThrowsError(try Restore.run(chain: chain, target: "\(dir)/out.img", options: RestoreOptions.overwriting)) {
            guard case .damaged(let file, _) = $0 as? ChainError else { return XCTFail("\(String(describing: $0))") }
            XCTAssertEqual(file, "p000001.strata")
        }
        try Data(intact).write(to: URL(fileURLWithPath: full))
        try assertEveryPointRestores(chain, states, "after merging above a damaged image")
    }

    /// The chain on a small filesystem that fills up: a capture fails with ENOSPC and a merge is refused before
    /// it starts; the chain stays whole and every point restores.
    func testFullFilesystem() throws {
        if let reason = LoopDevice.unavailableReason() { throw XCTSkip(reason) }
        let loop = try LoopDevice(size: 24 << 20, in: dir)
        guard shell(["mkfs.ext4", "-q", "-F", "-m", "0", loop.path]).status == 0 else { throw TestFailure("mkfs.ext4 failed (Tools/setup installs e2fsprogs)") }
        let mnt = "\(dir)/mnt"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        guard shell(["mount", loop.path, mnt]).status == 0 else { throw TestFailure("mount of \(loop.path) failed as root") }
        defer { shell(["umount", mnt]) }
        var rng = SeededGenerator(seed: 31)
        var disk = DiskModel(size: 8 << 20, rng: &rng)
        disk.overwrite(at: 0, count: 8 << 20, rng: &rng)  // incompressible
        let source = "\(dir)/s.img", chain = "\(mnt)/chain"
        var states: [UInt32: [UInt8]] = [:]
        for n in 0..<2 {
            if n > 0 { disk.overwrite(at: 1 << 20, count: 1 << 20, rng: &rng) }
            try disk.writeSparse(to: source)
            states[try Capture.run(source: source, chain: chain, options: CaptureOptions()).point] = disk.bytes
        }
        // Fill the filesystem, leaving about 1 MiB.
        shell(["dd", "if=/dev/zero", "of=\(mnt)/filler", "bs=1M", "status=none"])
        shell(["truncate", "-s", "-1M", "\(mnt)/filler"])
        let before = try FileManager.default.contentsOfDirectory(atPath: chain).sorted()
        disk.overwrite(at: 2 << 20, count: 4 << 20, rng: &rng)
        try disk.writeSparse(to: source)
        XCTAssertThrowsError(try Capture.run(source: source, chain: chain, options: CaptureOptions())) {
            guard case .io(let e) = $0 as? ChainError else { return XCTFail("\($0)") }
            XCTAssertEqual(e.errno, ENOSPC)
            XCTAssertEqual(($0 as? ChainError)?.exitCode, 74)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: chain).sorted(), before)
        XCTAssertThrowsError(try Merge.run(chain: chain, options: MergeOptions(to: 2))) {
            guard case .insufficientSpace = $0 as? ChainError else { return XCTFail("\($0)") }
            XCTAssertEqual(($0 as? ChainError)?.exitCode, 73)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: chain).sorted(), before)
        XCTAssertTrue(try Verify.run(chain: chain, options: VerifyOptions()).isWhole, "verify passes after the failed capture")
        try assertEveryPointRestores(chain, states, "after a full filesystem")
    }
}

/// A merge replaces images under a reader that opened the chain before it: the reader's images stay readable to
/// the end (open files outlive their names), and a reader that opens images after the merge finds the manifest
/// changed and opens the merged image instead.
final class MergeUnderReaderTests: XCTestCase {
    func testAMergeReplacesImagesUnderAReader() throws {
        let dir = try scratchDirectory("merge-reader")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var rng = SeededGenerator(seed: 77)
        var disk = DiskModel(size: 4 << 20, rng: &rng)
        let source = "\(dir)/source.img", chain = "\(dir)/chain"
        var states: [[UInt8]] = []
        for night in 0..<4 {
            if night > 0 { disk.night(night, rng: &rng) }
            try disk.writeSparse(to: source)
            _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
            states.append(disk.bytes)
        }
        let early = try Chain(location: chain, access: .read)
        let held = try early.openImages(forPoint: 3)
        let late = try Chain(location: chain, access: .read)  // manifest read before the merge, images opened after
        var o = MergeOptions(to: 3)
        o.from = 1
        _ = try Merge.run(chain: chain, options: o)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(chain)/p000002.strata"), "the merge removed the images it replaced")

        // The held images still read and check, frame by frame.
        let frames = FrameReader(held)
        let decompressor = try FrameDecompressor()
        for f in held.indices.flatMap({ i in (0..<held[i].index.frameCount).map { FrameRef(image: i, frame: UInt32($0)) } }) {
            let r = try frames.record(f)
            let stored = UnsafeMutableRawPointer.allocate(byteCount: Int(r.length), alignment: 64)
            let decoded = UnsafeMutableRawPointer.allocate(byteCount: Int(r.blockCount) * 4096, alignment: 64)
            defer { stored.deallocate(); decoded.deallocate() }
            try frames.read(f, into: stored)
            try frames.check(f, stored: stored, .everyBlock, decoded: decoded, decompressor: decompressor)
        }
        // Opening after the merge: the manifest is re-read, and point 3 is now one image.
        let images = try late.openImages(forPoint: 3)
        XCTAssertEqual(images.map(\.name), ["p000001-000003.strata"])
        XCTAssertThrowsError(try late.openImages(forPoint: 2)) { XCTAssertEqual($0 as? ChainError, .noSuchPoint(2, available: [3, 4])) }
        var ro = RestoreOptions.overwriting
        ro.point = 3
        _ = try Restore.run(chain: chain, target: "\(dir)/out.img", options: ro)
        XCTAssertTrue(try readFile("\(dir)/out.img") == states[2])
    }
}
