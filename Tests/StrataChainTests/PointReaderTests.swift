// Reading a point in place (the core of `mount` and `serve`): every byte of every point, read at random offsets
// and sizes and sequentially, equals that night's disk; zero ranges are the disk's zero blocks; a damaged frame
// fails the reads that need it and no others; a point stays readable while a merge removes its images.
import Foundation
import StrataCodec
import StrataFormat
import XCTest

@testable import StrataChain

final class PointReaderTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try scratchDirectory("point-reader") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A chain of `nights` captures of a model disk and one merge; the states of its points.
    func makeChain(
        seed: UInt64, size: Int, nights: Int, seekable: Bool? = nil, tuning: (_ night: Int) -> Tuning = { _ in Tuning() }
    ) throws -> (chain: String, states: [UInt32: [UInt8]]) {
        var rng = SeededGenerator(seed: seed)
        var disk = DiskModel(size: size, rng: &rng)
        let source = "\(dir)/source-\(seed).img", chain = "\(dir)/chain-\(seed)"
        var states: [UInt32: [UInt8]] = [:]
        for n in 0..<nights {
            if n > 0 { disk.night(n, rng: &rng) }
            try disk.writeSparse(to: source)
            var o = CaptureOptions()
            o.tuning = tuning(n)
            if n == 0 { o.seekable = seekable }  // later captures follow the chain
            states[try Capture.run(source: source, chain: chain, options: o).point] = disk.bytes
        }
        var o = MergeOptions(to: 3)
        o.from = 2
        o.tuning = tuning(nights)
        _ = try Merge.run(chain: chain, options: o)
        states[2] = nil
        return (chain, states)
    }

    func read(_ r: PointReader, _ offset: UInt64, _ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xAA, count: count)
        let n = try out.withUnsafeMutableBytes { try r.read(into: $0.baseAddress!, count: count, at: offset) }
        return Array(out[0..<n])
    }

    /// The same bytes as `read`, through `withBytes` (where they lie: the cache's entries and zeros, or the scratch
    /// buffer).
    func readGathered(_ r: PointReader, _ offset: UInt64, _ count: Int) throws -> [UInt8] {
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 64)
        defer { scratch.deallocate() }
        return try r.withBytes(count: count, at: offset, scratch: scratch) { runs in runs.flatMap { Array($0) } }
    }

    func checkEveryPoint(_ chain: String, _ states: [UInt32: [UInt8]], seed: UInt64, cacheBytes: Int) throws {
        var rng = SeededGenerator(seed: seed)
        for (point, state) in states.sorted(by: { $0.key < $1.key }) {
            let r = try ServedChain(chain: chain, cacheBytes: cacheBytes).reader(point: point)
            XCTAssertEqual(r.size, UInt64(state.count))
            // Sequentially, in 1 MiB reads.
            var whole: [UInt8] = []
            var at: UInt64 = 0
            while at < r.size {
                whole += try read(r, at, 1 << 20)
                at += 1 << 20
            }
            XCTAssertTrue(whole == state, "seed \(seed) point \(point): sequential read differs")
            // At random offsets and sizes, some running past the end.
            for i in 0..<150 {
                let offset = Int.random(in: 0..<state.count, using: &rng)
                let count = Int.random(in: 1...300_000, using: &rng)
                let got = try i % 2 == 0 ? read(r, UInt64(offset), count) : readGathered(r, UInt64(offset), count)
                XCTAssertEqual(got.count, min(count, state.count - offset))
                if got != Array(state[offset..<(offset + got.count)]) {
                    XCTFail("seed \(seed) point \(point): \(count) bytes at \(offset) differ")
                    return
                }
            }
            XCTAssertEqual(try read(r, r.size, 10), [])
            XCTAssertEqual(try readGathered(r, r.size, 10), [])
            XCTAssertThrowsError(try read(r, r.size + 1, 10))
            XCTAssertThrowsError(try readGathered(r, r.size + 1, 10))
            // Zero ranges: exactly the disk's all-zero blocks (the last, partial block by its bytes).
            var expected: [Range<UInt64>] = []
            for b in stride(from: 0, to: state.count, by: 4096) where state[b..<min(b + 4096, state.count)].allSatisfy({ $0 == 0 }) {
                expected.appendJoining(UInt64(b)..<UInt64(min(b + 4096, state.count)))
            }
            XCTAssertEqual(try r.zeroRanges(in: 0..<r.size), expected, "seed \(seed) point \(point)")
            // And within any range: the same, clipped.
            for _ in 0..<40 {
                let lo = UInt64.random(in: 0..<r.size, using: &rng), hi = min(r.size, lo + UInt64.random(in: 1...400_000, using: &rng))
                let clipped = expected.filter { $0.upperBound > lo && $0.lowerBound < hi }.map { max($0.lowerBound, lo)..<min($0.upperBound, hi) }
                XCTAssertEqual(try r.zeroRanges(in: lo..<hi), clipped, "seed \(seed) point \(point) range \(lo)..<\(hi)")
            }
        }
    }

    func testEveryByteOfEveryPoint() throws {
        let (chain, states) = try makeChain(seed: 41, size: 5 << 20 + 1536, nights: 5)
        try checkEveryPoint(chain, states, seed: 41, cacheBytes: 64 << 20)
        // A cache of one frame: every read goes back to the store, and still reads right.
        try checkEveryPoint(chain, states, seed: 42, cacheBytes: 1)
    }

    /// A seekable chain (frames in 32 KiB sub-frames, decoded only in part for a read of a few blocks, completed as
    /// reads ask for more, whole for read-ahead): every byte reads as its night, with a cache of one frame too.
    func testEveryByteOfEveryPointOfASeekableChain() throws {
        let (chain, states) = try makeChain(seed: 46, size: 5 << 20 + 1536, nights: 5, seekable: true)
        let c = try Chain(location: chain, access: .read)
        for image in try c.openImages(forPoint: states.keys.max()!) {
            XCTAssertTrue(image.header.isSeekable, image.name)
            for f in 0..<image.index.frameCount { XCTAssertNotEqual(try image.index.frame(UInt32(f)).codec, .zstd, "\(image.name) frame \(f)") }
        }
        try checkEveryPoint(chain, states, seed: 46, cacheBytes: 64 << 20)
        try checkEveryPoint(chain, states, seed: 47, cacheBytes: 1)
        try checkEveryPoint(chain, states, seed: 48, cacheBytes: 3 << 20)
    }

    /// A seekable chain begun with 64 KiB sub-frames (what Strata wrote before 2026-12-02) and carried on with 32 KiB
    /// ones: each image's frames say their own size, and every byte of every point (one merged over images of both
    /// sizes) reads as its night (entries of both sizes in one cache, read in part and completed).
    func testASeekableChainOfTwoSubframeSizes() throws {
        let (chain, states) = try makeChain(seed: 50, size: 5 << 20 + 1536, nights: 5, seekable: true) { n in
            Tuning(subframeBytes: n < 2 ? 64 << 10 : 32 << 10)
        }
        func sizes(_ image: ImageFile) throws -> Set<Int> {
            var out = Set<Int>()
            let frames = FrameReader([image])
            let raw = UnsafeMutableRawPointer.allocate(byteCount: max(frames.largest.stored, 1), alignment: 64)
            defer { raw.deallocate() }
            for f in 0..<UInt32(image.index.frameCount) {
                let r = try image.index.frame(f)
                guard r.codec == .zstdSubframes else { continue }
                try frames.read(FrameRef(image: 0, frame: f), into: raw)
                let table = try SubframeTable(payload: raw + r.hashesLength, payloadLength: r.payloadLength, blockCount: Int(r.blockCount))
                out.insert(table.blocksPerSubframe)
            }
            return out
        }
        let images = try Chain(location: chain, access: .read).openImages(forPoint: states.keys.max()!)
        XCTAssertEqual(try sizes(images.first!), [16], images.first!.name)  // night 0's full image, 64 KiB
        XCTAssertEqual(try sizes(images.last!), [8], images.last!.name)  // the newest night's, 32 KiB
        try checkEveryPoint(chain, states, seed: 50, cacheBytes: 64 << 20)
        try checkEveryPoint(chain, states, seed: 51, cacheBytes: 3 << 20)
    }

    /// A flipped byte in one sub-frame: reads of its blocks fail, naming the image and frame; reads of the same
    /// frame's other blocks still read (before and after), and restore and verify find the frame damaged.
    func testADamagedSubframeFailsOnlyTheReadsThatNeedIt() throws {
        let source = "\(dir)/s.img", chain = "\(dir)/seekable"
        var rng = SeededGenerator(seed: 49)
        var disk = DiskModel(size: 4 << 20, rng: &rng)
        disk.zero(at: 0, count: 4 << 20)
        for i in 0..<(1 << 20) { disk.bytes[i] = 0x61 + UInt8(rng.next() % 16) }  // compressible (4 bits a byte), no zero block
        try disk.writeSparse(to: source)
        var o = CaptureOptions()
        o.seekable = true
        _ = try Capture.run(source: source, chain: chain, options: o)
        let image = try Chain(location: chain, access: .read).openImages(forPoint: 1)[0]
        // Frame 0 holds source blocks 0..<256 (the first MiB), sub-frame k blocks 8k..<8(k+1) (32 KiB each).
        let frame = try image.index.frame(0)
        XCTAssertEqual(frame.codec, .zstdSubframes)
        var bytes = try readFile("\(chain)/\(image.name)")
        let payload = Int(frame.offset) + frame.hashesLength
        let table = try bytes.withUnsafeBytes {
            try SubframeTable(payload: $0.baseAddress! + payload, payloadLength: frame.payloadLength, blockCount: Int(frame.blockCount))
        }
        let per = 8
        XCTAssertEqual(table.count, 256 / per)
        XCTAssertEqual(table.blocksPerSubframe, per)
        let r0 = try ServedChain(chain: chain).reader(point: 1)
        XCTAssertEqual(try read(r0, 0, 4096), Array(disk.bytes[0..<4096]))  // sub-frame 0 decoded before the damage
        bytes[payload + table.offset(5) + table.storedLength(5) / 2] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: "\(chain)/\(image.name)"))
        for r in [r0, try ServedChain(chain: chain).reader(point: 1)] {
            // (The blocks of sub-frame 5 that decode right despite the flip may be read alone; all of them cannot.)
            XCTAssertThrowsError(try read(r, UInt64(5 * per * 4096), per * 4096)) {
                guard case .corruptData(let file, let detail) = $0 as? ChainError else { return XCTFail("\($0)") }
                XCTAssertEqual(file, image.name)
                XCTAssertTrue(detail.hasPrefix("frame 0 ") || detail.contains("(in frame 0)"), detail)
            }
            for k in [0, 4, 6, 256 / per - 1] {
                let at = k * per * 4096 + 8192
                XCTAssertEqual(try read(r, UInt64(at), 4096), Array(disk.bytes[at..<(at + 4096)]), "sub-frame \(k)")
            }
        }
        XCTAssertFalse(try Verify.run(chain: chain, options: VerifyOptions()).isWhole)
        XCTAssertThrowsError(try Restore.run(chain: chain, target: "\(dir)/out.img", options: .overwriting)) {
            guard case .corruptData(let file, _) = $0 as? ChainError else { return XCTFail("\($0)") }
            XCTAssertEqual(file, image.name)
        }
    }

    /// Across many index chunks (16 records each) and many windows.
    func testSmallIndexChunks() throws {
        let (chain, states) = try makeChain(seed: 43, size: 3 << 20, nights: 4) { _ in
            Tuning(framesPerIndexChunk: 16, extentsPerIndexChunk: 16)
        }
        try checkEveryPoint(chain, states, seed: 43, cacheBytes: 8 << 20)
    }

    func testADamagedFrameFailsOnlyTheReadsThatNeedIt() throws {
        let (chain, states) = try makeChain(seed: 44, size: 4 << 20, nights: 4)
        let newest = states.keys.max()!
        let c = try Chain(location: chain, access: .read)
        let images = try c.openImages(forPoint: newest)
        // A frame of the newest image that has frames, and a source block the point takes from it.
        let imageIndex = images.lastIndex { $0.index.frameCount > 0 }!
        let image = images[imageIndex]
        var extents: [ExtentRecord] = []
        try image.index.forEachExtent { if $0.kind == .data && $0.frame == 0 { extents.append($0) } }
        let frame = try image.index.frame(0)
        let damagedBlock = extents[0].firstBlock
        var bytes = try readFile("\(chain)/\(image.name)")
        bytes[Int(frame.offset) + frame.hashesLength + 10] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: "\(chain)/\(image.name)"))

        let r = try ServedChain(chain: chain).reader(point: newest)
        XCTAssertThrowsError(try read(r, damagedBlock * 4096 + 100, 10)) {
            guard case .corruptData(let file, let detail) = $0 as? ChainError else { return XCTFail("\($0)") }
            XCTAssertEqual(file, image.name)
            // The frame's checksum (read whole), or the block's hash (a raw frame read in part).
            XCTAssertTrue(detail.hasPrefix("frame 0 ") || detail.contains("(in frame 0)"), detail)
        }
        // A range the damaged frame does not hold still reads.
        var resolved: [ResolvedExtent] = []
        try PointWalk(images).forEach { resolved.append($0) }
        let elsewhere = resolved.first { $0.kind == .data && $0.frameRef != FrameRef(image: imageIndex, frame: 0) }!
        let state = states[newest]!
        let at = Int(elsewhere.firstBlock) * 4096
        XCTAssertEqual(try read(r, UInt64(at), 4096), Array(state[at..<(at + 4096)]))
    }

    /// A raw frame (incompressible blocks) read at random is read in part, like a frame in sub-frames: a flipped
    /// byte in one of its blocks fails the reads of that block, naming the image and frame, and reads of its other
    /// blocks still read (read whole, the frame would fail its checksum for all of them); a read of the whole point
    /// fails on the damaged block, and verify and restore, which read frames whole, find the frame damaged.
    func testADamagedRawFrameFailsOnlyTheReadsOfTheDamagedBlock() throws {
        let source = "\(dir)/s.img", chain = "\(dir)/raw"
        var rng = SeededGenerator(seed: 50)
        var disk = DiskModel(size: 2 << 20, rng: &rng)
        for i in disk.bytes.indices { disk.bytes[i] = UInt8(truncatingIfNeeded: rng.next()) }
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        let image = try Chain(location: chain, access: .read).openImages(forPoint: 1)[0]
        // Frame 0 holds source blocks 0..<256, stored as they are.
        let frame = try image.index.frame(0)
        XCTAssertEqual(frame.codec, .raw)
        XCTAssertEqual(frame.blockCount, 256)
        var bytes = try readFile("\(chain)/\(image.name)")
        bytes[Int(frame.offset) + frame.hashesLength + 5 * 4096 + 1234] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: "\(chain)/\(image.name)"))
        // No read-ahead: every read is a random read.
        let r = try ServedChain(chain: chain, readAheadBytes: 0).reader(point: 1)
        for b in [5, 200, 0, 100, 5] {
            let at = b * 4096
            if b == 5 {
                XCTAssertThrowsError(try read(r, UInt64(at), 4096)) {
                    guard case .corruptData(let file, let detail) = $0 as? ChainError else { return XCTFail("\($0)") }
                    XCTAssertEqual(file, image.name)
                    XCTAssertTrue(detail.contains("(in frame 0)"), detail)
                }
            } else {
                XCTAssertEqual(try read(r, UInt64(at), 4096), Array(disk.bytes[at..<(at + 4096)]), "block \(b)")
            }
        }
        // Blocks 4 and 6, in the same run of 4 blocks as 5: read in one piece with it, and still good.
        XCTAssertEqual(try read(r, 4 * 4096, 4096), Array(disk.bytes[(4 * 4096)..<(5 * 4096)]))
        XCTAssertEqual(try read(r, 6 * 4096, 4096), Array(disk.bytes[(6 * 4096)..<(7 * 4096)]))
        XCTAssertThrowsError(try read(try ServedChain(chain: chain).reader(point: 1), 0, 2 << 20)) {
            guard case .corruptData(let file, _) = $0 as? ChainError else { return XCTFail("\($0)") }
            XCTAssertEqual(file, image.name)
        }
        XCTAssertFalse(try Verify.run(chain: chain, options: VerifyOptions()).isWhole)
        XCTAssertThrowsError(try Restore.run(chain: chain, target: "\(dir)/out.img", options: .overwriting))
    }

    func testAPointStaysReadableWhileAMergeRemovesItsImages() throws {
        let (chain, states) = try makeChain(seed: 45, size: 3 << 20, nights: 5)
        let r = try ServedChain(chain: chain, cacheBytes: 1).reader(point: 5)
        var o = MergeOptions(to: 5)
        o.from = 3
        _ = try Merge.run(chain: chain, options: o)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(chain)/p000004.strata"), "the merge removed the images the reader holds")
        let state = states[5]!
        XCTAssertTrue(try read(r, 0, state.count) == state)
    }

    /// Several threads reading every point of one served chain at once (one frame cache, read-ahead on), some
    /// sequentially and some at random, with a cache small enough that frames are evicted under them.
    func testParallelReadersOfEveryPointGetTheirBytes() throws {
        let (chain, states) = try makeChain(seed: 46, size: 4 << 20, nights: 5)
        let served = try ServedChain(chain: chain, cacheBytes: 1, readAheadBytes: 1 << 20, readAheadThreads: 2)
        let readers = try served.openEveryPoint()
        XCTAssertEqual(readers.map(\.point), states.keys.sorted())
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: 6) { t in
            var rng = SeededGenerator(seed: 460 + UInt64(t))
            for k in 0..<60 {
                let r = readers[(t + k) % readers.count]
                let state = states[r.point]!
                let sequential = t % 2 == 0
                let offset = sequential ? (k * 300_000) % state.count : Int.random(in: 0..<state.count, using: &rng)
                let count = sequential ? 300_000 : Int.random(in: 1...200_000, using: &rng)
                do {
                    // Most threads take their bytes where they lie, pinning entries of a cache this small: they
                    // run out of entries, and must neither wait for one holding others nor read wrong.
                    let got = try t % 3 == 0 ? self.read(r, UInt64(offset), count) : self.readGathered(r, UInt64(offset), count)
                    if got != Array(state[offset..<(offset + got.count)]) { failures.add("thread \(t): point \(r.point), \(count) at \(offset)") }
                } catch { failures.add("thread \(t): \(error)") }
            }
        }
        XCTAssertEqual(failures.all, [])
    }

    /// `withBytes` hands out the cache's own bytes where it can (nothing copied), and copies into the scratch buffer
    /// only past `maxPinned` entries: a run of blocks from more frames than that (one changed block a night, the
    /// blocks side by side) comes back as one run in the scratch buffer, with the same bytes.
    func testGatheredReadsPinAtMostTheirShareOfTheCache() throws {
        var rng = SeededGenerator(seed: 49)
        var disk = [UInt8](repeating: 0, count: 1 << 20)
        for i in disk.indices { disk[i] = UInt8.random(in: 0...255, using: &rng) }
        let source = "\(dir)/source.img", chain = "\(dir)/chain"
        let nights = PointReader.maxPinned + 4
        for n in 0..<nights {
            // Night n changes block n (a frame of its own in night n's image).
            if n > 0 { for i in (n * 4096)..<((n + 1) * 4096) { disk[i] = UInt8.random(in: 0...255, using: &rng) } }
            FileManager.default.createFile(atPath: source, contents: Data(disk))
            _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
        }
        let r = try ServedChain(chain: chain, cacheBytes: 64 << 20).reader(point: nil)
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { scratch.deallocate() }
        func inScratch(_ run: UnsafeRawBufferPointer) -> Bool { run.baseAddress! >= UnsafeRawPointer(scratch) && run.baseAddress! < UnsafeRawPointer(scratch + (1 << 20)) }
        // Blocks 1..<nights, each from a different image.
        let many = try r.withBytes(count: (nights - 1) * 4096, at: 4096, scratch: scratch) { runs in (runs.map(inScratch), runs.flatMap { Array($0) }) }
        XCTAssertEqual(many.0, [true], "more frames than a read may pin: one run, copied")
        XCTAssertTrue(many.1 == Array(disk[4096..<(nights * 4096)]))
        // Blocks 1..<maxPinned: a frame each, all pinned, none copied.
        let few = try r.withBytes(count: (PointReader.maxPinned - 1) * 4096, at: 4096, scratch: scratch) { runs in (runs.map(inScratch), runs.flatMap { Array($0) }) }
        XCTAssertEqual(few.0, Array(repeating: false, count: PointReader.maxPinned - 1), "a run a frame, from the cache")
        XCTAssertTrue(few.1 == Array(disk[4096..<(PointReader.maxPinned * 4096)]))
    }
}

/// Failures collected from several threads.
final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [String] = []
    func add(_ s: String) { lock.withLock { list.append(s) } }
    var all: [String] { lock.withLock { list } }
}
