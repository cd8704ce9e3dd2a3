// Chains written by earlier releases (Tests/Fixtures/compat-v1: a one-table index; compat-v2: the chunked index;
// made by Tools/make-compat-fixture) verify and restore every point bit for bit with this one, and take a new
// capture: the on-disk format is a promise.
import Foundation
import TestSupport
import XCTest

final class CompatibilityTests: XCTestCase {
    func testAChainWithAOneTableIndexVerifiesAndRestores() throws { try check("compat-v1") }

    func testAChainWithAChunkedIndexVerifiesAndRestores() throws { try check("compat-v2") }

    func check(_ name: String) throws {
        let dir = try scratchDirectory("strata-compat")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fixture = "\(fixtures)/\(name)"
        let chain = "\(dir)/chain"
        try FileManager.default.copyItem(atPath: "\(fixture)/chain", toPath: chain)
        XCTAssertEqual(runTool("/usr/bin/env", ["chmod", "-R", "go=", chain]), 0)
        let expected = try String(contentsOfFile: "\(fixture)/points.sha256", encoding: .utf8)
            .split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        XCTAssertEqual(expected.map { String($0[1]) }, ["point-1", "point-3", "point-4"])

        let verify = try strata("verify", chain)
        XCTAssertEqual(verify.status, 0, verify.stdout + verify.stderr)
        XCTAssertTrue(verify.stdout.contains("all whole"), verify.stdout)
        for line in expected {
            let point = String(line[1].dropFirst("point-".count))
            let r = try strata("restore", chain, "\(dir)/out.img", "--force", "--point", point, "--quiet")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(toolOutput(["sh", "-c", "sha256sum < \(dir)/out.img | cut -d' ' -f1"]), String(line[0]), "point \(point)")
        }
        // The chain goes on: a capture of the last point's disk is an incremental that stores nothing.
        let capture = try strata("capture", "\(dir)/out.img", chain, "--json")
        XCTAssertEqual(capture.status, 0, capture.stderr)
        XCTAssertEqual(jsonObject(capture.stdout)["blocksChanged"] as? Int, 0)
        XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0)
    }
}
