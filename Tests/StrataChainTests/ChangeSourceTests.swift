// Captures that read only what a change source says changed: every point restores exactly, the map is not
// written again (the images after it lie over it), a lying source is caught by the sample and the point is still
// exact, and what reads the map (a full scan after, verify, repair, merge) reads the layered map.
import Foundation
import StrataCodec
import StrataFormat
import StrataIO
import TestSupport
import XCTest

@testable import StrataChain

/// A change source that answers with the ranges a test gives it (honest or not).
final class GivenChanges: ChangeSource {
    let name = "given"
    var ranges: [Range<UInt64>]?
    var abandoned = 0, committed = 0

    init(_ ranges: [Range<UInt64>]?) { self.ranges = ranges }

    func changes(since manifest: ChainManifest) throws -> ChangeAnswer {
        guard let ranges else { return .cannot("the test says it cannot") }
        return .changes(ListedRanges(ranges))
    }
    func willCommit(_ manifest: inout ChainManifest) {}
    func didCommit(_ manifest: ChainManifest) { committed += 1 }
    func abandon() { abandoned += 1 }
}

/// The byte ranges (in 4 KiB blocks) where two states of a disk differ.
func differingRanges(_ a: [UInt8], _ b: [UInt8], block: Int = 4096) -> [Range<UInt64>] {
    var out: [Range<UInt64>] = []
    var at = 0
    while at < a.count {
        let end = min(at + block, a.count)
        if a[at..<end] != b[at..<end] { out.appendJoining(UInt64(at)..<UInt64(end)) }
        at = end
    }
    return out
}

final class ChangeSourceTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws { dir = try scratchDirectory("changes") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func capture(_ source: String, _ chain: String, _ changes: ChangeSource?, _ configure: (inout CaptureOptions) -> Void = { _ in }) throws -> CaptureResult {
        var o = CaptureOptions()
        o.sampleSeed = 7
        configure(&o)
        return try Capture.capture(
            try BlockSource(path: source), chain: chain, options: o, started: Sys.monotonicNanos(), progress: nil, notice: { _ in },
            reading: nil, changeSource: changes)
    }

    private func restored(_ chain: String, _ point: UInt32) throws -> [UInt8] {
        var o = RestoreOptions.overwriting
        o.point = point
        _ = try Restore.run(chain: chain, target: "\(dir)/out.img", options: o)
        return try readFile("\(dir)/out.img")
    }

    private func manifest(_ chain: String) throws -> ChainManifest {
        try ChainManifest.decode(Array(try Data(contentsOf: URL(fileURLWithPath: "\(chain)/\(ChainManifest.fileName)"))))
    }

    func testNightsFromAnHonestSourceRestoreExactlyAndWriteNoMap() throws {
        let size = 24 << 20
        let nights = Nights(chain: "\(dir)/chain", source: "\(dir)/disk.img", seed: 11, size: size, random: 4 << 20)
        try nights.capture()
        var previous = nights.disk.bytes
        for night in 0..<8 {
            nights.disk.night(night, rng: &nights.rng)
            try nights.disk.writeSparse(to: nights.source)
            let changed = differingRanges(previous, nights.disk.bytes)
            let given = GivenChanges(changed)
            let r = try capture(nights.source, nights.chain, given) { $0.checkUnchanged = 0 }
            nights.states[r.point] = nights.disk.bytes
            XCTAssertEqual(r.changeSource, "given")
            XCTAssertEqual(r.bytesRead, changed.reduce(0) { $0 + UInt64($1.count) }, "night \(night): only the changed blocks are read")
            XCTAssertEqual(r.bytesSampled, 0)
            XCTAssertEqual(given.committed, 1)
            let m = try manifest(nights.chain)
            XCTAssertEqual(m.hashMapPoint, 1, "no map written: the first point's stays")
            XCTAssertEqual(m.hashMapFile, Chain.hashMapName(point: 1))
            XCTAssertEqual(m.changeSources[r.point], "given")
            previous = nights.disk.bytes
        }
        for (point, state) in nights.states { XCTAssertEqual(try restored(nights.chain, point), state, "point \(point)") }
        XCTAssertTrue(try Verify.run(chain: nights.chain, options: VerifyOptions()).isWhole)

        // A scan after them compares with the layered map: it finds nothing changed, and writes a map again.
        let scan = try capture(nights.source, nights.chain, nil)
        XCTAssertEqual(scan.blocksChanged, 0)
        XCTAssertEqual(scan.changeSource, ChangeSources.scan)
        XCTAssertNil(try manifest(nights.chain).hashMapPoint)
        XCTAssertNil(HeadMap.problem(try Chain(location: nights.chain, access: .read).store, try manifest(nights.chain), keys: nil))
    }

