// Calendar retention against a table of cases: Proxmox Backup Server's own prune tests (tests/prune.rs, the
// semantics we promise), days with no capture, several captures a day, ISO week and year boundaries, and
// daylight-saving changes (periods are local time).
import Foundation
import StrataChain
import StrataIO
import XCTest

final class RetentionTests: XCTestCase {
    override func tearDown() { LocalCalendar.setTimeZone(nil) }

    /// Seconds since the epoch of "yyyy-MM-ddTHH:mm:ssZ" (UTC) or "yyyy-MM-ddTHH:mm:ss+hh:mm".
    private func at(_ text: String) -> UInt64 {
        let f = ISO8601DateFormatter()
        return UInt64(f.date(from: text)!.timeIntervalSince1970)
    }

    /// The times of the points kept (or removed) by `rules`, the points being `times` in capture order.
    private func kept(_ times: [String], _ rules: RetentionRules, removed: Bool = false) throws -> [String] {
        let points = times.enumerated().map { (point: UInt32($0.offset + 1), createdAt: at($0.element)) }
        let decisions = try Retention.decide(points, rules: rules)
        XCTAssertEqual(decisions.map(\.point), points.map(\.point), "every point decided, oldest first")
        XCTAssertNotNil(decisions.last?.keptBy, "the newest point is always kept")
        return zip(times, decisions).filter { ($0.1.keptBy == nil) == removed }.map(\.0)
    }

    func testProxmoxHourly() throws {
        LocalCalendar.setTimeZone("UTC")
        let list = ["2019-11-15T09:39:15Z", "2019-11-15T10:49:15Z", "2019-11-15T10:59:15Z", "2019-11-15T11:39:15Z", "2019-11-15T11:49:15Z", "2019-11-15T11:59:15Z"]
        XCTAssertEqual(try kept(list, RetentionRules(hourly: 3), removed: true), ["2019-11-15T10:49:15Z", "2019-11-15T11:39:15Z", "2019-11-15T11:49:15Z"])
        XCTAssertEqual(try kept(list, RetentionRules(hourly: 2)), ["2019-11-15T10:59:15Z", "2019-11-15T11:59:15Z"])
    }

    func testProxmoxSimple2() throws {
        LocalCalendar.setTimeZone("UTC")
        let list = ["2018-11-15T11:59:15Z", "2019-11-15T11:59:15Z", "2019-11-21T11:59:15Z", "2019-11-22T11:59:15Z", "2019-11-29T11:59:15Z",
                    "2019-12-01T11:59:15Z", "2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z"]
        XCTAssertEqual(try kept(list, RetentionRules(daily: 1)), ["2019-12-04T11:59:15Z"])
        XCTAssertEqual(try kept(list, RetentionRules(last: 1, daily: 1)), ["2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z"])
        XCTAssertEqual(try kept(list, RetentionRules(daily: 1, weekly: 1)), ["2019-12-01T11:59:15Z", "2019-12-04T11:59:15Z"])
        XCTAssertEqual(try kept(list, RetentionRules(daily: 1, weekly: 1, monthly: 1)), ["2019-11-22T11:59:15Z", "2019-12-01T11:59:15Z", "2019-12-04T11:59:15Z"])
        XCTAssertEqual(try kept(list, RetentionRules(monthly: 1, yearly: 1)), ["2018-11-15T11:59:15Z", "2019-12-04T11:59:15Z"])
    }

    func testProxmoxSimple() throws {
        LocalCalendar.setTimeZone("UTC")
        let list = ["2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z", "2019-12-04T12:59:15Z"]
        let removed = { (rules: RetentionRules) in try self.kept(list, rules, removed: true) }
        XCTAssertEqual(try removed(RetentionRules(last: 4)), [])
        XCTAssertEqual(try removed(RetentionRules(last: 3)), ["2019-12-02T11:59:15Z"])
        XCTAssertEqual(try removed(RetentionRules(last: 2)), ["2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z"])
        XCTAssertEqual(try removed(RetentionRules(last: 1)), ["2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z"])
        XCTAssertEqual(try removed(RetentionRules(last: 2, daily: 2)), [])
        XCTAssertEqual(try removed(RetentionRules(daily: 3)), ["2019-12-04T11:59:15Z"])
        XCTAssertEqual(try removed(RetentionRules(daily: 2)), ["2019-12-02T11:59:15Z", "2019-12-04T11:59:15Z"])
        let allButNewest = ["2019-12-02T11:59:15Z", "2019-12-03T11:59:15Z", "2019-12-04T11:59:15Z"]
        XCTAssertEqual(try removed(RetentionRules(weekly: 5)), allButNewest, "one week: one point")
        XCTAssertEqual(try removed(RetentionRules(daily: 1, weekly: 5)), allButNewest, "the week is covered by the daily one")
        XCTAssertEqual(try removed(RetentionRules(monthly: 6)), allButNewest)
        XCTAssertEqual(try removed(RetentionRules(yearly: 7)), allButNewest)
        XCTAssertEqual(try removed(RetentionRules(weekly: 5, monthly: 6, yearly: 7)), allButNewest)
    }

