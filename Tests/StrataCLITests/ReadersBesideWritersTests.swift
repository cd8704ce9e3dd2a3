// Readers beside writers, through the strata binary: while a capture stands still in the middle of writing its
// image (its chain on the crash disk, stopped at a write), restores, verifies and lists of the points that exist
// run and succeed, and a second writer is refused at once (exit 75); while a restore stands still writing its
// target, the night's capture runs. Then the stopped command goes on and finishes.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class ReadersBesideWritersTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        if let reason = CrashDisk.unavailableReason() { throw XCTSkip(reason) }
        dir = try scratchDirectory("strata-readers")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func contents(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// Starts strata `args` stopped at the `n`th `kind` on the crash disk, asserting it got there mid-run.
    private func startStopped(_ disk: CrashDisk, _ args: [String], at kind: String, _ n: Int) throws -> ChildProcess {
        let (child, state) = try disk.start(args, stoppingAt: kind, n)
        XCTAssertEqual(state.state, "stopped", "strata \(args[0]) stopped mid-run")
        return child
    }

    func testRestoreAndVerifyRunWhileACaptureWrites() throws {
        let disk = try CrashDisk(in: dir)
        let chain = "\(disk.mountPoint)/chain"
        try makeDisk("\(dir)/disk", size: 8 << 20, seed: 41)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
        let night0 = try contents("\(dir)/disk")
        try makeDisk("\(dir)/disk", size: 8 << 20, seed: 41, changes: 300)
        let capture = try startStopped(disk, ["capture", "\(dir)/disk", chain, "--quiet"], at: "writes", 3)
        XCTAssertTrue(disk.status().at.contains("/chain/.strata-tmp-"), "stopped while writing a new file: \(disk.status().at)")

        let restore = try strata("restore", chain, "\(dir)/out", "--point", "1", "--quiet")
        XCTAssertEqual(restore.status, 0, restore.stderr)
        XCTAssertEqual(try contents("\(dir)/out"), night0)
        let verify = try strata("verify", chain)
        XCTAssertEqual(verify.status, 0, verify.stderr)
        XCTAssertTrue(verify.stdout.contains("all whole"), verify.stdout)
        XCTAssertEqual(try strata("list", chain).status, 0)
        let second = try strata("capture", "\(dir)/disk", chain, "--quiet")
        XCTAssertEqual(second.status, 75)
        XCTAssertEqual(second.stderr, "strata: error: chain \(chain) is being changed by another strata process (a capture, merge or prune); wait for it to finish and try again\n")
        XCTAssertTrue(capture.isRunning, "the capture was still mid-run while the readers ran")

        try disk.command("resume")
        let done = capture.finish()
        XCTAssertEqual(done.status, 0, done.stderr)
        let r = try strata("restore", chain, "\(dir)/out", "--force", "--quiet")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try contents("\(dir)/out"), try contents("\(dir)/disk"))
    }

    func testACaptureRunsWhileARestoreWrites() throws {
        let disk = try CrashDisk(in: dir)
        let chain = "\(dir)/chain"
        try makeDisk("\(dir)/disk", size: 8 << 20, seed: 42)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
        let night0 = try contents("\(dir)/disk")
        let restore = try startStopped(disk, ["restore", chain, "\(disk.mountPoint)/target", "--quiet"], at: "writes", 2)
        try makeDisk("\(dir)/disk", size: 8 << 20, seed: 42, changes: 100)
        let capture = try strata("capture", "\(dir)/disk", chain, "--quiet")
        XCTAssertEqual(capture.status, 0, capture.stderr)
        XCTAssertTrue(restore.isRunning, "the restore was still mid-run while the capture ran")
        try disk.command("resume")
        let done = restore.finish()
        XCTAssertEqual(done.status, 0, done.stderr)
        XCTAssertEqual(try contents("\(disk.mountPoint)/target"), night0, "the restore wrote the point it was asked for")
    }
}
