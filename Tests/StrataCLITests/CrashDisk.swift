// A disk that loses power on cue (Tests/Fixtures/crashfs.py through FUSE) and the one way tests crash a strata
// run on it: arm the disk to stop at the Nth durability step (fsync, directory fsync, rename, unlink) or the
// Nth write, start strata, and when the disk stands still at that step, kill strata with SIGKILL and then crash
// the disk: a power cut drops everything not yet durable, a plain kill keeps it (the page cache survives a
// SIGKILL). Every crash is asserted to have landed mid-run.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class CrashDisk {
    let mountPoint: String
    private let server: ChildProcess
    private var control: String { "\(mountPoint)/.crashfs" }

    static func unavailableReason() -> String? { FaultyDisk.unavailableReason() }

    init(in dir: String) throws {
        mountPoint = "\(dir)/crashfs-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        server = try ChildProcess("/usr/bin/python3", ["\(fixtures)/crashfs.py", mountPoint], deadline: 3600, quiet: true)
        for _ in 0..<200 where access(control, R_OK) != 0 { usleep(25_000) }
        guard access(control, R_OK) == 0 else { throw TestFailure("the crashfs fixture did not mount at \(mountPoint)") }
    }

    deinit {
        runTool("/usr/bin/env", ["fusermount", "-u", mountPoint])
        kill(server.pid, SIGTERM)
        _ = server.finish()
    }

    func command(_ text: String) throws {
        let fd = open(control, O_WRONLY)
        guard fd >= 0 else { throw TestFailure("cannot open \(control)") }
        defer { close(fd) }
        let n = text.withCString { write(fd, $0, strlen($0)) }
        guard n == text.utf8.count else { throw TestFailure("crashfs refused '\(text)'") }
    }

    struct Status {
        var state = ""
        var steps = 0
        var writes = 0
        var at = ""
    }

    func status() -> Status {
        guard let text = try? String(contentsOfFile: control, encoding: .utf8) else { return Status() }
        var s = Status()
        for field in text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ", maxSplits: 3) {
            let kv = field.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { continue }
            switch kv[0] {
            case "state": s.state = kv[1]
            case "steps": s.steps = Int(kv[1]) ?? 0
            case "writes": s.writes = Int(kv[1]) ?? 0
            case "at": s.at = kv[1]
            default: break
            }
        }
        return s
    }

    /// Makes everything on the disk durable (after a test has set up a chain there).
    func sync() throws { try command("sync") }

    /// A power cut now, between commands: what was not made durable is lost.
    func powerCut() throws {
        try command("crash powercut")
        try command("resume")
    }

    enum Crash: String { case powercut, kill }

    /// Starts strata `args` with the disk armed at the `n`th `kind`, and waits until it stands still there (or
    /// ends first); returns the child and the disk's state then.
    func start(_ args: [String], stoppingAt kind: String, _ n: Int) throws -> (ChildProcess, Status) {
        try command("arm \(kind) \(n)")
        let child = try ChildProcess(strataBinary, args, deadline: 120)
        var state = status()
        while child.isRunning && state.state != "stopped" {
            usleep(1000)
            state = status()
        }
        return (child, state)
    }

    /// Runs strata `args`, stopping it at the `n`th `kind` ("steps" or "writes") and crashing there. Returns
    /// the operation it stopped at (`fsync /chain/...`, `rename ...`), or nil when strata finished first (then
    /// `finished` holds its result).
    func run(_ args: [String], stoppingAt kind: String, _ n: Int, crash: Crash, finished: inout Run?) throws -> String? {
        let (child, state) = try start(args, stoppingAt: kind, n)
        if state.state != "stopped" {
            try command("resume")
            let r = child.finish()
            XCTAssertFalse(r.timedOut, "strata \(args.joined(separator: " ")) hung")
            finished = Run(r)
            return nil
        }
        kill(child.pid, SIGKILL)
        try command("crash \(crash.rawValue)")  // answers the stopped step with EIO: the process can now die
        let r = child.finish()
        XCTAssertTrue(r.signalled && r.status == SIGKILL, "the crash at \(state.at) landed mid-run: \(r.stderr)")
        try command("resume")
        return state.at
    }
}