    func testDaysWithoutACaptureAreNotPeriods() throws {
        LocalCalendar.setTimeZone("UTC")
        // Captures on the 1st, 2nd, 5th and 9th (twice): three days kept reach back to the 2nd.
        let list = ["2026-03-01T01:00:00Z", "2026-03-02T01:00:00Z", "2026-03-05T01:00:00Z", "2026-03-09T01:00:00Z", "2026-03-09T13:00:00Z"]
        XCTAssertEqual(try kept(list, RetentionRules(daily: 3)), ["2026-03-02T01:00:00Z", "2026-03-05T01:00:00Z", "2026-03-09T13:00:00Z"])
        // keep-last takes the newest two; daily then counts from the next day with a point.
        XCTAssertEqual(try kept(list, RetentionRules(last: 2, daily: 1)), ["2026-03-05T01:00:00Z", "2026-03-09T01:00:00Z", "2026-03-09T13:00:00Z"])
    }

    func testIsoWeeksAndYearBoundaries() throws {
        LocalCalendar.setTimeZone("UTC")
        // 2026-12-28 (Monday) to 2027-01-03 (Sunday) is ISO week 53 of 2026; 2027-01-04 starts week 1 of 2027.
        let list = ["2026-12-27T12:00:00Z", "2026-12-30T12:00:00Z", "2027-01-02T12:00:00Z", "2027-01-04T12:00:00Z"]
        XCTAssertEqual(try kept(list, RetentionRules(weekly: 3)), ["2026-12-27T12:00:00Z", "2027-01-02T12:00:00Z", "2027-01-04T12:00:00Z"])
        XCTAssertEqual(try kept(list, RetentionRules(yearly: 2)), ["2026-12-30T12:00:00Z", "2027-01-04T12:00:00Z"], "calendar years, not ISO years")
        XCTAssertEqual(try kept(list, RetentionRules(monthly: 5)), ["2026-12-30T12:00:00Z", "2027-01-04T12:00:00Z"])
    }

    func testPeriodsAreLocalTimeAcrossDaylightSavingChanges() throws {
        LocalCalendar.setTimeZone("Europe/Berlin")
        // 23:30 on the 28th and 00:30 on the 29th in Berlin (spring forward that night) are two local days, though
        // both fall on the 28th in UTC.
        let spring = ["2026-03-27T12:00:00+01:00", "2026-03-28T23:30:00+01:00", "2026-03-29T00:30:00+01:00"]
        XCTAssertEqual(try kept(spring, RetentionRules(daily: 2)), ["2026-03-28T23:30:00+01:00", "2026-03-29T00:30:00+01:00"])
        // Falling back, 02:30 comes twice: one local hour, so hourly keeps the later one only.
        let autumn = ["2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00"]
        XCTAssertEqual(try kept(autumn, RetentionRules(hourly: 2)), ["2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+01:00"])
        LocalCalendar.setTimeZone("UTC")
        XCTAssertEqual(try kept(spring, RetentionRules(daily: 2)), ["2026-03-27T12:00:00+01:00", "2026-03-29T00:30:00+01:00"], "the same points by UTC days")
    }

    func testPointsAreOrderedAsCapturedNotByTheirClocks() throws {
        LocalCalendar.setTimeZone("UTC")
        // The clock was set back before the third capture: it is still the newest point, and kept.
        let list = ["2026-05-02T01:00:00Z", "2026-05-03T01:00:00Z", "2026-05-01T01:00:00Z"]
        XCTAssertEqual(try kept(list, RetentionRules(last: 1)), ["2026-05-01T01:00:00Z"])
    }

    func testRulesThatKeepNothingAreRefused() {
        XCTAssertThrowsError(try Retention.decide([(1, 0)], rules: RetentionRules())) {
            XCTAssertEqual($0 as? ChainError, .invalidOption("no retention rule given: use --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly or --keep-yearly"))
        }
        XCTAssertThrowsError(try Retention.decide([(1, 0)], rules: RetentionRules(last: 1, daily: -1))) {
            XCTAssertEqual($0 as? ChainError, .invalidOption("--keep-daily must not be negative"))
        }
    }
}
