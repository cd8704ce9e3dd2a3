// Power cuts, on a disk that keeps what is written in memory until it is fsynced (Tests/Fixtures/crashfs.py):
// a capture (into an existing chain and into a new one), a merge and a prune are each cut off at every one of
// their durability steps in turn (every fsync, directory fsync, rename and unlink), and everything not yet
// durable is dropped. Afterwards the chain must hold the points it held before or those it holds after, verify
// whole, and restore every point bit for bit; so must it after the next command, and after a power cut that
// follows a command that finished (what strata reported done is durable). A SIGKILL cannot show a missing
// fsync (the page cache survives it); this can.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class PowerCutTests: XCTestCase {
    var dir = ""
    var disk: CrashDisk!
    var chain: String { "\(disk.mountPoint)/chain" }
    /// The source's content at each point.
    var states: [Int: Data] = [:]
    let size = 4 << 20

    override func setUpWithError() throws {
        if let reason = CrashDisk.unavailableReason() { throw XCTSkip(reason) }
        dir = try scratchDirectory("strata-powercut")
        disk = try CrashDisk(in: dir)
    }

    override func tearDown() {
        disk = nil
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func contents(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// A chain of `nights` points made on the ordinary disk, the source's states recorded; the source is left
    /// at the next night's content.
    /// `times`: each point's time (capture's --created-at), where the test needs chosen ones.
    private func reference(nights: Int, times: [UInt64]? = nil) throws -> String {
        let ref = "\(dir)/reference"
        for night in 0..<nights {
            try makeDisk("\(dir)/disk", size: size, seed: 31, changes: 30 * night)
            let at = times.map { ["--created-at", "\($0[night])"] } ?? []
            XCTAssertEqual(try strata(["capture", "\(dir)/disk", ref, "--quiet"] + at).status, 0)
            states[night + 1] = try contents("\(dir)/disk")
        }
        try makeDisk("\(dir)/disk", size: size, seed: 31, changes: 30 * nights)
        return ref
    }

    /// Puts a copy of `reference` (or no chain) on the crash disk as the chain, all of it durable.
    private func install(_ reference: String?) throws {
        if FileManager.default.fileExists(atPath: chain) { try FileManager.default.removeItem(atPath: chain) }
        if let reference { try FileManager.default.copyItem(atPath: reference, toPath: chain) }
        try disk.sync()
    }

    private func points() throws -> [Int] {
        let list = try strata("list", chain, "--json")
        guard list.status == 0 else { return [] }
        return (jsonObject(list.stdout)["points"] as? [[String: Any]] ?? []).map { $0["point"] as! Int }
    }

    /// The chain verifies whole and every point it lists restores bit for bit; returns its points.
    @discardableResult
    private func checkChain(_ what: String) throws -> [Int] {
        let ps = try points()
        guard !ps.isEmpty else { return ps }
        let v = try strata("verify", chain, "--quiet")
        XCTAssertEqual(v.status, 0, "\(what): verify: \(v.stdout) \(v.stderr)")
        for p in ps {
            let r = try strata("restore", chain, "\(dir)/out.img", "--force", "--point", "\(p)", "--quiet")
            XCTAssertEqual(r.status, 0, "\(what): restore of point \(p): \(r.stderr)")
            XCTAssertEqual(try contents("\(dir)/out.img"), states[p], "\(what): point \(p) restores bit for bit")
        }
        return ps
    }

    /// Cuts the power at each durability step of `args` in turn, from a fresh copy of `reference` each time.
    /// `next` runs the next command when the chain holds `before` (the interrupted one again) and its result
    /// must hold `after`. Returns the steps it stopped at.
    @discardableResult
    private func cutAtEveryStep(_ args: [String], reference: String?, before: [Int], after: [Int], newPoint: Int? = nil) throws -> [String] {
        var stoppedAt: [String] = []
        for k in 1...200 {
            try install(reference)
            var finished: Run?
            guard let at = try disk.run(args, stoppingAt: "steps", k, crash: .powercut, finished: &finished) else {
                XCTAssertEqual(finished?.status, 0, "\(args[0]) without a crash: \(finished?.stderr ?? "")")
                XCTAssertEqual(try checkChain("\(args[0]) finished"), after)
                try disk.powerCut()
                XCTAssertEqual(try checkChain("power cut after \(args[0]) finished"), after, "what strata reported done is durable")
                return stoppedAt
            }
            stoppedAt.append(at)
            let what = "\(args[0]) cut at step \(k) (\(at))"
            let ps = try checkChain(what)
            XCTAssertTrue(ps == before || ps == after, "\(what): points \(ps), expected \(before) or \(after)")
            // The next command: the interrupted one again (it cleans up and completes), or, where it had
            // committed, a capture of the source as it is.
            let again = ps == after ? ["capture", "\(dir)/disk", chain, "--quiet"] : args
            let r = try strata(again)
            XCTAssertEqual(r.status, 0, "\(what): the next command: \(r.stderr)")
            if ps == after, let last = try points().last { states[last] = try contents("\(dir)/disk") }
            XCTAssertEqual(Array(try checkChain("\(what), then the next command").prefix(after.count)), after)
            try disk.powerCut()
            try checkChain("\(what), the next command, a power cut")
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasPrefix(".strata-tmp-") }, [], what)
        }
        XCTFail("\(args[0]) still had durability steps after 200")
        return stoppedAt
    }

    func testPowerCutAtEveryStepOfACapture() throws {
        let ref = try reference(nights: 2)
        states[3] = try contents("\(dir)/disk")
        let steps = try cutAtEveryStep(["capture", "\(dir)/disk", chain, "--quiet"], reference: ref, before: [1, 2], after: [1, 2, 3])
        XCTAssertTrue(steps.contains { $0.hasPrefix("fsync") && $0.contains("p000003.strata") }, "the image's fsync: \(steps)")
        XCTAssertTrue(steps.contains { $0.hasPrefix("fsync") && $0.contains("map-p000003.strata") }, "the hash map's fsync: \(steps)")
        XCTAssertTrue(steps.contains { $0.hasPrefix("rename") && $0.hasSuffix("/chain/chain.manifest") }, "the commit: \(steps)")
        XCTAssertTrue(steps.contains { $0.hasPrefix("unlink") && $0.hasSuffix("map-p000002.strata") }, "the old map's removal: \(steps)")
    }

    func testPowerCutAtEveryStepOfTheFirstCapture() throws {
        try makeDisk("\(dir)/disk", size: size, seed: 32)
        states[1] = try contents("\(dir)/disk")
        let steps = try cutAtEveryStep(["capture", "\(dir)/disk", chain, "--quiet"], reference: nil, before: [], after: [1])
        XCTAssertTrue(steps.contains { $0.hasPrefix("rename") && $0.hasSuffix("/chain/chain.manifest") }, "the commit: \(steps)")
    }

    func testPowerCutAtEveryStepOfAMerge() throws {
        let ref = try reference(nights: 4)
        let steps = try cutAtEveryStep(["merge", chain, "--from", "2", "--to", "3", "--quiet"], reference: ref, before: [1, 2, 3, 4], after: [1, 3, 4])
        XCTAssertTrue(steps.contains { $0.hasPrefix("unlink") && $0.hasSuffix("/p000002.strata") }, "the replaced images' removal: \(steps)")
    }

    func testPowerCutAtEveryStepOfAPrune() throws {
        let ref = try reference(nights: 4)
        let steps = try cutAtEveryStep(["prune", chain, "--keep", "2", "--quiet"], reference: ref, before: [1, 2, 3, 4], after: [3, 4])
        XCTAssertTrue(steps.contains { $0.hasPrefix("fsync") && $0.contains("p000001-000003.strata") }, "the synthetic full's fsync: \(steps)")
    }

    /// A calendar prune making two merges (a synthetic full and an incremental) commits both at once: cut at any
    /// step, the chain has every old point or exactly the kept ones.
    func testPowerCutAtEveryStepOfACalendarPrune() throws {
        setenv("TZ", "UTC", 1)
        defer { unsetenv("TZ") }
        let day: UInt64 = 86_400, start: UInt64 = 1_772_323_200
        let ref = try reference(nights: 5, times: [start, start + 3600, start + day, start + day + 3600, start + 2 * day])
        let steps = try cutAtEveryStep(["prune", chain, "--keep-daily", "3", "--quiet"], reference: ref, before: [1, 2, 3, 4, 5], after: [2, 4, 5])
        XCTAssertEqual(steps.filter { $0.hasPrefix("rename") && $0.hasSuffix("/chain.manifest") }.count, 1, "one manifest replacement: \(steps)")
    }
}