    func testALyingSourceIsCaughtByTheSampleAndThePointIsStillExact() throws {
        let size = 16 << 20
        let nights = Nights(chain: "\(dir)/chain", source: "\(dir)/disk.img", seed: 3, size: size, random: 2 << 20)
        try nights.capture()
        let before = nights.disk.bytes
        nights.overwrite(at: 1 << 20, count: 8192)
        nights.overwrite(at: 9 << 20, count: 4096)  // the write the source misses
        try nights.disk.writeSparse(to: nights.source)
        let honest = differingRanges(before, nights.disk.bytes)
        let lie = honest.filter { $0.lowerBound < 8 << 20 }
        XCTAssertLessThan(lie.count, honest.count)

        // Unchecked, the lie costs the write: the point is not the disk (which is why the check exists).
        let unchecked = "\(dir)/unchecked"
        try FileManager.default.copyItem(atPath: nights.chain, toPath: unchecked)
        let u = try capture(nights.source, unchecked, GivenChanges(lie)) { $0.checkUnchanged = 0 }
        XCTAssertNil(u.missedChangeAt)
        XCTAssertNotEqual(try restored(unchecked, u.point), nights.disk.bytes)

        // Checked (every block the source calls unchanged is sampled here), it is caught and the source scanned.
        let given = GivenChanges(lie)
        let r = try capture(nights.source, nights.chain, given) { $0.checkUnchanged = 100 }
        XCTAssertEqual(r.missedChangeAt, 9 << 20)
        XCTAssertEqual(r.changeSource, ChangeSources.scanAfterMiss)
        XCTAssertEqual(r.bytesRead, try capture(nights.source, "\(dir)/scan", nil).bytesRead, "the scan's reads, not the abandoned pass's")
        XCTAssertEqual(try restored(nights.chain, r.point), nights.disk.bytes)
        let m = try manifest(nights.chain)
        XCTAssertNil(m.hashMapPoint, "the scan wrote the map")
        XCTAssertEqual(m.changeSources[r.point], ChangeSources.scanAfterMiss)
        XCTAssertEqual(try chainFileNames(nights.chain).filter { $0.hasPrefix(DurableFiles.temporaryPrefix) }, [], "the abandoned pass left nothing")
    }

    func testASampleOfTheRestIsReadInRunsAndAHonestSourcePassesIt() throws {
        let size = 64 << 20
        let nights = Nights(chain: "\(dir)/chain", source: "\(dir)/disk.img", seed: 5, size: size, random: 8 << 20)
        try nights.capture()
        let before = nights.disk.bytes
        nights.overwrite(at: 3 << 20, count: 100_000)
        try nights.disk.writeSparse(to: nights.source)
        let changed = differingRanges(before, nights.disk.bytes)
        let r = try capture(nights.source, nights.chain, GivenChanges(changed)) { $0.checkUnchanged = 25 }
        XCTAssertNil(r.missedChangeAt)
        XCTAssertEqual(r.changeSource, "given")
        XCTAssertGreaterThan(r.bytesSampled, 0)
        XCTAssertLessThan(r.bytesSampled, UInt64(size) / 2, "about a quarter of the 16 runs")
        XCTAssertEqual(r.bytesRead, r.bytesSampled + changed.reduce(0) { $0 + UInt64($1.count) })
        XCTAssertEqual(try restored(nights.chain, r.point), nights.disk.bytes)
    }

