// `strata --version` names the commit the binary was built from: Tools/stamp-commit writes it into a built
// binary (Tools/build-release runs it), in place, as often as the commit changes, with no rebuild.
import Foundation
import TestSupport
import XCTest

final class VersionTests: XCTestCase {
    let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    func testVersionNamesTheCommitStampedIntoTheBinary() throws {
        let dir = NSTemporaryDirectory() + "strata-version-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let binary = "\(dir)/strata"
        try FileManager.default.copyItem(atPath: strataBinary, toPath: binary)
        let version = { runProcess(binary, ["--version"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
        let unstamped = version()
        XCTAssertTrue(unstamped == "0.1.0 (commit not stamped: built without Tools/build-release)" || unstamped.hasPrefix("0.1.0 (commit "), unstamped)

        var r = runProcess("\(repository)/Tools/stamp-commit", [binary, "0123456789ab 2026-12-07"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(version(), "0.1.0 (commit 0123456789ab, 2026-12-07)")
        // Stamped again in place: the new stamp replaces the old, whatever their lengths.
        r = runProcess("\(repository)/Tools/stamp-commit", [binary, "fedcba9876543210-dirty 2026-12-08"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(version(), "0.1.0 (commit fedcba9876543210-dirty, 2026-12-08)")
        r = runProcess("\(repository)/Tools/stamp-commit", [binary, "abc 2026-12-09"])
        XCTAssertEqual(version(), "0.1.0 (commit abc, 2026-12-09)")

        // A stamp too long for its room is refused, the binary unchanged.
        let before = try Data(contentsOf: URL(fileURLWithPath: binary))
        r = runProcess("\(repository)/Tools/stamp-commit", [binary, String(repeating: "f", count: 108)])
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: binary)), before)
        // A file without the marker: exit 65, named.
        try Data(repeating: 0x41, count: 4096).write(to: URL(fileURLWithPath: "\(dir)/other"))
        r = runProcess("\(repository)/Tools/stamp-commit", ["\(dir)/other", "0123456789ab 2026-12-07"])
        XCTAssertEqual(r.status, 65)
        XCTAssertTrue(r.stderr.contains("holds no stamp marker"), r.stderr)
    }
}
