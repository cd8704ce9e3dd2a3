// `mount --files` of a whole system disk's point: a GPT disk with an EFI system partition (FAT), an ext4 root,
// an NTFS data partition and swap, without udev (each partition its own loop device or driver at its offset).
// With the userspace drivers (the default: fusefat, fuse2fs, ntfs-3g) and with --kernel-driver, every file's
// bytes equal the night's where the driver exists, and what cannot mount is named in one line (swap; a filesystem
// this kernel has no driver for); --partition mounts one; a damaged partition is named with its driver's words
// while the others mount; unmount leaves no mount, no loop device and no driver process.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class PartitionMountTests: LoopDeviceTestCase {
    override var scratchName: String { "strata-partmount" }

    override func setUpWithError() throws {
        try super.setUpWithError()
        for tool in ["mkfs.vfat", "mcopy", "mkntfs", "ntfs-3g", "fuse2fs", "fusefat"] where toolOutput(["sh", "-c", "command -v \(tool)"]).isEmpty {
            throw XCTSkip("\(tool) is not installed (Tools/setup installs it)")
        }
    }

    /// In 512-byte sectors: 1 ESP (FAT), 2 ext4 root, 3 NTFS data, 4 swap.
    static let parts: [(start: Int, size: Int, type: String)] = [
        (2048, 32768, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        (34816, 65536, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        (100352, 40960, "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
        (141312, 8192, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
    ]

    private func loop(_ file: String, partition n: Int) throws -> String {
        let p = Self.parts[n - 1]
        return try attach(file, offset: p.start * 512, length: p.size * 512)
    }

    /// Every regular file under `root`, by relative path.
    private func tree(_ root: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: root)!
        while let rel = e.nextObject() as? String {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: "\(root)/\(rel)", isDirectory: &isDir), !isDir.boolValue,
                !rel.hasPrefix("lost+found"), !rel.hasPrefix("System Volume Information")
            else { continue }
            out[rel] = try Data(contentsOf: URL(fileURLWithPath: "\(root)/\(rel)"))
        }
        return out
    }

    /// The system disk, its filesystems written through their own tools; the files each holds.
    private func makeSystemDisk(_ disk: String, damagedRoot: Bool = false) throws -> [Int: [String: Data]] {
        try sh("truncate -s 80M \(disk)")
        let table = Self.parts.map { "start=\($0.start), size=\($0.size), type=\($0.type)" }.joined(separator: "\n")
        try sh("printf 'label: gpt\n\(table)\n' | sfdisk -q \(disk)")
        var files: [Int: [String: Data]] = [:]
        let work = "\(dir)/work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        func fill(_ n: Int, _ mount: String, _ unmount: String = "umount") throws {
            // A FUSE driver's daemon keeps every descriptor it started with, the test's pipes too: started with
            // all of them closed.
            let detached = "/usr/bin/python3 -c 'import subprocess, sys; subprocess.run(sys.argv[1:], close_fds=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)'"
            try sh("\(mount.hasPrefix("mount ") ? mount : detached + " " + mount) \(work) && mkdir -p \(work)/d && for i in 1 2 3 4 5; do head -c $((i * 7919)) /dev/urandom > \(work)/d/f$i; done && echo p\(n) > \(work)/top.txt")
            files[n] = try tree(work)
            try sh("\(unmount) \(work)")
        }
        // The ESP's files written with mtools (fusefat's writing is not to be trusted), then read back by tree().
        let esp = try loop(disk, partition: 1)
        try sh("mkfs.vfat -n ESP \(esp) > /dev/null")
        let staged = "\(dir)/esp"
        try sh("mkdir -p \(staged)/D && for i in 1 2 3 4 5; do head -c $((i * 7919)) /dev/urandom > \(staged)/D/F$i; done && echo p1 > \(staged)/TOP.TXT")
        try sh("MTOOLS_SKIP_CHECK=1 mcopy -s -i \(esp) \(staged)/D \(staged)/TOP.TXT ::/")
        files[1] = try tree(staged)
        // fusefat lists the volume label as an empty file.
        files[1]!["ESP"] = Data()
        detach(esp)
        let root = try loop(disk, partition: 2)
        try sh("mkfs.ext4 -q -F -O ^metadata_csum -L root \(root)")
        try fill(2, "mount \(root)")
        if damagedRoot {
            // A blocks count far past its partition: libblkid still sees ext4, its drivers refuse it.
            try sh("printf '\\377\\377\\377\\077' | dd of=\(root) bs=1 seek=1028 conv=notrunc status=none")
        }
        detach(root)
        let data = try loop(disk, partition: 3)
        try sh("mkntfs -Q -F -L data \(data) > /dev/null 2>&1")
        try fill(3, "ntfs-3g \(data)")
        detach(data)
        let swap = try loop(disk, partition: 4)
        try sh("mkswap \(swap) > /dev/null")
        detach(swap)
        return files
    }

    private func traces(_ m: String) -> [String] {
        let mounts = ((try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains(m) }
        let loops = toolOutput(["losetup", "-a"]).split(separator: "\n").filter { $0.contains("/run/strata") }
        let drivers = toolOutput(["sh", "-c", "pgrep -af '[f]use2fs|[n]tfs-3g|[f]usefat' | grep '\(m)' || true"]).split(separator: "\n")
        return (mounts + loops + drivers).map(String.init)
    }

    func testASystemDiskPointMountsEachPartitionWithEitherDriver() throws {
        let disk = "\(dir)/disk.img", chain = "\(dir)/chain"
        let files = try makeSystemDisk(disk)
        XCTAssertEqual(try strata("capture", disk, chain, "--quiet").status, 0)
        let kernelVfat = FileManager.default.fileExists(atPath: "/proc/filesystems")
            && ((try? String(contentsOfFile: "/proc/filesystems", encoding: .utf8)) ?? "").split(separator: "\n").contains { $0.hasSuffix("\tvfat") }
        let kernelNtfs = ((try? String(contentsOfFile: "/proc/filesystems", encoding: .utf8)) ?? "").split(separator: "\n").contains { $0.hasSuffix("\tntfs3") }

        // Userspace drivers: every filesystem mounts; swap is named.
        let m = "\(dir)/m"
        try FileManager.default.createDirectory(atPath: m, withIntermediateDirectories: true)
        let r = try strata("mount", chain, m, "--files")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderr, "strata: not mounted: p4: swap\n")
        for n in [1, 2, 3] { XCTAssertEqual(try tree("\(m)/p\(n)"), files[n], "p\(n) through its userspace driver") }
        let table = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        for n in [1, 2, 3] {
            let line = table.split(separator: "\n").first { $0.contains(" \(m)/p\(n) ") } ?? ""
            XCTAssertTrue(line.contains(" fuse") && line.contains(" ro,"), "p\(n): \(line)")
        }
        let u = try strata("unmount", m)
        XCTAssertEqual(u.status, 0, u.stderr)
        XCTAssertEqual(traces(m), [], "nothing left after unmount")

        // The kernel's drivers: ext4 always; FAT and NTFS where this kernel has them, else named.
        let k = try strata("mount", chain, m, "--files", "--kernel-driver")
        XCTAssertEqual(k.status, 0, k.stderr)
        XCTAssertEqual(try tree("\(m)/p2"), files[2])
        var expected = ""
        if kernelVfat { XCTAssertEqual(try tree("\(m)/p1"), files[1]) } else {
            expected += "strata: not mounted: p1: vfat, which this kernel has no driver for (fusefat reads it without --kernel-driver)\n"
        }
        if kernelNtfs { XCTAssertEqual(try tree("\(m)/p3"), files[3]) } else {
            expected += "strata: not mounted: p3: ntfs, which this kernel has no driver for (ntfs-3g reads it without --kernel-driver)\n"
        }
        expected += "strata: not mounted: p4: swap\n"
        XCTAssertEqual(k.stderr, expected)
        XCTAssertEqual(try strata("unmount", m).status, 0)
        XCTAssertEqual(traces(m), [])

        // One partition.
        XCTAssertEqual(try strata("mount", chain, m, "--files", "--partition", "3").status, 0)
        XCTAssertEqual(try tree("\(m)/p3"), files[3])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: m), ["p3"])
        XCTAssertEqual(try strata("unmount", m).status, 0)
        XCTAssertEqual(traces(m), [])
        let none = try strata("mount", chain, m, "--files", "--partition", "9")
        XCTAssertEqual(none.status, 64)
        XCTAssertEqual(traces(m), [])
    }

    func testADamagedPartitionIsNamedAndTheOthersMount() throws {
        let disk = "\(dir)/disk.img", chain = "\(dir)/chain"
        let files = try makeSystemDisk(disk, damagedRoot: true)
        XCTAssertEqual(try strata("capture", disk, chain, "--quiet").status, 0)
        let m = "\(dir)/m"
        try FileManager.default.createDirectory(atPath: m, withIntermediateDirectories: true)
        let r = try strata("mount", chain, m, "--files")
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stderr.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2, r.stderr)
        XCTAssertTrue(lines[0].hasPrefix("strata: not mounted: p2: ext4, which fuse2fs refused: "), lines[0])
        XCTAssertEqual(lines[1], "strata: not mounted: p4: swap")
        XCTAssertEqual(try tree("\(m)/p1"), files[1])
        XCTAssertEqual(try tree("\(m)/p3"), files[3])
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(m)/p2"))
        XCTAssertEqual(try strata("unmount", m).status, 0)
        XCTAssertEqual(traces(m), [])
    }
}
