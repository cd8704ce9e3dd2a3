// The CLI's own number and string rendering (it does not link Foundation, so no String(format:)): the same
// text printf would give.
import XCTest

@testable import strata

final class OutputTests: XCTestCase {
    func testFixedDecimalsMatchPrintf() {
        let cases: [(Double, Int, String)] = [
            (0, 1, "0.0"), (0.05, 1, "0.1"), (1.25, 2, "1.25"), (9.999, 2, "10.00"), (123.4567, 3, "123.457"),
            (0.0004, 3, "0.000"), (-2.5, 1, "-2.5"), (-0.01, 1, "0.0"), (42, 0, "42"), (1.0 / 3.0, 3, "0.333"),
            (99.95, 1, "100.0"), (Double.infinity, 1, "inf"),
        ]
        for (v, digits, text) in cases { XCTAssertEqual(Output.fixed(v, digits), text, "\(v) to \(digits)") }
    }

    func testBytesAndEscapes() {
        XCTAssertEqual(Output.bytes(1023), "1023 B")
        XCTAssertEqual(Output.bytes(1536), "1.5 KiB")
        XCTAssertEqual(Output.bytes(6 << 30), "6.0 GiB")
        XCTAssertEqual(Output.escape("a\"b\\c\nd\u{1}e\u{1f}"), "a\\\"b\\\\c\\nd\\u0001e\\u001f")
        XCTAssertEqual("ab".leftPad(4), "  ab")
        XCTAssertEqual("ab".rightPad(4), "ab  ")
        XCTAssertEqual("abcde".rightPad(4), "abcde")
    }

    /// --json is JSON: strings quoted and escaped (a list of them too: the hand-built text once printed a list of
    /// strings bare), null written where a value is absent, seconds to the millisecond, keys sorted.
    func testReportsAreJSON() {
        let repair = RepairCommand.Report(dryRun: true, actions: ["removed \"p2\"\n", "a/b"], removedPoints: [2], points: [1, 3])
        XCTAssertEqual(Output.jsonText(repair), #"{"actions":["removed \"p2\"\n","a/b"],"dryRun":true,"points":[1,3],"removedPoints":[2]}"#)
        let removed = PruneCommand.Report.Point(point: 4, created: 5, keep: false, rule: OrNull(nil))
        XCTAssertEqual(Output.jsonText(removed), #"{"created":5,"keep":false,"point":4,"rule":null}"#)
        XCTAssertEqual(Output.jsonText([Seconds(1.23456), Seconds(2)]), "[1.235,2]")
        XCTAssertEqual(Output.ranges([0..<4096, 8192..<8193]), [[0, 4096], [8192, 1]])
    }
}
