// Chains that heal: a missing, truncated or damaged head hash map is rebuilt by the next capture, which then
// stores what a normal incremental would; a capture whose newest point's images cannot be read stores every
// block (its point needs no older image); blocks the newest point takes from a frame the last verify found
// damaged are stored anew by the next capture, whose point is whole while verify still names the old damage.
import Foundation
import StrataCodec
import StrataFormat
import XCTest

@testable import StrataChain

final class HealTests: XCTestCase {
    var dir = ""
    var rng = SeededGenerator(seed: 91)

    override func setUpWithError() throws { dir = try scratchDirectory("heal") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A chain of `nights` captures of a changing disk; returns the disk (at its last night) and each point's bytes.
    private func chain(_ chain: String, source: String, nights: Int) throws -> (DiskModel, [[UInt8]]) {
        var disk = DiskModel(size: 6 << 20, rng: &rng)
        var states: [[UInt8]] = []
        for night in 0..<nights {
            if night > 0 { disk.night(night, rng: &rng) }
            try disk.writeSparse(to: source)
            _ = try Capture.run(source: source, chain: chain, options: CaptureOptions())
            states.append(disk.bytes)
        }
        return (disk, states)
    }

    private func assertEveryPointRestores(_ chain: String, _ states: [UInt32: [UInt8]], _ what: String) throws {
        for (point, state) in states {
            var o = RestoreOptions.overwriting
            o.point = point
            _ = try Restore.run(chain: chain, target: "\(dir)/out.img", options: o)
            XCTAssertTrue(try readFile("\(dir)/out.img") == state, "\(what): point \(point)")
        }
    }

    func testAMissingTruncatedOrDamagedMapIsRebuiltByTheNextCapture() throws {
        for damage in ["missing", "truncated", "one byte changed"] {
            let chainPath = "\(dir)/chain-\(damage.prefix(4))", control = "\(chainPath)-control", source = "\(dir)/source.img"
            var (disk, list) = try chain(chainPath, source: source, nights: 2)
            try FileManager.default.copyItem(atPath: chainPath, toPath: control)
            let map = "\(chainPath)/map-p000002.strata"
            switch damage {
            case "missing": try FileManager.default.removeItem(atPath: map)
            case "truncated": XCTAssertEqual(truncate(map, off_t(try readFile(map).count / 2)), 0)
            default:
                var bytes = try readFile(map)
                bytes[bytes.count / 2] ^= 0x40
                try Data(bytes).write(to: URL(fileURLWithPath: map))
            }
            disk.night(2, rng: &rng)
            try disk.writeSparse(to: source)
            list.append(disk.bytes)
            let normal = try Capture.run(source: source, chain: control, options: CaptureOptions())
            var notices: [String] = []
            let healed = try Capture.run(source: source, chain: chainPath, options: CaptureOptions(), notice: { notices.append($0) })
            XCTAssertEqual(notices.count, 1, "\(damage): \(notices)")
            XCTAssertTrue(notices.first?.hasPrefix("map-p000002.strata: ") ?? false, "\(damage): \(notices)")
            XCTAssertTrue(notices.first?.contains(" from the newest point's images (their hash tables, not their data)") ?? false, "\(damage): \(notices)")
            XCTAssertEqual(healed.blocksChanged, normal.blocksChanged, "\(damage): the same blocks are stored as by a normal incremental")
            XCTAssertLessThanOrEqual(abs(Int(healed.bytesStored) - Int(normal.bytesStored)), Int(normal.bytesStored) / 100, damage)
            XCTAssertTrue(try Verify.run(chain: chainPath, options: VerifyOptions()).isWhole, damage)
            try assertEveryPointRestores(chainPath, [1: list[0], 2: list[1], 3: list[2]], damage)
        }
    }

    func testACaptureWhoseNewestImagesCannotBeReadStoresEveryBlock() throws {
        let chainPath = "\(dir)/chain", source = "\(dir)/source.img"
        var (disk, list) = try chain(chainPath, source: source, nights: 3)
        try FileManager.default.removeItem(atPath: "\(chainPath)/p000003.strata")
        try FileManager.default.removeItem(atPath: "\(chainPath)/map-p000003.strata")
        disk.night(3, rng: &rng)
        try disk.writeSparse(to: source)
        var notices: [String] = []
        let r = try Capture.run(source: source, chain: chainPath, options: CaptureOptions(), notice: { notices.append($0) })
        XCTAssertEqual(notices, ["map-p000003.strata: the file is missing, and the newest point's images cannot be read (the file is missing): this capture compares nothing and stores every non-zero block"])
        XCTAssertEqual(r.blocksChanged, UInt64(disk.bytes.count / 4096), "every block is in the new image")
        let v = try Verify.run(chain: chainPath, options: VerifyOptions())
        XCTAssertEqual(v.wholePoints, [1, 2, 4], "the new point needs no older image")
        XCTAssertEqual(v.affectedPoints, [3])
        try assertEveryPointRestores(chainPath, [1: list[0], 2: list[1], 4: disk.bytes], "after storing everything")
    }

    func testBlocksInAFrameVerifyFoundDamagedAreHealedByTheNextCapture() throws {
        let chainPath = "\(dir)/chain", source = "\(dir)/source.img"
        var (disk, list) = try chain(chainPath, source: source, nights: 3)
        // A frame of the full image that the newest point still takes blocks from.
        let c = try Chain(location: chainPath, access: .read)
        let images = try c.openImages(forPoint: 3)
        var resolved: [ResolvedExtent] = []
        try PointWalk(images).forEach { resolved.append($0) }
        let used = resolved.filter { $0.kind == .data && $0.image == 0 }
        let frame = used.first!.frame
        let taken = used.filter { $0.frame == frame }.reduce(UInt64(0)) { $0 + UInt64($1.blockCount) }
        let record = try images[0].index.frame(frame)
        var bytes = try readFile("\(chainPath)/p000001.strata")
        bytes[Int(record.offset) + record.hashesLength + 100] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: "\(chainPath)/p000001.strata"))

        let found = try Verify.run(chain: chainPath, options: VerifyOptions())
        XCTAssertFalse(found.isWhole)
        XCTAssertEqual(found.affectedPoints, [1, 2, 3])
        let damage = try DamageRecord.decode(readFile("\(chainPath)/\(DamageRecord.fileName)"))
        XCTAssertEqual(damage.frames, [DamageRecord.Frame(imageID: images[0].header.imageID, frame: frame)])

        disk.night(3, rng: &rng)
        try disk.writeSparse(to: source)
        let r = try Capture.run(source: source, chain: chainPath, options: CaptureOptions())
        XCTAssertEqual(r.blocksHealed, taken, "every block point 3 took from the damaged frame is stored anew")
        let after = try Verify.run(chain: chainPath, options: VerifyOptions())
        XCTAssertEqual(after.wholePoints, [4], "the new point is whole")
        XCTAssertEqual(after.affectedPoints, [1, 2, 3], "older points stay as they are")
        XCTAssertEqual(after.problems.map(\.file), ["p000001.strata"], "and verify still names the damage")
        try assertEveryPointRestores(chainPath, [4: disk.bytes], "healed")
        _ = list

        disk.night(4, rng: &rng)
        try disk.writeSparse(to: source)
        XCTAssertEqual(try Capture.run(source: source, chain: chainPath, options: CaptureOptions()).blocksHealed, 0, "healed once")
    }
}
