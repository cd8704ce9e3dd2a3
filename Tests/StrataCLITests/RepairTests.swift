// `strata repair`, through the binary: --dry-run says every change and makes none; --drop-damaged on a chain
// whose middle image is damaged keeps every whole point (each restores bit for bit, the chain verifies whole)
// and removes only the points that cannot be restored; killed at every durability step and at writes spread
// over its run, it leaves the chain as before or as after, and the next repair finishes the job.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class RepairTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try scratchDirectory("strata-repair") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func contents(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }


    private func points(_ chain: String) throws -> [Int] {
        let list = try strata("list", chain, "--json")
        XCTAssertEqual(list.status, 0, list.stderr)
        return (jsonObject(list.stdout)["points"] as? [[String: Any]] ?? []).map { $0["point"] as! Int }
    }

    /// Four points of a 4 MiB disk: night 1 rewrites 256 KiB at 1 MiB (all that image 2 holds), night 2 rewrites the
    /// same range again, night 3 a little elsewhere. Then a byte of image 2's frame is changed: point 2 cannot be
    /// restored, points 1, 3 and 4 can. Returns the chain and each point's bytes.
    private func damagedMiddle(at chain: String) throws -> [Int: Data] {
        var disk = Data((0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 / 4096 &* 31 &+ $0 % 251) })
        var states: [Int: Data] = [:]
        for night in 0..<4 {
            if night == 1 || night == 2 { disk.replaceSubrange((1 << 20)..<((1 << 20) + (256 << 10)), with: Data((0..<(256 << 10)).map { UInt8(truncatingIfNeeded: $0 &* (7 + night) &+ night) })) }
            if night == 3 { disk.replaceSubrange(8192..<16384, with: Data(repeating: 0xA5, count: 8192)) }
            try disk.write(to: URL(fileURLWithPath: "\(dir)/disk"))
            XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
            states[night + 1] = disk
        }
        let image = "\(chain)/p000002.strata"
        var bytes = try contents(image)
        bytes[4096 + 64 * 16 + 10] ^= 0xFF  // inside frame 0's payload, after its 64 block hashes
        try bytes.write(to: URL(fileURLWithPath: image))
        return states
    }

    func testDryRunSaysEverythingAndChangesNothing() throws {
        let chain = "\(dir)/chain"
        _ = try damagedMiddle(at: chain)
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: "\(chain)/.strata-tmp-999-p000009.strata"))
        try FileManager.default.removeItem(atPath: "\(chain)/map-p000004.strata")
        let before = try chainFiles(chain)
        let r = try strata("repair", chain, "--dry-run", "--drop-damaged")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, """
            would remove .strata-tmp-999-p000009.strata: left by an interrupted run
            would merge points 2-3 into one image: point 2 cannot be restored and goes; 3 restores as before
            would leave points 1, 3, 4

            """)
        XCTAssertEqual(try chainFiles(chain), before, "a dry run changes nothing, not even the damage record")

        let plain = try strata("repair", chain, "--dry-run")
        XCTAssertEqual(plain.stdout, """
            would remove .strata-tmp-999-p000009.strata: left by an interrupted run
            would rebuild map-p000004.strata (the file is missing) from the newest point's images
            would leave points 1, 2, 3, 4

            """)
        XCTAssertEqual(try chainFiles(chain), before)
    }

    func testDropDamagedKeepsEveryWholePoint() throws {
        let chain = "\(dir)/chain"
        let states = try damagedMiddle(at: chain)
        let v = try strata("verify", chain, "--json")
        XCTAssertEqual(v.status, 65)
        XCTAssertEqual((jsonObject(v.stdout)["wholePoints"] as? [Int]) ?? [], [1, 3, 4], v.stdout)
        let r = try strata("repair", chain, "--drop-damaged", "--json")
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = jsonObject(r.stdout)
        XCTAssertEqual(j["removedPoints"] as? [Int], [2])
        XCTAssertEqual(j["points"] as? [Int], [1, 3, 4])
        XCTAssertEqual(try points(chain), [1, 3, 4])
        XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0, "the chain verifies whole")
        for p in [1, 3, 4] {
            XCTAssertEqual(try strata("restore", chain, "\(dir)/out", "--force", "--point", "\(p)", "--quiet").status, 0)
            XCTAssertEqual(try contents("\(dir)/out"), states[p], "point \(p)")
        }
        XCTAssertEqual(try strata("repair", chain, "--drop-damaged").stdout, "nothing to repair\n")
        try makeDisk("\(dir)/disk", size: 4 << 20, seed: 9)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0, "the chain goes on")
    }

    func testKilledRepairLeavesTheChainAsBeforeOrAfter() throws {
        if let reason = CrashDisk.unavailableReason() { throw XCTSkip(reason) }
        let disk = try CrashDisk(in: dir)
        let chain = "\(disk.mountPoint)/chain"
        let pristine = "\(dir)/pristine"
        let states = try damagedMiddle(at: pristine)
        try FileManager.default.copyItem(atPath: pristine, toPath: chain)
        try disk.command("count")
        XCTAssertEqual(try strata("repair", chain, "--drop-damaged", "--quiet").status, 0)
        let run = (writes: disk.status().writes, steps: disk.status().steps)
        var spots = (1...run.steps).map { ("steps", $0) }
        for n in [1, run.writes / 4, run.writes / 2, run.writes * 3 / 4, run.writes] where n >= 1 { spots.append(("writes", n)) }
        for (kind, n) in spots {
            try FileManager.default.removeItem(atPath: chain)
            try FileManager.default.copyItem(atPath: pristine, toPath: chain)
            var finished: Run?
            let at = try disk.run(["repair", chain, "--drop-damaged", "--quiet"], stoppingAt: kind, n, crash: .kill, finished: &finished)
            XCTAssertNotNil(at, "the kill at \(kind) \(n) landed mid-run")
            let ps = try points(chain)
            XCTAssertTrue(ps == [1, 2, 3, 4] || ps == [1, 3, 4], "killed at \(at ?? "-"): \(ps)")
            for p in ps where p != 2 {
                XCTAssertEqual(try strata("restore", chain, "\(dir)/out", "--force", "--point", "\(p)", "--quiet").status, 0)
                XCTAssertEqual(try contents("\(dir)/out"), states[p], "killed at \(at ?? "-"): point \(p)")
            }
            XCTAssertEqual(try strata("repair", chain, "--drop-damaged", "--quiet").status, 0, "the next repair finishes the job")
            XCTAssertEqual(try points(chain), [1, 3, 4])
            XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0)
        }
    }
}
