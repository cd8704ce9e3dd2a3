// Whole command runs of the strata binary, as argument-parser's AssertExecuteCommand does: exact exit codes,
// one-line errors, --json output, and SIGKILL at random moments leaving a chain that restores every point.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

struct Run {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// The strata executable built beside this test bundle.
let strataBinary: String = {
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("strata").path,
        Bundle.main.bundleURL.appendingPathComponent("strata").path,
        Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("strata").path,
    ]
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[0]
}()

/// Starts strata with `args`, its output discarded (a child about to be killed must not block on a pipe).
func launch(_ args: [String]) throws -> ChildProcess { try ChildProcess(strataBinary, args, quiet: true) }

/// Runs strata to its end (within the deadline every test child has) and returns what it printed.
func strata(_ args: String...) throws -> Run { try strata(args) }

func strata(_ args: [String], deadline: Double = defaultDeadline) throws -> Run {
    let r = try ChildProcess(strataBinary, args, deadline: deadline).finish()
    XCTAssertFalse(r.timedOut, "strata \(args.joined(separator: " ")) did not finish within \(Int(deadline)) s and was killed")
    return Run(r)
}

extension Run {
    /// A finished child as the shell reports it: killed by signal N is 128 + N.
    init(_ r: ProcessResult) {
        self.init(status: r.signalled ? 128 + r.status : r.status, stdout: r.stdout, stderr: r.stderr)
    }
}

/// Every file of a chain but its lock, by name: to show a command left the chain untouched.
func chainFiles(_ chain: String) throws -> [String: Data] {
    var out: [String: Data] = [:]
    for name in try FileManager.default.contentsOfDirectory(atPath: chain) where name != ".lock" {
        out[name] = try Data(contentsOf: URL(fileURLWithPath: "\(chain)/\(name)"))
    }
    return out
}

