// Reflink deltas on real loop filesystems (XFS with reflink, btrfs): nights of writes by offset, O_DIRECT
// writes, hole punching and quiet nights, captured with --snapshot reflink, read only what changed and restore
// exactly; a NOCOW file on btrfs; a killed run's clone before and after its commit; a baseline changed since,
// missing or in a directory others can open.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class ReflinkDeltaTests: XCTestCase {
    var dir = ""
    var loops: [String] = []

    override func setUpWithError() throws {
        if getuid() != 0 { throw XCTSkip("loop devices and mounts need root") }
        if toolOutput(["sh", "-c", "losetup -f"]).isEmpty { throw XCTSkip("this machine has no free loop device") }
        dir = try scratchDirectory("strata-reflink")
    }

    override func tearDown() {
        for line in (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8))?.split(separator: "\n").reversed() ?? [] {
            let f = line.split(separator: " ")
            if f.count > 1, f[1].hasPrefix(dir) { runTool("/usr/bin/env", ["umount", "-l", String(f[1])]) }
        }
        for loop in loops.reversed() { runTool("/usr/bin/env", ["losetup", "-d", loop]) }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// An XFS (reflink=1) or btrfs filesystem on a loop device, mounted at `dir/type`; returns the mount point.
    private func host(_ type: String) throws -> String {
        if toolOutput(["sh", "-c", "command -v mkfs.\(type)"]).isEmpty { throw XCTSkip("mkfs.\(type) is not installed (Tools/setup installs it)") }
        let image = "\(dir)/\(type).fs", mountPoint = "\(dir)/\(type)"
        XCTAssertEqual(runTool("/usr/bin/env", ["truncate", "-s", "400M", image]), 0)
        let env = ["TEST_DIR=1", "TEST_DEV=1", "QA_CHECK_FS=1"]  // xfsprogs refuses filesystems under 300 MB unless told it is a test
        let mkfs = type == "xfs" ? ["mkfs.xfs", "-f", "-q", "-m", "reflink=1"] : ["mkfs.btrfs", "-f", "-q"]
        XCTAssertEqual(runTool("/usr/bin/env", env + mkfs + [image]), 0)
        let loop = toolOutput(["losetup", "-f", "--show", image])
        XCTAssertTrue(loop.hasPrefix("/dev/loop"), loop)
        loops.append(loop)
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        XCTAssertEqual(runTool("/usr/bin/env", ["mount", loop, mountPoint]), 0)
        return mountPoint
    }

    private func sh(_ script: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(runTool("/usr/bin/env", ["sh", "-c", script]), 0, script, file: file, line: line)
    }

    /// A capture with --snapshot reflink: its JSON.
    private func capture(_ image: String, _ chain: String, _ extra: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let r = try strata(["capture", image, chain, "--snapshot", "reflink", "--json", "--check-unchanged", "0"] + extra)
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        return jsonObject(r.stdout)
    }

    private func restores(_ chain: String, point: Int, to expected: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try strata("restore", chain, "\(dir)/out.img", "--point", String(point), "--force", "--quiet")
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        XCTAssertTrue(
            FileManager.default.contentsEqual(atPath: "\(dir)/out.img", andPath: expected), "point \(point) is not \(expected)", file: file, line: line)
    }

    /// A process id no process has (a child that has exited).
    private func deadPID() -> Int32 {
        let c = runProcess("/bin/sh", ["-c", "echo $$"])
        return Int32(c.stdout.trimmingCharacters(in: .whitespacesAndNewlines))!
    }

    func testNightsReadOnlyWhatChangedAndRestoreExactly() throws {
        for type in ["xfs", "btrfs"] {
            let m = try host(type)
            let image = "\(m)/vm.img", chain = "\(dir)/\(type)-chain"
            sh("head -c 32M /dev/urandom > \(image) && dd if=/dev/zero of=\(image) bs=1M seek=20 count=4 conv=notrunc status=none")
            let nights: [String] = [
                "dd if=/dev/urandom of=\(image) bs=4k count=3 seek=100 conv=notrunc status=none && dd if=/dev/urandom of=\(image) bs=1 count=10 seek=7000000 conv=notrunc status=none",
                "dd if=/dev/urandom of=\(image) bs=4k count=8 seek=5000 conv=notrunc oflag=direct status=none",
                "fallocate -p -o 8388608 -l 262144 \(image)",
                "true",
                "dd if=/dev/urandom of=\(image) bs=64k count=2 seek=330 conv=notrunc status=none",
            ]
            let first = try capture(image, chain)
            XCTAssertEqual(first["changeSource"] as? String, "scan", "\(type): a first capture scans")
            sh("cp --reflink=never \(image) \(dir)/\(type)-1.img")
            for (n, write) in nights.enumerated() {
                sh(write)
                let r = try capture(image, chain)
                XCTAssertEqual(r["changeSource"] as? String, "reflink", "\(type) night \(n + 1): \(r)")
                XCTAssertLessThanOrEqual(r["bytesRead"] as? Int ?? .max, 1 << 20, "\(type) night \(n + 1): only what changed is read")
                sh("cp --reflink=never \(image) \(dir)/\(type)-\(n + 2).img")
            }
            for point in 1...nights.count + 1 { try restores(chain, point: point, to: "\(dir)/\(type)-\(point).img") }
            let list = jsonObject(try strata("list", chain, "--json").stdout)
            let sources = (list["points"] as? [[String: Any]] ?? []).compactMap { $0["changeSource"] as? String }
            XCTAssertEqual(sources, ["scan"] + Array(repeating: "reflink", count: nights.count))
            let baselines = try FileManager.default.contentsOfDirectory(atPath: "\(m)/.strata-baselines")
            XCTAssertEqual(baselines.count, 1, "one baseline, named by the chain: \(baselines)")
            XCTAssertTrue(baselines[0].hasSuffix("-vm.img"))
            let mode = (try FileManager.default.attributesOfItem(atPath: "\(m)/.strata-baselines")[.posixPermissions] as? Int) ?? 0
            XCTAssertEqual(mode, 0o700)
            XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0)
            // --rescan reads everything, and still agrees.
            let rescan = try capture(image, chain, ["--rescan"])
            XCTAssertEqual(rescan["changeSource"] as? String, "rescan")
            XCTAssertEqual(rescan["blocksChanged"] as? Int, 0)
        }
    }

    /// A chain of used blocks with reflink deltas: an ext4 in an image file on XFS, over nights of files written and
    /// deleted and a file fallocated (blocks taken without a write: their stale bytes must be read though the image
    /// file did not change there). Each night reads only what changed and what turned used, and its point restores
    /// byte for byte as a full capture of used blocks of that night's image does; a night sampling every kept block
    /// (`--check-unchanged 100`) finds them all as the map has them.
    func testAChainOfUsedBlocksReadsOnlyWhatChangedAndWhatTurnedUsed() throws {
        let m = try host("xfs")
        let image = "\(m)/vm.img", chain = "\(dir)/chain", fs = "\(dir)/fs"
        sh("head -c 64M /dev/urandom > \(image) && mkfs.ext4 -q -F -E nodiscard \(image) && mkdir -p \(fs)")
        func inside(_ script: String) {
            sh("mount -o loop \(image) \(fs) && (cd \(fs) && \(script)) && umount \(fs)")
        }
        inside("for i in 1 2 3 4 5 6 7 8 9 10; do head -c 2000000 /dev/urandom > f$i; done; sync; rm f2 f4 f6 f8")
        let first = try capture(image, chain, ["--used-blocks"])
        XCTAssertEqual(first["changeSource"] as? String, "scan")
        let usedBytes = (first["usedBlocks"] as? [String: Any])?["usedBytes"] as? Int ?? 0
        XCTAssertGreaterThan(usedBytes, 12 << 20)
        sh("cp --reflink=never \(image) \(dir)/night-1.img")
        let nights = [
            "head -c 300000 /dev/urandom > n2; rm f3; head -c 5000 /dev/urandom >> f1",
            "fallocate -l 3M taken; rm f5",
            "true",
        ]
        for (n, script) in nights.enumerated() {
            inside(script)
            let r = try capture(image, chain)
            XCTAssertEqual(r["changeSource"] as? String, "reflink", "night \(n + 2): \(r)")
            // What changed (and, night 3, the 3 MB fallocated), far from every used block.
            XCTAssertLessThan(r["bytesRead"] as? Int ?? .max, 5 << 20, "night \(n + 2): only what changed is read")
            sh("cp --reflink=never \(image) \(dir)/night-\(n + 2).img")
        }
        let sampled = try capture(image, chain, ["--check-unchanged", "100"])
        XCTAssertEqual(sampled["changeSource"] as? String, "reflink", "every kept block sampled, none missed: \(sampled)")
        XCTAssertNil(sampled["missedChangeAt"] as? Int)
        XCTAssertEqual(sampled["blocksChanged"] as? Int, 0)
        sh("cp --reflink=never \(image) \(dir)/night-5.img")
        for point in 1...5 {
            // The oracle: a full capture of used blocks of that night's image, restored.
            let fresh = "\(dir)/fresh-\(point)"
            XCTAssertEqual(try strata("capture", "\(dir)/night-\(point).img", fresh, "--used-blocks", "--quiet").status, 0)
            XCTAssertEqual(try strata("restore", fresh, "\(dir)/expected.img", "--force", "--quiet").status, 0)
            try restores(chain, point: point, to: "\(dir)/expected.img")
        }
        // The fallocated file's blocks kept their stale bytes (read, though the image file did not change there).
        sh("mount -o loop,ro \(dir)/out.img \(fs) && filefrag -v \(fs)/taken | grep -q unwritten; umount \(fs)")
        XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0)
    }

    func testANoCopyOnWriteFileOnBtrfs() throws {
        let m = try host("btrfs")
        let image = "\(m)/nocow.img", chain = "\(dir)/chain"
        sh("touch \(image) && chattr +C \(image) && head -c 16M /dev/urandom >> \(image)")
        XCTAssertTrue(toolOutput(["lsattr", image]).contains("C"))
        XCTAssertEqual(try capture(image, chain)["changeSource"] as? String, "scan")
        // An in-place overwrite of a NOCOW file: its extent is shared with the baseline, so it is copied anyway.
        sh("dd if=/dev/urandom of=\(image) bs=4k count=2 seek=77 conv=notrunc status=none && sync")
        let r = try capture(image, chain)
        XCTAssertEqual(r["changeSource"] as? String, "reflink")
        XCTAssertEqual(r["blocksChanged"] as? Int, 2)
        try restores(chain, point: 2, to: image)
    }

    func testKilledRunsBaselinesAndStaleRecords() throws {
        let m = try host("xfs")
        let image = "\(m)/vm.img", chain = "\(dir)/chain", baselines = "\(m)/.strata-baselines"
        sh("head -c 16M /dev/urandom > \(image)")
        _ = try capture(image, chain)
        func baseline() throws -> String { "\(baselines)/" + (try FileManager.default.contentsOfDirectory(atPath: baselines).first { !$0.hasPrefix("next-") } ?? "none") }

        // Killed between the commit and the rename: the committed clone is still next-PID-NAME. The next run
        // finds it by the manifest's record and uses it.
        sh("dd if=/dev/urandom of=\(image) bs=4k count=1 seek=10 conv=notrunc status=none")
        _ = try capture(image, chain)
        let pending = "\(baselines)/next-\(deadPID())-vm.img"
        XCTAssertEqual(rename(try baseline(), pending), 0)
        sh("dd if=/dev/urandom of=\(image) bs=4k count=1 seek=20 conv=notrunc status=none")
        var r = try capture(image, chain)
        XCTAssertEqual(r["changeSource"] as? String, "reflink")
        XCTAssertEqual(r["blocksChanged"] as? Int, 1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: pending))
        try restores(chain, point: 3, to: image)

        // Killed before its commit: its clone (of a later state) is left, the baseline still matches the newest
        // point. The next run removes the clone and reads what changed since the baseline.
        sh("dd if=/dev/urandom of=\(image) bs=4k count=1 seek=30 conv=notrunc status=none")
        let stale = "\(baselines)/next-\(deadPID())-vm.img"
        sh("cp --reflink=always \(image) \(stale)")
        sh("dd if=/dev/urandom of=\(image) bs=4k count=1 seek=40 conv=notrunc status=none")
        r = try capture(image, chain)
        XCTAssertEqual(r["changeSource"] as? String, "reflink")
        XCTAssertEqual(r["blocksChanged"] as? Int, 2)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale))
        try restores(chain, point: 4, to: image)

        // A baseline written to since: not trusted, the capture scans (and says why).
        sh("dd if=/dev/urandom of=\(try baseline()) bs=4k count=1 seek=50 conv=notrunc status=none")
        sh("dd if=/dev/urandom of=\(image) bs=4k count=1 seek=60 conv=notrunc status=none")
        var run = try strata("capture", image, chain, "--snapshot", "reflink", "--json")
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stderr.contains("changed since point 4 was captured: scanning the whole source"), run.stderr)
        XCTAssertEqual(jsonObject(run.stdout)["changeSource"] as? String, "scan")
        XCTAssertEqual(jsonObject(run.stdout)["blocksChanged"] as? Int, 1)
        try restores(chain, point: 5, to: image)

        // Missing, with --require-change-source: exit 69, nothing written.
        XCTAssertEqual(unlink(try baseline()), 0)
        let manifest = try Data(contentsOf: URL(fileURLWithPath: "\(chain)/chain.manifest"))
        run = try strata("capture", image, chain, "--snapshot", "reflink", "--require-change-source")
        XCTAssertEqual(run.status, 69, run.stderr)
        XCTAssertTrue(run.stderr.hasPrefix("strata: error: cannot read only what changed: the reflink baseline \(baselines)/"), run.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(chain)/chain.manifest")), manifest)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: baselines), [], "the run's clone is gone too")

        // A baseline directory others can open is refused, not used.
        XCTAssertEqual(chmod(baselines, 0o755), 0)
        run = try strata("capture", image, chain, "--snapshot", "reflink")
        XCTAssertEqual(run.status, 69, run.stderr)
        XCTAssertEqual(run.stderr, "strata: error: cannot snapshot \(image): \(baselines) is not a directory only this user can open; nothing was read: remove it (it holds only Strata's reflink baselines), or make it yours and 0700\n")
    }
}