    func testWhereNoSourceCanAnswerTheCaptureScansOrWithRequireFails() throws {
        let nights = Nights(chain: "\(dir)/chain", source: "\(dir)/disk.img", seed: 9, size: 8 << 20, random: 1 << 20)
        // The first capture cannot read only changes: required, it fails and makes nothing.
        try nights.disk.writeSparse(to: nights.source)
        XCTAssertThrowsError(try capture(nights.source, nights.chain, GivenChanges([])) { $0.requireChangeSource = true }) {
            XCTAssertEqual(($0 as? ChainError)?.exitCode, 69)
            XCTAssertEqual("\($0)", "cannot read only what changed: this is the chain's first capture; with --require-change-source nothing was written: capture without it to scan the whole source")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(nights.chain)/\(ChainManifest.fileName)"))
        try nights.capture()
        let before = try chainFileNames(nights.chain)
        let cannot = GivenChanges(nil)
        XCTAssertThrowsError(try capture(nights.source, nights.chain, cannot) { $0.requireChangeSource = true }) {
            XCTAssertEqual("\($0)", "cannot read only what changed: the test says it cannot; with --require-change-source nothing was written: capture without it to scan the whole source")
        }
        XCTAssertEqual(cannot.abandoned, 1)
        XCTAssertEqual(try chainFileNames(nights.chain), before, "the chain as it was")
        // Without --require-change-source, it scans.
        nights.overwrite(at: 0, count: 5000)
        try nights.disk.writeSparse(to: nights.source)
        let r = try capture(nights.source, nights.chain, cannot)
        let scanned = try capture(nights.source, "\(dir)/scan", nil).bytesRead
        XCTAssertEqual(r.changeSource, ChangeSources.scan)
        XCTAssertEqual(r.bytesRead, scanned)
        // --rescan scans whatever the source could say, and records it.
        let rescan = try capture(nights.source, nights.chain, GivenChanges([])) { $0.rescan = true }
        XCTAssertEqual(rescan.changeSource, ChangeSources.rescan)
        XCTAssertEqual(rescan.bytesRead, scanned)
        XCTAssertEqual(try manifest(nights.chain).changeSources[rescan.point], ChangeSources.rescan)
    }

    /// An encrypted chain: the map's hashes are keyed, and the sample compares keyed hashes.
    func testAnEncryptedChainReadsOnlyWhatChangedAndCatchesALie() throws {
        let key = UserSecret.keyFile(KeyWrapping.random(32))
        let nights = Nights(chain: "\(dir)/chain", source: "\(dir)/disk.img", seed: 17, size: 8 << 20, random: 2 << 20)
        try nights.disk.writeSparse(to: nights.source)
        let keyed: (inout CaptureOptions) -> Void = { $0.encrypt = true; $0.secret = key }
        _ = try capture(nights.source, nights.chain, nil, keyed)
        let before = nights.disk.bytes
        nights.overwrite(at: 1 << 20, count: 9000)
        nights.overwrite(at: 6 << 20, count: 100)
        try nights.disk.writeSparse(to: nights.source)
        let changed = differingRanges(before, nights.disk.bytes)
        let honest = try capture(nights.source, nights.chain, GivenChanges(changed)) { keyed(&$0); $0.checkUnchanged = 100 }
        XCTAssertNil(honest.missedChangeAt, "a keyed map agrees with keyed hashes of what did not change")
        XCTAssertEqual(honest.changeSource, "given")
        nights.overwrite(at: 3 << 20, count: 100)
        try nights.disk.writeSparse(to: nights.source)
        let lie = try capture(nights.source, nights.chain, GivenChanges([])) { keyed(&$0); $0.checkUnchanged = 100 }
        XCTAssertEqual(lie.missedChangeAt, 3 << 20)
        var o = RestoreOptions.overwriting
        o.secret = key
        _ = try Restore.run(chain: nights.chain, target: "\(dir)/out.img", options: o)
        XCTAssertEqual(try readFile("\(dir)/out.img"), nights.disk.bytes)
    }

    func testRescanAfterScansOnceTheLastScanIsThatOld() throws {
        let nights = Nights(chain: "\(dir)/chain", source: "\(dir)/disk.img", seed: 13, size: 4 << 20, random: 1 << 20)
        try nights.disk.writeSparse(to: nights.source)
        let day: UInt64 = 86400, t0: UInt64 = 1_800_000_000
        func at(_ days: UInt64) -> (inout CaptureOptions) -> Void { { $0.createdAt = t0 + days * day; $0.rescanAfter = 7 * day } }
        XCTAssertEqual(try capture(nights.source, nights.chain, nil, at(0)).changeSource, ChangeSources.scan)
        XCTAssertEqual(try capture(nights.source, nights.chain, GivenChanges([]), at(3)).changeSource, "given")
        XCTAssertEqual(try capture(nights.source, nights.chain, GivenChanges([]), at(6)).changeSource, "given")
        XCTAssertEqual(try capture(nights.source, nights.chain, GivenChanges([]), at(7)).changeSource, ChangeSources.rescan, "7 days after the last scan")
        XCTAssertEqual(try capture(nights.source, nights.chain, GivenChanges([]), at(8)).changeSource, "given", "the rescan counts as a scan")
    }

    func testADamagedMapUnderTheImagesIsRebuiltAndRepairWritesTheNewestPointsMap() throws {
        let nights = Nights(chain: "\(dir)/chain", source: "\(dir)/disk.img", seed: 21, size: 12 << 20, random: 2 << 20)
        try nights.capture()
        for night in 0..<3 {
            let before = nights.disk.bytes
            nights.disk.night(night, rng: &nights.rng)
            try nights.disk.writeSparse(to: nights.source)
            let r = try capture(nights.source, nights.chain, GivenChanges(differingRanges(before, nights.disk.bytes)))
            nights.states[r.point] = nights.disk.bytes
        }
        XCTAssertEqual(try manifest(nights.chain).hashMapPoint, 1)
        // Merging the map's own point away leaves the map standing for it.
        _ = try Merge.merge(try Chain(location: nights.chain, access: .write), options: { var o = MergeOptions(to: 3); o.from = 1; return o }())
        XCTAssertEqual(try restored(nights.chain, 4), nights.states[4]!)
        // Damage the map: a capture with a change source rebuilds the newest point's hashes from the images.
        let map = "\(nights.chain)/\(Chain.hashMapName(point: 1))"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: map))
        bytes[HashMapHeader.size + 40] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: map))
        let chain = try Chain(location: nights.chain, access: .read)
        XCTAssertNotNil(HeadMap.problem(chain.store, try manifest(nights.chain), keys: nil))
        let before = nights.disk.bytes
        nights.overwrite(at: 5 << 20, count: 30_000)
        try nights.disk.writeSparse(to: nights.source)
        let r = try capture(nights.source, nights.chain, GivenChanges(differingRanges(before, nights.disk.bytes)))
        XCTAssertEqual(try restored(nights.chain, r.point), nights.disk.bytes)
        // Repair writes the newest point's map and names it.
        let report = try Repair.run(chain: nights.chain, options: RepairOptions())
        XCTAssertFalse(report.actions.isEmpty)
        let m = try manifest(nights.chain)
        XCTAssertNil(m.hashMapPoint)
        XCTAssertEqual(m.hashMapFile, Chain.hashMapName(point: r.point))
        XCTAssertNil(HeadMap.problem(chain.store, m, keys: nil))
        XCTAssertFalse(FileManager.default.fileExists(atPath: map), "the old map went as a leftover")
    }

    func testThePlanWidensJoinsSplitsAndSamples() throws {
        func pieces(_ changed: [Range<UInt64>], size: UInt64 = 32 << 20, unit: Int = 4096, heal: [Range<UInt64>] = [], percent: Double = 0) throws -> [ReadPiece] {
            let plan = ChangePlan(size: size, requestSize: 1 << 20, unit: unit, changed: ListedRanges(changed), heal: heal, samplePercent: percent, seed: 1)
            var out: [ReadPiece] = []
            while let p = try plan.next() { out.append(p) }
            return out
        }
        XCTAssertEqual(try pieces([100..<200]), [ReadPiece(offset: 0, length: 4096)])
        XCTAssertEqual(try pieces([100..<200, 4000..<4100, 9000..<9001]), [ReadPiece(offset: 0, length: 12288)], "widened, they touch: one piece")
        XCTAssertEqual(try pieces([100..<200, 9000..<9001]), [ReadPiece(offset: 0, length: 4096), ReadPiece(offset: 8192, length: 4096)])
        XCTAssertEqual(
            try pieces([(1 << 20) - 4096..<(3 << 20) + 1]),
            [ReadPiece(offset: (1 << 20) - 4096, length: 4096), ReadPiece(offset: 1 << 20, length: 1 << 20), ReadPiece(offset: 2 << 20, length: 1 << 20),
             ReadPiece(offset: 3 << 20, length: 4096)])
        XCTAssertEqual(try pieces([0..<10], size: 6000), [ReadPiece(offset: 0, length: 4096)])
        XCTAssertEqual(try pieces([4096..<4097], size: 6000), [ReadPiece(offset: 4096, length: 1904)], "the last piece ends at the source's end")
        XCTAssertEqual(try pieces([8192..<8193], heal: [0..<4096, 8192..<12288]), [ReadPiece(offset: 0, length: 4096), ReadPiece(offset: 8192, length: 4096)])
        XCTAssertThrowsError(try pieces([0..<(64 << 20)]))
        // Every run sampled: the whole source is read, the changed part as changed.
        let all = try pieces([5000..<6000], size: 8 << 20, percent: 100)
        XCTAssertEqual(all.reduce(0) { $0 + $1.length }, 8 << 20)
        XCTAssertEqual(all.filter { !$0.sample }, [ReadPiece(offset: 4096, length: 4096)])
        XCTAssertTrue(all.allSatisfy { $0.length <= 1 << 20 && $0.offset / (1 << 20) == ($0.offset + UInt64($0.length) - 1) / (1 << 20) })
        // A share: whole 4 MiB runs, about that share of them.
        let some = try pieces([], size: 4 << 30, percent: 10)
        let runs = Set(some.map { $0.offset / (4 << 20) })
        XCTAssertGreaterThan(runs.count, 60)
        XCTAssertLessThan(runs.count, 150)
        XCTAssertEqual(some.reduce(0) { $0 + $1.length }, runs.count << 22)
        // A range to heal before a changed one, apart from it: neither is lost (the changed one was, once).
        XCTAssertEqual(
            try pieces([16384..<20480, 40960..<45056], heal: [4096..<8192, 24576..<28672]),
            [ReadPiece(offset: 4096, length: 4096), ReadPiece(offset: 16384, length: 4096), ReadPiece(offset: 24576, length: 4096),
             ReadPiece(offset: 40960, length: 4096)])
    }

    /// In a chain of used blocks: changed ranges read only where used now, blocks turned used read whatever the
    /// source says, blocks turned free announced free without a read, samples only of blocks used then and now.
    func testThePlanOfAChainOfUsedBlocks() throws {
        let k: UInt64 = 4096
        func pieces(_ changed: [Range<UInt64>], used: [Range<UInt64>], freeBefore: [Range<UInt64>], heal: [Range<UInt64>] = [], percent: Double = 0) throws -> [ReadPiece] {
            let plan = ChangePlan(
                size: 64 * k, requestSize: 1 << 20, unit: 4096, changed: ListedRanges(changed), heal: heal, samplePercent: percent, seed: 1,
                used: used, freeBefore: freeBefore)
            var out: [ReadPiece] = []
            while let p = try plan.next() { out.append(p) }
            return out
        }
        // Used now: 0..<16, 32..<48 (blocks). Free then: 8..<24, 40..<64. Changed: 4..<6, 20..<36.
        let used = [0..<16 * k, 32 * k..<48 * k], freeBefore = [8 * k..<24 * k, 40 * k..<64 * k]
        XCTAssertEqual(
            try pieces([4 * k..<6 * k, 20 * k..<36 * k], used: used, freeBefore: freeBefore),
            [
                ReadPiece(offset: 4 * k, length: Int(2 * k)),  // changed, used
                ReadPiece(offset: 8 * k, length: Int(8 * k)),  // turned used
                // 16..<24: free then and now (changed at 20..<24, and still nothing)
                ReadPiece(offset: 24 * k, length: Int(8 * k), hole: true, free: true),  // was used, free now
                ReadPiece(offset: 32 * k, length: Int(4 * k)),  // changed, used
                ReadPiece(offset: 40 * k, length: Int(8 * k)),  // turned used
            ])
        // Every run sampled: only 0..<8 and 36..<40 are kept, so only they are samples.
        let sampled = try pieces([], used: used, freeBefore: freeBefore, percent: 100)
        XCTAssertEqual(sampled.filter(\.sample), [ReadPiece(offset: 0, length: Int(8 * k), sample: true), ReadPiece(offset: 32 * k, length: Int(8 * k), sample: true)])
        // A damaged block free now becomes free; one used now is read.
        XCTAssertEqual(
            try pieces([], used: [0..<4 * k], freeBefore: [4 * k..<64 * k], heal: [0..<k, 10 * k..<11 * k]),
            [ReadPiece(offset: 0, length: Int(k)), ReadPiece(offset: 10 * k, length: Int(k), hole: true, free: true)])
    }
    /// A used-blocks capture's plan: the used runs of a chunk with free blocks between them are one piece of up to
    /// `ReadPiece.maxParts` reads; a hole of a sparse file, the chunk's end or the reads' limit ends a piece.
    func testThePlanOfUsedBlocksGathersTheRunsOfAChunk() throws {
        let k: UInt64 = 4096
        func pieces(_ used: [Range<UInt64>], data: [Range<UInt64>]? = nil, size: UInt64 = 64 * k) throws -> [ReadPiece] {
            let plan = UsedPlan(size: size, requestSize: Int(16 * k), unit: 4096, used: used, data: data)
            var out: [ReadPiece] = []
            while let p = try plan.next() { out.append(p) }
            XCTAssertEqual(out.reduce(0) { $0 + UInt64($1.length) }, size, "the pieces cover the source")
            return out
        }
        // Chunks of 16 blocks. Used: 1..<3, 5..<6, 9..<20 (across the grid), 40..<41, 47..<49.
        XCTAssertEqual(
            try pieces([k..<3 * k, 5 * k..<6 * k, 9 * k..<20 * k, 40 * k..<41 * k, 47 * k..<49 * k]),
            [
                ReadPiece(offset: 0, length: Int(k), hole: true, free: true),
                ReadPiece(offset: k, length: Int(15 * k), unread: [3 * k..<5 * k, 6 * k..<9 * k]),
                ReadPiece(offset: 16 * k, length: Int(4 * k)),
                ReadPiece(offset: 20 * k, length: Int(12 * k), hole: true, free: true),
                ReadPiece(offset: 32 * k, length: Int(8 * k), hole: true, free: true),
                ReadPiece(offset: 40 * k, length: Int(8 * k), unread: [41 * k..<47 * k]),
                ReadPiece(offset: 48 * k, length: Int(k)),
                ReadPiece(offset: 49 * k, length: Int(15 * k), hole: true, free: true),
            ])
        XCTAssertEqual(ReadPiece(offset: k, length: Int(15 * k), unread: [3 * k..<5 * k, 6 * k..<9 * k]).part(1), 5 * k..<6 * k)
        // A hole of the sparse file ends the piece: used 0..<2 and 4..<8, the file's data 0..<6.
        XCTAssertEqual(
            try pieces([0..<2 * k, 4 * k..<8 * k], data: [0..<6 * k], size: 16 * k),
            [
                ReadPiece(offset: 0, length: Int(6 * k), unread: [2 * k..<4 * k]),
                ReadPiece(offset: 6 * k, length: Int(2 * k), hole: true),
                ReadPiece(offset: 8 * k, length: Int(8 * k), hole: true, free: true),
            ])
        // ... and so does a used run that is a hole: used 0..<1 and 3..<4, data 0..<2.
        XCTAssertEqual(
            try pieces([0..<k, 3 * k..<4 * k], data: [0..<2 * k], size: 16 * k),
            [
                ReadPiece(offset: 0, length: Int(k)),
                ReadPiece(offset: k, length: Int(2 * k), hole: true, free: true),
                ReadPiece(offset: 3 * k, length: Int(k), hole: true),
                ReadPiece(offset: 4 * k, length: Int(12 * k), hole: true, free: true),
            ])
        // Every other block used: a chunk of 16 blocks is one piece of its 8 runs; one of 256 blocks, pieces of
        // maxParts runs.
        func everyOther(_ n: Int) -> [Range<UInt64>] { (0..<n).map { (i: Int) -> Range<UInt64> in UInt64(2 * i) * k..<UInt64(2 * i + 1) * k } }
        XCTAssertEqual(try pieces(everyOther(32)).filter { !$0.hole }.map { $0.partCount }, [8, 8, 8, 8])
        let many = UsedPlan(size: 256 * k, requestSize: Int(256 * k), unit: 4096, used: everyOther(128))
        var counts: [Int] = []
        while let p = try many.next() { if !p.hole { counts.append(p.partCount) } }
        XCTAssertEqual(counts, Array(repeating: ReadPiece.maxParts, count: 128 / ReadPiece.maxParts))
    }
}

func chainFileNames(_ chain: String) throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: chain).sorted() }