func makeDisk(_ path: String, size: Int, seed: UInt8, changes: Int = 0) throws {
    var bytes = [UInt8](repeating: 0, count: size)
    for i in 0..<(size / 2) { bytes[i] = UInt8(truncatingIfNeeded: i / 4096 &+ Int(seed) &* (i % 13 == 0 ? 7 : 1)) }
    var state = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 | 1
    for _ in 0..<changes {
        state = state &* 6_364_136_223_846_793_005 &+ 1
        let at = Int(state >> 20) % (size - 4096)
        for k in 0..<4096 { bytes[at + k] = UInt8(truncatingIfNeeded: Int(state >> 8) &+ k) }
    }
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// A fresh directory under the system's temporary directory, for one test.
func scratchDirectory(_ prefix: String) throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

final class CLITests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = try scratchDirectory("strata-cli")
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: strataBinary), "strata binary at \(strataBinary)")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testCaptureListRestoreWithJSON() throws {
        try makeDisk("\(dir)/disk", size: 4 << 20, seed: 1)
        let first = try strata("capture", "\(dir)/disk", "\(dir)/chain", "--json")
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertEqual(first.stderr, "", "quiet when stderr is not a terminal")
        let j = try JSONSerialization.jsonObject(with: Data(first.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(j["point"] as? Int, 1)
        XCTAssertEqual(j["kind"] as? String, "full")
        XCTAssertEqual(j["sourceBytes"] as? Int, 4 << 20)
        XCTAssertEqual(j["bytesRead"] as? Int, 4 << 20)
        XCTAssertEqual(j["blocksChanged"] as? Int, 1024)
        XCTAssertNotNil(j["bytesStored"] as? Int)
        XCTAssertNotNil(j["seconds"] as? Double)

        try makeDisk("\(dir)/disk", size: 4 << 20, seed: 1, changes: 3)
        let second = try strata("capture", "\(dir)/disk", "\(dir)/chain", "--json")
        let k = try JSONSerialization.jsonObject(with: Data(second.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(k["point"] as? Int, 2)
        XCTAssertEqual(k["kind"] as? String, "incremental")
        XCTAssertEqual(k["blocksChanged"] as? Int, 6, "three unaligned 4 KiB writes touch six blocks")

        let list = try strata("list", "\(dir)/chain", "--json")
        let l = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as! [String: Any]
        XCTAssertEqual((l["points"] as! [[String: Any]]).map { $0["point"] as! Int }, [1, 2])
        let text = try strata("list", "\(dir)/chain")
        XCTAssertTrue(text.stdout.contains("incremental"), text.stdout)

        let restore = try strata("restore", "\(dir)/chain", "\(dir)/out", "--force", "--point", "2", "--quiet")
        XCTAssertEqual(restore.status, 0, restore.stderr)
        XCTAssertEqual(restore.stdout, "")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk")))
    }

    /// `--seekable` makes a chain whose images have the sub-frames feature bit (FORMAT.md: header byte 16, bit 3);
    /// a capture without the flag follows the chain, `--no-seekable` stops it; every point restores.
    func testSeekableChains() throws {
        func seekable(_ image: String) throws -> Bool { try Data(contentsOf: URL(fileURLWithPath: "\(dir)/chain/\(image)"))[16] & 0x08 != 0 }
        try makeDisk("\(dir)/disk", size: 4 << 20, seed: 2)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", "\(dir)/chain", "--seekable", "--quiet").status, 0)
        try FileManager.default.copyItem(atPath: "\(dir)/disk", toPath: "\(dir)/disk1")
        try makeDisk("\(dir)/disk", size: 4 << 20, seed: 2, changes: 5)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", "\(dir)/chain", "--quiet").status, 0)
        try makeDisk("\(dir)/disk", size: 4 << 20, seed: 2, changes: 9)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", "\(dir)/chain", "--no-seekable", "--quiet").status, 0)
        XCTAssertEqual(try [1, 2, 3].map { try seekable(String(format: "p%06d.strata", $0)) }, [true, true, false])
        for (point, disk) in [(1, "disk1"), (3, "disk")] {
            let r = try strata("restore", "\(dir)/chain", "\(dir)/out", "--force", "--point", "\(point)", "--quiet")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(disk)")))
        }
        let help = try strata("capture", "--help")
        XCTAssertTrue(help.stdout.contains("--seekable/--no-seekable"), help.stdout)
    }

    func testExitCodesAndOneLineErrors() throws {
        let missing = try strata("capture", "\(dir)/nope", "\(dir)/chain")
        XCTAssertEqual(missing.status, 66)
        XCTAssertEqual(missing.stderr, "strata: error: cannot read source \(dir)/nope: No such file or directory; check the path and your permissions\n")

        let notChain = try strata("restore", "\(dir)", "\(dir)/out")
        XCTAssertEqual(notChain.status, 65)
        XCTAssertEqual(notChain.stderr, "strata: error: \(dir) is not a Strata chain (no chain.manifest); name the directory of an existing chain\n")

        try makeDisk("\(dir)/disk", size: 1 << 20, seed: 2)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", "\(dir)/chain", "--quiet").status, 0)
        let point = try strata("restore", "\(dir)/chain", "\(dir)/out", "--force", "--point", "5")
        XCTAssertEqual(point.status, 64)
        XCTAssertEqual(point.stderr, "strata: error: point 5 does not exist in this chain; available points: 1\n")

        let blockSize = try strata("capture", "\(dir)/disk", "\(dir)/chain2", "--block-size", "3000")
        XCTAssertEqual(blockSize.status, 64)
        XCTAssertEqual(blockSize.stderr, "strata: error: block size 3000 is not a power of two between 512 and 1048576\n")

        let usage = try strata("capture")
        XCTAssertEqual(usage.status, 64, "argument-parser's usage error")
    }

    func testHelpDocumentsExitCodes() throws {
        let help = try strata("--help")
        XCTAssertEqual(help.status, 0)
        XCTAssertTrue(help.stdout.contains("EXIT STATUS"))
        XCTAssertTrue(help.stdout.contains("75  the chain is being changed by another strata process"))
        let capture = try strata("capture", "--help")
        XCTAssertTrue(capture.stdout.contains("--io-engine"))
        XCTAssertTrue(capture.stdout.contains("--queue-depth"))
    }

    // MARK: SIGKILL at chosen moments

    /// Kill points over a run that makes `writes` write calls and `steps` durability steps: every step, and
    /// writes spread from the first to the last (so the frames, the hash map and the manifest are each hit).
    private func killPoints(writes: Int, steps: Int) -> [(kind: String, n: Int)] {
        let spread = Set([1, writes / 8, writes / 4, writes * 3 / 8, writes / 2, writes * 5 / 8, writes * 3 / 4, writes * 7 / 8, writes - 1, writes].filter { $0 >= 1 })
        return spread.sorted().map { ("writes", $0) } + (1...max(1, steps)).map { ("steps", $0) }
    }

    /// Counts the writes and durability steps of `args` run against a copy of `chain` on the same disk.
    private func measure(_ disk: CrashDisk, chain: String, _ args: (String) -> [String]) throws -> (writes: Int, steps: Int) {
        let probe = "\(disk.mountPoint)/probe"
        try? FileManager.default.removeItem(atPath: probe)
        try FileManager.default.copyItem(atPath: chain, toPath: probe)
        try disk.command("count")
        XCTAssertEqual(try strata(args(probe)).status, 0)
        let s = disk.status()
        try FileManager.default.removeItem(atPath: probe)
        return (s.writes, s.steps)
    }

    /// SIGKILL a capture at every durability step and at writes spread over the whole run, each kill asserted to
    /// land mid-run, each round from the same two-point chain: afterwards the chain holds either the old points or
    /// the new one, and every point restores bit for bit; the next run cleans up and captures normally.
    func testKilledCapturesLeaveARestorableChain() throws {
        if let reason = CrashDisk.unavailableReason() { throw XCTSkip(reason) }
        let disk = try CrashDisk(in: dir)
        let size = 8 << 20
        let chain = "\(disk.mountPoint)/chain"
        var states: [Data] = []
        for night in 0..<2 {
            try makeDisk("\(dir)/disk", size: size, seed: 3, changes: 50 * night)
            XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
            states.append(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk")))
        }
        let pristine = "\(dir)/pristine"
        try FileManager.default.copyItem(atPath: chain, toPath: pristine)
        try makeDisk("\(dir)/disk", size: size, seed: 3, changes: 100)
        states.append(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk")))
        let run = try measure(disk, chain: chain) { ["capture", "\(dir)/disk", $0, "--quiet"] }
        var hit: [String] = []
        for point in killPoints(writes: run.writes, steps: run.steps) {
            try FileManager.default.removeItem(atPath: chain)
            try FileManager.default.copyItem(atPath: pristine, toPath: chain)
            var finished: Run?
            let at = try disk.run(["capture", "\(dir)/disk", chain, "--quiet"], stoppingAt: point.kind, point.n, crash: .kill, finished: &finished)
            XCTAssertNotNil(at, "the kill at \(point.kind) \(point.n) of \(run) landed mid-run")
            hit.append(at ?? "")
            let points = try pointList(chain)
            XCTAssertTrue(points == [1, 2] || points == [1, 2, 3], "a killed capture adds its point whole or not at all: \(points) after \(at ?? "-")")
            for p in points {
                let r = try strata("restore", chain, "\(dir)/out", "--force", "--point", "\(p)", "--quiet")
                XCTAssertEqual(r.status, 0, r.stderr)
                XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), states[p - 1], "killed at \(at ?? "-"): point \(p)")
            }
        }
        XCTAssertTrue(hit.contains { $0.hasPrefix("write") && $0.contains("-p000003.strata") }, "a kill while the image was written: \(hit)")
        XCTAssertTrue(hit.contains { $0.hasPrefix("write") && $0.contains("-map-p000003.strata") }, "a kill while the hash map was written: \(hit)")
        XCTAssertTrue(hit.contains { $0.hasPrefix("rename") && $0.hasSuffix("/chain/chain.manifest") }, "a kill at the commit: \(hit)")
        // The last round left whatever it left: the next run cleans up and captures normally.
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasPrefix(".strata-tmp-") }, [])
        XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0)
        for (i, state) in states.enumerated() {
            let r = try strata("restore", chain, "\(dir)/out", "--force", "--point", "\(i + 1)", "--quiet")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), state, "point \(i + 1)")
        }
    }

    /// `restore --delta` killed at writes spread over its run: the target is part old, part new; the same command
    /// run again gives exactly the point and writes exactly the blocks still different (counted here from the
    /// target as the kill left it). --json carries the delta's counts.
    func testKilledDeltaRestoreFinishesOnTheNextRun() throws {
        if let reason = CrashDisk.unavailableReason() { throw XCTSkip(reason) }
        let disk = try CrashDisk(in: dir)
        let chain = "\(dir)/chain"
        var states: [[UInt8]] = []
        for night in 0..<2 {
            try makeDisk("\(dir)/disk", size: 16 << 20, seed: 5, changes: 600 * night)
            XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
            states.append([UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk"))))
        }
        func differing(_ a: [UInt8], _ b: [UInt8]) -> Int {
            stride(from: 0, to: a.count, by: 4096).filter { a[$0..<($0 + 4096)] != b[$0..<($0 + 4096)] }.count
        }
        let target = "\(disk.mountPoint)/vm.img"
        let delta = ["restore", chain, target, "--point", "2", "--delta", "--force", "--quiet"]
        XCTAssertEqual(try strata("restore", chain, target, "--point", "1", "--quiet").status, 0)
        try disk.command("count")
        XCTAssertEqual(try strata(delta).status, 0)
        let writes = disk.status().writes
        XCTAssertGreaterThan(writes, 4, "the delta makes several writes")
        let all = differing(states[0], states[1])
        var partial = 0
        for n in [1, writes / 4, writes / 2, writes * 3 / 4, writes - 1] where n >= 1 {
            XCTAssertEqual(try strata("restore", chain, target, "--point", "1", "--force", "--quiet").status, 0)
            var finished: Run?
            let at = try disk.run(delta, stoppingAt: "writes", n, crash: .kill, finished: &finished)
            XCTAssertNotNil(at, "the kill at write \(n) of \(writes) landed mid-run")
            let left = [UInt8](try Data(contentsOf: URL(fileURLWithPath: target)))
            XCTAssertEqual(left.count, states[1].count, "the target has the point's length from the start")
            let still = differing(left, states[1])
            if still > 0 && still < all { partial += 1 }
            let again = try strata(delta.filter { $0 != "--quiet" } + ["--json"])
            XCTAssertEqual(again.status, 0, again.stderr)
            let report = try JSONSerialization.jsonObject(with: Data(again.stdout.utf8)) as? [String: Any] ?? [:]
            XCTAssertEqual(report["blocksDiffering"] as? Int, still, "killed at \(at ?? "-"): the second run finds what was left")
            XCTAssertEqual(report["bytesWritten"] as? Int, still * 4096)
            XCTAssertEqual(report["bytesCompared"] as? Int, 16 << 20)
            XCTAssertTrue([UInt8](try Data(contentsOf: URL(fileURLWithPath: target))) == states[1], "killed at \(at ?? "-"): then point 2 exactly")
        }
        XCTAssertGreaterThan(partial, 1, "kills left the target part written")
    }

    /// A restore killed at writes spread over its run (the target on the crash disk) leaves the chain untouched:
    /// the next restore works.
    func testKilledRestoreLeavesChainIntact() throws {
        if let reason = CrashDisk.unavailableReason() { throw XCTSkip(reason) }
        let disk = try CrashDisk(in: dir)
        try makeDisk("\(dir)/disk", size: 16 << 20, seed: 4)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", "\(dir)/chain", "--quiet").status, 0)
        let files = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/chain").sorted()
        let target = "\(disk.mountPoint)/out"
        try disk.command("count")
        XCTAssertEqual(try strata("restore", "\(dir)/chain", target, "--quiet").status, 0)
        let writes = disk.status().writes
        for n in [1, writes / 4, writes / 2, writes * 3 / 4, writes] where n >= 1 {
            var finished: Run?
            let at = try disk.run(["restore", "\(dir)/chain", target, "--force", "--quiet"], stoppingAt: "writes", n, crash: .kill, finished: &finished)
            XCTAssertNotNil(at, "the kill at write \(n) of \(writes) landed mid-run")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/chain").sorted(), files)
        XCTAssertEqual(try strata("restore", "\(dir)/chain", "\(dir)/out", "--force", "--quiet").status, 0)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk")))
    }

    /// SIGKILL merges and prunes at every durability step and at writes spread over each run, each kill landing
    /// mid-run: the chain then holds the old points or the new ones, and every point it lists restores bit for bit.
    func testKilledMergesLeaveARestorableChain() throws {
        if let reason = CrashDisk.unavailableReason() { throw XCTSkip(reason) }
        let disk = try CrashDisk(in: dir)
        let size = 16 << 20
        let chain = "\(disk.mountPoint)/chain"
        var states: [Int: Data] = [:]
        for night in 0..<7 {
            try makeDisk("\(dir)/disk", size: size, seed: 5, changes: 40 * night)
            XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
            states[night + 1] = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk"))
        }
        let pristine = "\(dir)/pristine"
        try FileManager.default.copyItem(atPath: chain, toPath: pristine)
        for args in [["merge", "--from", "2", "--to", "5"], ["prune", "--keep", "3"]] {
            let command = { (c: String) in [args[0], c] + args.dropFirst() + ["--quiet"] }
            let run = try measure(disk, chain: chain, command)
            for point in killPoints(writes: run.writes, steps: run.steps) {
                try FileManager.default.removeItem(atPath: chain)
                try FileManager.default.copyItem(atPath: pristine, toPath: chain)
                let before = try pointList(chain)
                var finished: Run?
                let at = try disk.run(command(chain), stoppingAt: point.kind, point.n, crash: .kill, finished: &finished)
                XCTAssertNotNil(at, "\(args[0]): the kill at \(point.kind) \(point.n) of \(run) landed mid-run")
                let now = try pointList(chain)
                XCTAssertTrue(Set(now).isSubset(of: Set(before)), "no new points appear")
                XCTAssertEqual(now.last, before.last, "the newest point survives any merge")
                XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0, "\(args[0]) killed at \(at ?? "-")")
                for p in now {
                    let r = try strata("restore", chain, "\(dir)/out", "--force", "--point", "\(p)", "--quiet")
                    XCTAssertEqual(r.status, 0, r.stderr)
                    XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), states[p], "\(args[0]) killed at \(at ?? "-"): point \(p)")
                }
                XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0, "the next command cleans up and works")
                XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasPrefix(".strata-tmp-") }, [])
            }
        }
    }

    private func pointList(_ chain: String) throws -> [Int] {
        let list = try strata("list", chain, "--json")
        XCTAssertEqual(list.status, 0, list.stderr)
        return (jsonObject(list.stdout)["points"] as? [[String: Any]] ?? []).map { $0["point"] as! Int }
    }
}
