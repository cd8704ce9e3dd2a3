// `strata prune` with calendar rules on a real chain whose points were made at chosen times (capture's hidden
// --created-at): the dry run's listing and JSON, then the prune itself, after which every kept point restores
// byte for byte and the removed ones are gone.
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class PruneTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = try scratchDirectory("strata-prune")
        setenv("TZ", "UTC", 1)  // the children's periods
    }
    override func tearDown() {
        unsetenv("TZ")
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Noon UTC of day `day` of March 2026 (the 2nd is a Monday).
    private func noon(_ day: Int) -> UInt64 { 1_772_323_200 + UInt64(day - 1) * 86_400 + 43_200 }

    func testCalendarPruneKeepsWhatTheRulesSayAndEveryKeptPointRestores() throws {
        let chain = "\(dir)/chain", disk = "\(dir)/disk", size = 4 << 20
        // 12 points: one a day from March 1st (a Sunday) to the 11th, and a second one on the 11th.
        let days = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11]
        var states: [Int: Data] = [:]
        for (k, day) in days.enumerated() {
            try makeDisk(disk, size: size, seed: 3, changes: 25 * k)
            let time = noon(day) + (k == 11 ? 3600 : 0)
            XCTAssertEqual(try strata("capture", disk, chain, "--created-at", "\(time)", "--quiet").status, 0)
            states[k + 1] = try Data(contentsOf: URL(fileURLWithPath: disk))
        }
        let before = try chainFiles(chain)

        // Daily 3: the 11th (newest of two), 10th, 9th. Weekly 2 then counts weeks not yet covered: the week of
        // the 2nd-8th (the 8th) and that of the 1st (a Sunday: ISO week of Feb 23rd-Mar 1st).
        let dry = try strata("prune", chain, "--keep-daily", "3", "--keep-weekly", "2", "--dry-run")
        XCTAssertEqual(dry.status, 0, dry.stderr)
        let expectKept: [Int: String] = [1: "weekly", 8: "weekly", 9: "daily", 10: "daily", 12: "daily"]
        let lines = dry.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 13, dry.stdout)
        for p in 1...12 {
            let time = noon(days[p - 1]) + (p == 12 ? 3600 : 0)
            var stamp = time_t(time)
            var parts = tm()
            gmtime_r(&stamp, &parts)
            let when = String(format: "%04d-%02d-%02d %02d:%02d:%02d", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec)
            let point = String(repeating: " ", count: 5 - String(p).count) + String(p)
            XCTAssertEqual(lines[p - 1], "point \(point)  \(when)  \(expectKept[p].map { "keep (\($0))" } ?? "remove")")
        }
        XCTAssertEqual(lines[12], "would remove 7 of 12 points in 2 merges (dry run: nothing changed)")
        XCTAssertEqual(try chainFiles(chain), before, "a dry run changes nothing")

        let json = try strata("prune", chain, "--keep-daily", "3", "--keep-weekly", "2", "--dry-run", "--json")
        XCTAssertEqual(json.status, 0, json.stderr)
        let object = jsonObject(json.stdout)
        XCTAssertEqual(object["dryRun"] as? Bool, true)
        let points = object["points"] as? [[String: Any]] ?? []
        XCTAssertEqual(points.map { $0["point"] as? Int }, (1...12).map { $0 })
        XCTAssertEqual(points.map { $0["rule"] as? String }, (1...12).map { expectKept[$0] })
        XCTAssertEqual(points.map { $0["keep"] as? Bool }, (1...12).map { expectKept[$0] != nil })
        let merges = object["merges"] as? [[String: Any]] ?? []
        XCTAssertEqual(merges.map { $0["removed"] as? [Int] }, [[2, 3, 4, 5, 6, 7], [11]])
        XCTAssertEqual(merges.map { $0["into"] as? Int }, [8, 12])
        XCTAssertEqual(object["remaining"] as? [Int], [1, 8, 9, 10, 12])

        let run = try strata("prune", chain, "--keep-daily", "3", "--keep-weekly", "2", "--json")
        XCTAssertEqual(run.status, 0, run.stderr)
        let done = jsonObject(run.stdout)
        XCTAssertEqual(done["dryRun"] as? Bool, false)
        XCTAssertEqual(done["remaining"] as? [Int], [1, 8, 9, 10, 12])
        XCTAssertGreaterThan(done["bytesWritten"] as? Int ?? 0, 0)
        let list = jsonObject(try strata("list", chain, "--json").stdout)
        XCTAssertEqual((list["points"] as? [[String: Any]] ?? []).map { $0["point"] as! Int }, [1, 8, 9, 10, 12])
        for p in [1, 8, 9, 10, 12] {
            let r = try strata("restore", chain, "\(dir)/out", "--point", "\(p)", "--force", "--quiet")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), states[p], "point \(p)")
        }
        for p in [2, 7, 11] {
            let r = try strata("restore", chain, "\(dir)/out", "--point", "\(p)", "--force", "--quiet")
            XCTAssertEqual(r.status, 64)
            XCTAssertEqual(r.stderr, "strata: error: point \(p) does not exist in this chain; available points: 1, 8, 9, 10, 12\n")
        }
        XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0)
        // Pruned again by the same rules: nothing left to do, nothing changed.
        let files = try chainFiles(chain)
        let again = try strata("prune", chain, "--keep-daily", "3", "--keep-weekly", "2")
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertTrue(again.stdout.hasSuffix("nothing to prune: the rules keep all 5 points\n"), again.stdout)
        XCTAssertEqual(try chainFiles(chain), files)
    }

    func testPruneRefusesRulesThatKeepNothing() throws {
        let chain = "\(dir)/chain", disk = "\(dir)/disk"
        try makeDisk(disk, size: 1 << 20, seed: 1)
        XCTAssertEqual(try strata("capture", disk, chain, "--quiet").status, 0)
        let before = try chainFiles(chain)
        let none = try strata("prune", chain)
        XCTAssertEqual(none.status, 64)
        XCTAssertEqual(none.stderr, "strata: error: no retention rule given: use --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly or --keep-yearly\n")
        let negative = try strata("prune", chain, "--keep-weekly=-2")
        XCTAssertEqual(negative.status, 64)
        XCTAssertEqual(negative.stderr, "strata: error: --keep-weekly must not be negative\n")
        XCTAssertEqual(try chainFiles(chain), before)
    }
}
