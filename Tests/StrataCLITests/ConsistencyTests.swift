// Consistent images of filesystems in use, on real loop devices, ext4, xfs and XFS reflinks: --freeze under a
// concurrent writer gives an fsck-clean image; strata killed with SIGKILL while the filesystem is frozen leaves
// it thawed (its guardian thaws it) and writable; --snapshot reflink of an image file being written gives the
// file as it was at one instant, with or without --freeze of the filesystem inside it, and leaves no clone after
// success, failure or SIGKILL (the next run removes it); what cannot be done is refused before anything is read.
// A chain of used blocks of a frozen filesystem reads the kernel's map of its used space (FS_IOC_GETFSMAP).
// How fast the thaw comes and how long a freeze lasts are measured by Tools/bench-freeze, not asserted here.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class ConsistencyTests: XCTestCase {
    var dir = ""
    var loops: [String] = []
    var children: [ChildProcess] = []

    override func setUpWithError() throws {
        if getuid() != 0 { throw XCTSkip("freezing and loop devices need root") }
        if toolOutput(["sh", "-c", "losetup -f"]).isEmpty { throw XCTSkip("this machine has no free loop device") }
        if toolOutput(["sh", "-c", "command -v mkfs.xfs"]).isEmpty { throw XCTSkip("mkfs.xfs is not installed (Tools/setup installs it)") }
        dir = try scratchDirectory("strata-consistency")
    }

    override func tearDown() {
        for c in children where c.isRunning { kill(c.pid, SIGKILL) }
        // Thaw and unmount whatever a failed test left, innermost first.
        for line in (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8))?.split(separator: "\n").reversed() ?? [] {
            let f = line.split(separator: " ")
            if f.count > 1, f[1].hasPrefix(dir) {
                runTool("/usr/bin/env", ["fsfreeze", "-u", String(f[1])])
                runTool("/usr/bin/env", ["umount", "-l", String(f[1])])
            }
        }
        for loop in loops.reversed() { runTool("/usr/bin/env", ["losetup", "-d", loop]) }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// A `type` filesystem in a file of `megabytes` at `image`, on a loop device, mounted at `mountPoint`.
    @discardableResult
    private func filesystem(_ type: String, megabytes: Int, image: String, mountPoint: String, reflink: Bool = false) throws -> String {
        XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: nil))
        XCTAssertEqual(truncate(image, off_t(megabytes) << 20), 0)
        let env = ["TEST_DIR=1", "TEST_DEV=1", "QA_CHECK_FS=1"]  // xfsprogs refuses filesystems under 300 MB unless told it is a test
        let options = type == "xfs" ? ["-f", "-q"] + (reflink ? ["-m", "reflink=1"] : []) : ["-F", "-q"]
        XCTAssertEqual(runTool("/usr/bin/env", env + ["mkfs.\(type)"] + options + [image]), 0)
        let loop = toolOutput(["losetup", "-f", "--show", image])
        XCTAssertTrue(loop.hasPrefix("/dev/loop"), loop)
        loops.append(loop)
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        XCTAssertEqual(runTool("/usr/bin/env", ["mount", loop, mountPoint]), 0)
        return loop
    }

    /// A process writing files into `mountPoint` until it is killed, syncing now and then.
    private func startWriter(_ mountPoint: String) throws {
        let script = "i=0; while :; do i=$((i+1)); head -c $(( (i % 37) * 1000 )) /dev/urandom > \(mountPoint)/f$((i % 23)); [ $((i % 40)) = 0 ] && sync; done"
        children.append(try ChildProcess("/bin/sh", ["-c", script], quiet: true))
    }

    /// Whether a file can be created in `mountPoint` now (a frozen filesystem makes this wait until it is thawed).
    private func writable(_ mountPoint: String) -> Bool {
        runProcess("/usr/bin/env", ["sh", "-c", "echo after > \(mountPoint)/after-kill && sync -f \(mountPoint)/after-kill"], deadline: 30).status == 0
    }

    /// Guardian processes alive (any strata freeze guardian on the machine).
    private func guardians() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
            let cmdline = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            return String(decoding: cmdline, as: UTF8.self).contains("__freeze-guardian\u{0}\(dir)")
        }
    }

    /// fsck of a restored image, read-only. XFS's freeze leaves its metadata in the log (complete, but to be
    /// replayed: what a clean crash leaves), so an XFS image is mounted once first, as a restore's user would.
    private func fsck(_ type: String, _ image: String) throws -> Int32 {
        guard type == "xfs" else { return runTool("/usr/bin/env", ["e2fsck", "-fn", image]) }
        let replay = "\(dir)/replay"
        try FileManager.default.createDirectory(atPath: replay, withIntermediateDirectories: true)
        XCTAssertEqual(runTool("/usr/bin/env", ["mount", "-o", "loop,nouuid", image, replay]), 0, "the image mounts (its log replays)")
        XCTAssertEqual(runTool("/usr/bin/env", ["umount", replay]), 0)
        return runTool("/usr/bin/env", ["xfs_repair", "-n", "-f", image])
    }

    func testFreezeGivesAnFsckCleanImageUnderAConcurrentWriter() throws {
        for type in ["ext4", "xfs"] {
            let m = "\(dir)/\(type)-m", chain = "\(dir)/\(type)-chain"
            let loop = try filesystem(type, megabytes: type == "xfs" ? 320 : 64, image: "\(dir)/\(type).img", mountPoint: m)
            try startWriter(m)
            usleep(200_000)
            let r = try strata("capture", loop, chain, "--freeze", m, "--json")
            XCTAssertEqual(r.status, 0, "\(type): \(r.stderr)")
            let frozen = try XCTUnwrap(jsonObject(r.stdout)["frozenSeconds"] as? Double, r.stdout)
            XCTAssertGreaterThan(frozen, 0)
            XCTAssertTrue(children.last!.isRunning, "the writer carries on")
            XCTAssertTrue(writable(m), "\(type): thawed after the capture")
            XCTAssertEqual(guardians(), [], "the guardian left")
            XCTAssertEqual(try strata("restore", chain, "\(dir)/restored.img", "--force", "--quiet").status, 0)
            XCTAssertEqual(try fsck(type, "\(dir)/restored.img"), 0, "\(type): the image of a frozen filesystem is clean")
            kill(children.last!.pid, SIGKILL)
            // Without --freeze, the same source is refused as mounted read-write.
            let refused = try strata("capture", loop, "\(dir)/\(type)-other", "--quiet")
            XCTAssertEqual(refused.status, 77, refused.stderr)
        }
    }

    /// A chain of used blocks of a mounted filesystem under --freeze, with a writer running: its map is the
    /// kernel's (FS_IOC_GETFSMAP), read while it is frozen, so the image is fsck-clean, holds every file written
    /// before the capture, and not the stale bytes of a deleted file (the capture read less than half the device).
    func testUsedBlocksOfAFrozenFilesystemComeFromTheKernelsMap() throws {
        for type in ["ext4", "xfs"] {
            let m = "\(dir)/\(type)-um", chain = "\(dir)/\(type)-uchain"
            let megabytes = type == "xfs" ? 320 : 64
            let loop = try filesystem(type, megabytes: megabytes, image: "\(dir)/\(type)-u.img", mountPoint: m)
            // Filled to 60% with random bytes, then deleted: stale data in the free space.
            let fill = "head -c \((megabytes * 6 / 10) << 20) /dev/urandom > \(m)/stale && sync && rm \(m)/stale && mkdir \(m)/kept"
                + " && for i in 1 2 3 4 5 6 7 8; do head -c $((i * 50000)) /dev/urandom > \(m)/kept/k$i; done && sync"
            XCTAssertEqual(runTool("/usr/bin/env", ["sh", "-c", fill]), 0)
            let kept = "\(dir)/\(type)-kept"
            XCTAssertEqual(runTool("/usr/bin/env", ["cp", "-a", "\(m)/kept", kept]), 0)
            try startWriter(m)
            usleep(200_000)
            let r = try strata("capture", loop, chain, "--freeze", m, "--used-blocks", "--json")
            XCTAssertEqual(r.status, 0, "\(type): \(r.stderr)")
            XCTAssertEqual(r.stderr, "", type)
            let report = jsonObject(r.stdout)
            let regions = (report["usedBlocks"] as? [String: Any])?["regions"] as? [[String: Any]]
            XCTAssertEqual(regions?.map { $0["method"] as? String }, ["fsmap"], type)
            XCTAssertEqual(regions?.map { $0["content"] as? String }, [type])
            XCTAssertLessThan(report["bytesRead"] as? Int ?? .max, (megabytes << 20) / 2, "\(type): the free space was read")
            XCTAssertTrue(children.last!.isRunning, "the writer carries on")
            kill(children.last!.pid, SIGKILL)
            XCTAssertTrue(writable(m), "\(type): thawed after the capture")
            XCTAssertEqual(guardians(), [], "the guardian left")

            let restored = "\(dir)/\(type)-restored.img"
            XCTAssertEqual(try strata("restore", chain, restored, "--quiet").status, 0)
            let count = "import sys; d = open(sys.argv[1], 'rb').read(); z = bytes(4096); print(sum(1 for i in range(0, len(d), 4096) if d[i:i + 4096] != z))"
            let nonzero = Int(toolOutput(["/usr/bin/python3", "-c", count, restored])) ?? .max
            XCTAssertLessThan(nonzero * 4096, (megabytes << 20) / 2, "\(type): the deleted file's stale bytes came back")
            XCTAssertEqual(try fsck(type, restored), 0, "\(type): the image of a frozen filesystem is clean")
            let check = "\(dir)/\(type)-check"
            try FileManager.default.createDirectory(atPath: check, withIntermediateDirectories: true)
            XCTAssertEqual(runTool("/usr/bin/env", ["mount", "-o", type == "xfs" ? "loop,ro,nouuid" : "loop,ro,noload", restored, check]), 0)
            let diff = runProcess("/usr/bin/env", ["diff", "-r", kept, "\(check)/kept"])
            runTool("/usr/bin/env", ["umount", check])
            XCTAssertEqual(diff.status, 0, "\(type): the files written before the capture: \(diff.stdout.prefix(300))")
        }
    }

    /// strata killed (SIGKILL) while the filesystem is frozen: its guardian thaws it. The capture's source is a disk
    /// that hangs half way (a FUSE fixture holding its reads), so the capture is certainly frozen mid-read when it is
    /// killed, however fast the machine.
    func testAKilledCaptureLeavesTheFilesystemThawed() throws {
        if let reason = FaultyDisk.unavailableReason() { throw XCTSkip(reason) }
        let backing = "\(dir)/hanging.img"
        try makeDisk(backing, size: 8 << 20, seed: 5)
        for type in ["ext4", "xfs"] {
            let m = "\(dir)/\(type)-m", chain = "\(dir)/\(type)-chain"
            _ = try filesystem(type, megabytes: type == "xfs" ? 320 : 64, image: "\(dir)/\(type).img", mountPoint: m)
            let disk = try FaultyDisk(backing: backing, bad: [], stalls: [(4 << 20, 4096)], in: dir)
            let capture = try launch(["capture", disk.path, chain, "--freeze", m])
            // The filesystem is frozen before the source is read; the capture reads up to the hanging range and waits.
            var waited = 0
            while !disk.stalled && capture.isRunning && waited < 30_000 {
                usleep(10_000)
                waited += 10
            }
            XCTAssertTrue(disk.stalled, "\(type): the capture reached the hanging range")
            XCTAssertTrue(capture.isRunning, "\(type): the capture waits on the hanging disk")
            XCTAssertFalse(guardians().isEmpty, "\(type): the guardian watches")
            // Frozen: a second freeze is refused at once (EBUSY), where a write would wait for the thaw.
            XCTAssertEqual(runTool("/usr/bin/env", ["fsfreeze", "-f", m]), 1, "\(type): frozen while the capture reads")
            kill(capture.pid, SIGKILL)
            disk.release()  // the read in flight ends, so the killed process can go
            _ = capture.finish()
            for _ in 0..<500 where !guardians().isEmpty { usleep(10_000) }  // a bounded wait for the guardian's thaw
            XCTAssertTrue(writable(m), "\(type): writable after strata was killed")
            XCTAssertEqual(guardians(), [], "\(type): the guardian thawed and left")
            XCTAssertEqual(runTool("/usr/bin/env", ["fsfreeze", "-u", m]), 1, "\(type): not frozen any more (fsfreeze -u fails)")
        }
    }

    /// 4 KiB blocks each stamped with the number of the write that last wrote it: write j (from 1) goes to block
    /// (j - 1) mod n. A copy taken at one instant is the state after some k writes, every block agreeing on k.
    private static let stampWriter = """
        import os, struct, sys
        fd = os.open(sys.argv[1], os.O_WRONLY)
        n = os.fstat(fd).st_size // 4096
        j = 0
        while True:
            j += 1
            os.pwrite(fd, struct.pack('<Q', j) * 512, ((j - 1) % n) * 4096)
        """

    private func checkOneInstant(_ bytes: Data, file: StaticString = #filePath, line: UInt = #line) {
        let n = bytes.count / 4096
        let stamps: [UInt64] = (0..<n).map { b in bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: b * 4096, as: UInt64.self) } }
        let k = stamps.max() ?? 0
        XCTAssertGreaterThan(k, 0, "the writer had written", file: file, line: line)
        var wrong = 0
        for b in 0..<n {
            let first = UInt64(b + 1)
            let expected = k >= first ? first + UInt64(n) * ((k - first) / UInt64(n)) : 0
            let block = bytes[(b * 4096)..<((b + 1) * 4096)]
            let uniform = block.withUnsafeBytes { raw in (0..<512).allSatisfy { raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self) == stamps[b] } }
            if stamps[b] != expected || !uniform { wrong += 1 }
        }
        XCTAssertEqual(wrong, 0, "blocks not as they were after write \(k)", file: file, line: line)
    }

    /// Clones a run is reading or a killed run left (the baseline kept for the next capture is not one).
    private func clones(in hostDir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: hostDir)) ?? []).filter { $0.hasPrefix(".strata-snapshot-") }
            + ((try? FileManager.default.contentsOfDirectory(atPath: "\(hostDir)/.strata-baselines")) ?? []).filter { $0.hasPrefix("next-") }
    }

    func testReflinkSnapshotOfAFileBeingWrittenIsOneInstant() throws {
        let host = "\(dir)/host"
        try filesystem("xfs", megabytes: 320, image: "\(dir)/host.img", mountPoint: host, reflink: true)
        let image = "\(host)/vm.img", chain = "\(dir)/chain"
        XCTAssertEqual(runTool("/usr/bin/env", ["truncate", "-s", "16M", image]), 0)
        children.append(try ChildProcess("/usr/bin/python3", ["-c", Self.stampWriter, image], quiet: true))
        usleep(300_000)
        for _ in 0..<2 {
            let r = try strata("capture", image, chain, "--snapshot", "reflink", "--json")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(jsonObject(r.stdout)["snapshot"] as? String, "reflink")
            XCTAssertEqual(clones(in: host), [], "the clone is removed after the capture")
            XCTAssertEqual(try strata("restore", chain, "\(dir)/restored.img", "--force", "--quiet").status, 0)
            checkOneInstant(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/restored.img")))
        }
        XCTAssertTrue(children.last!.isRunning)
        kill(children.last!.pid, SIGKILL)

        // A failure after the clone was made (the chain holds a source of another size): no clone left.
        XCTAssertEqual(runTool("/usr/bin/env", ["truncate", "-s", "8M", "\(host)/other.img"]), 0)
        let mismatch = try strata("capture", "\(host)/other.img", chain, "--snapshot", "reflink")
        XCTAssertEqual(mismatch.status, 65, mismatch.stderr)
        XCTAssertEqual(clones(in: host), [])
    }

    func testReflinkWithFreezeOfTheFilesystemInsideTheImage() throws {
        let host = "\(dir)/host", inner = "\(dir)/inner", chain = "\(dir)/chain"
        try filesystem("xfs", megabytes: 320, image: "\(dir)/host.img", mountPoint: host, reflink: true)
        try filesystem("ext4", megabytes: 64, image: "\(host)/web.img", mountPoint: inner)
        try startWriter(inner)
        usleep(200_000)
        let r = try strata("capture", "\(host)/web.img", chain, "--snapshot", "reflink", "--freeze", inner, "--json")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertNotNil(jsonObject(r.stdout)["frozenSeconds"] as? Double, r.stdout)
        XCTAssertEqual(clones(in: host), [])
        XCTAssertEqual(guardians(), [])
        XCTAssertTrue(writable(inner))
        XCTAssertEqual(try strata("restore", chain, "\(dir)/restored.img", "--force", "--quiet").status, 0)
        XCTAssertEqual(try fsck("ext4", "\(dir)/restored.img"), 0)

        // Freezing the filesystem that holds the image would stop the clone itself: refused.
        let wrong = try strata("capture", "\(host)/web.img", chain, "--snapshot", "reflink", "--freeze", host)
        XCTAssertEqual(wrong.status, 69)
        XCTAssertEqual(wrong.stderr, "strata: error: cannot freeze the filesystem at \(host): it holds \(host)/web.img itself, and the clone would wait for the thaw; nothing was read: name the filesystem inside the image (where it is mounted from a loop device), which the freeze makes consistent\n")
    }

    func testAKilledSnapshotCaptureLeavesAClonePointTheNextRunRemoves() throws {
        let host = "\(dir)/host", chain = "\(dir)/chain"
        try filesystem("xfs", megabytes: 320, image: "\(dir)/host.img", mountPoint: host, reflink: true)
        let image = "\(host)/vm.img"
        XCTAssertEqual(runTool("/usr/bin/env", ["sh", "-c", "head -c 48M /dev/urandom > \(image)"]), 0)
        let capture = try launch(["capture", image, chain, "--snapshot", "reflink", "--level", "19", "--threads", "1"])
        var waited = 0
        while clones(in: host).isEmpty && capture.isRunning && waited < 3000 {
            usleep(10_000)
            waited += 10
        }
        XCTAssertEqual(clones(in: host).count, 1)
        kill(capture.pid, SIGKILL)
        _ = capture.finish()
        XCTAssertEqual(clones(in: host).count, 1, "a killed run cannot remove its clone")
        let next = try strata("capture", image, chain)
        XCTAssertEqual(next.status, 0, next.stderr)
        XCTAssertTrue(next.stderr.contains("a snapshot a killed run left"), next.stderr)
        XCTAssertEqual(clones(in: host), [])
    }

    func testWhatCannotBeDoneIsRefusedBeforeAnythingIsRead() throws {
        let m = "\(dir)/m", chain = "\(dir)/chain"
        let loop = try filesystem("ext4", megabytes: 32, image: "\(dir)/e.img", mountPoint: m)
        func check(_ args: [String], _ text: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try strata(args)
            XCTAssertEqual(r.status, 69, r.stderr, file: file, line: line)
            XCTAssertEqual(r.stderr, "strata: error: \(text)\n", file: file, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: chain), "no chain made", file: file, line: line)
            XCTAssertTrue(writable(m), file: file, line: line)
        }
        try check(["capture", loop, chain, "--freeze", dir],
                  "cannot freeze the filesystem at \(dir): it is not a mount point; nothing was read: name the directory the filesystem is mounted at")
        XCTAssertEqual(runTool("/usr/bin/env", ["truncate", "-s", "1M", "\(dir)/source.img"]), 0)
        try check(["capture", "\(dir)/source.img", "\(m)/chain", "--freeze", m],
                  "cannot freeze the filesystem at \(m): the chain \(m)/chain is on that filesystem, and its writes would wait for the thaw; nothing was read: keep the chain on another filesystem")
        try check(["capture", loop, chain, "--snapshot", "reflink"],
                  "cannot snapshot \(loop): --snapshot reflink clones an image file, and this is not a regular file; nothing was read: name an image file on XFS (reflink=1) or btrfs, or capture without --snapshot")
        // An image on ext4 (the scratch directory's filesystem here may be tmpfs or ext4: neither clones).
        XCTAssertEqual(runTool("/usr/bin/env", ["truncate", "-s", "1M", "\(m)/plain.img"]), 0)
        try check(["capture", "\(m)/plain.img", chain, "--snapshot", "reflink"],
                  "cannot snapshot \(m)/plain.img: its filesystem cannot make reflink clones; nothing was read: keep the image on XFS (reflink=1) or btrfs, or capture without --snapshot")
        XCTAssertEqual(clones(in: m), [])
    }
}
