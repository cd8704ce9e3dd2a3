// A chain of used blocks (`capture --used-blocks`) on a GPT disk with an unformatted partition, an ext4 filled
// and half deleted (stale data in its free blocks), a swap area over random bytes and an ext4 of 1 KiB blocks,
// over three nights: every point restores to a disk whose ext4s are fsck-clean and hold exactly that night's
// files, whose free ext4 blocks are zeros, whose swap keeps its header and nothing else, and whose unformatted
// partition and tables equal the disk's; the capture reads less than the disk. A merge keeps every point so. An
// ext4 that needs journal recovery and an XFS are read whole, with a notice, and restore exactly. An NTFS (made
// with mkntfs, written with ntfs-3g) is read by its $Bitmap over nights of changes: ntfsfix-clean, its files
// that night's, its free clusters zeros; hibernated (hiberfil.sys signed HIBR, as Windows leaves it), it is read
// whole and restores exactly. The flag on a chain that reads every block is refused.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class UsedBlocksTests: LoopDeviceTestCase {
    override var scratchName: String { "strata-used" }

    /// The disk, in 512-byte sectors: 1 unformatted (random bytes), 2 ext4 (4 KiB blocks), 3 swap, 4 ext4 (1 KiB blocks).
    static let parts: [(start: Int, size: Int, type: String)] = [
        (2048, 8192, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        (10240, 131072, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        (141312, 8192, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
        (149504, 40960, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ]
    static let diskBytes = 100 << 20

    private func loop(_ file: String, partition n: Int, readOnly: Bool = false) throws -> String {
        let p = Self.parts[n - 1]
        return try attach(file, offset: p.start * 512, length: p.size * 512, readOnly: readOnly)
    }

    private func inPartition(_ disk: String, _ n: Int, readOnly: Bool = false, _ body: (String) throws -> Void) throws {
        let p = Self.parts[n - 1]
        try inMount(disk, offset: p.start * 512, length: p.size * 512, readOnly: readOnly, body)
    }

    private func makeDisk(_ disk: String) throws {
        try sh("head -c \(Self.diskBytes) /dev/urandom > \(disk)")  // stale bytes everywhere
        let table = Self.parts.map { "start=\($0.start), size=\($0.size), type=\($0.type)" }.joined(separator: "\n")
        try sh("printf 'label: gpt\n\(table)\n' | sfdisk -q \(disk)")
        for (n, options) in [(2, "-b 4096"), (4, "-b 1024")] {
            let dev = try loop(disk, partition: n)
            try sh("mkfs.ext4 -q -F -E nodiscard \(options) \(dev)")
            detach(dev)
        }
        let swap = try loop(disk, partition: 3)
        try sh("mkswap \(swap) > /dev/null")
        detach(swap)
        // Filled, then half deleted: the free blocks hold the deleted files' bytes.
        try inPartition(disk, 2) { m in
            try sh("for i in $(seq 1 40); do head -c $((i * 30011)) /dev/urandom > \(m)/f$i; done; sync; rm \(m)/f2? \(m)/f3?")
        }
        try inPartition(disk, 4) { m in try sh("for i in 1 2 3 4 5 6; do head -c 900000 /dev/urandom > \(m)/g$i; done; sync; rm \(m)/g2 \(m)/g4") }
    }

    /// A night: files rewritten, removed and added in both ext4s.
    private func night(_ disk: String, _ k: Int) throws {
        try inPartition(disk, 2) { m in
            try sh("rm -f \(m)/f1\(k); head -c 400000 /dev/urandom > \(m)/n\(k); head -c 5000 /dev/urandom > \(m)/f5; sync; rm -f \(m)/f4")
        }
        try inPartition(disk, 4) { m in try sh("rm -f \(m)/g\(k); head -c 300000 /dev/urandom > \(m)/h\(k)") }
    }

    /// Copies of the ext4s' files now, to compare a restore with.
    private func snapshotFiles(_ disk: String, into: String) throws {
        for n in [2, 4] {
            try inPartition(disk, n, readOnly: true) { m in try sh("rm -rf \(into)/p\(n) && mkdir -p \(into) && cp -a \(m) \(into)/p\(n)") }
        }
    }

    /// The free blocks of the ext4 on `device`, as byte ranges of it (dumpe2fs's lists).
    private func freeRanges(_ device: String) -> [Range<Int>] {
        let text = toolOutput(["sh", "-c", "dumpe2fs \(device) 2>/dev/null"])
        let blockSize = Int(text.split(separator: "\n").first { $0.hasPrefix("Block size:") }!.split(separator: " ").last!)!
        var out: [Range<Int>] = []
        for line in text.split(separator: "\n") where line.hasPrefix("  Free blocks: ") {
            for item in line.dropFirst("  Free blocks: ".count).split(separator: ",") {
                let ends = item.trimmingCharacters(in: .whitespaces).split(separator: "-").compactMap { Int($0) }
                guard let a = ends.first else { continue }
                out.append(a * blockSize..<((ends.last ?? a) + 1) * blockSize)
            }
        }
        return out
    }

    /// Checks a restored point against the disk it came from, `files` holding that night's files.
    private func checkRestore(_ restored: String, disk: String, files: String, what: String, freeZeros: Bool = true) throws {
        let original = try Data(contentsOf: URL(fileURLWithPath: disk))
        let image = try Data(contentsOf: URL(fileURLWithPath: restored))
        XCTAssertEqual(image.count, original.count, what)
        // The tables, the gaps and the unformatted partition: read whole, equal.
        let p1 = Self.parts[0]
        XCTAssertTrue(image[0..<(p1.start * 512 + p1.size * 512)] == original[0..<(p1.start * 512 + p1.size * 512)], "\(what): the table and partition 1")
        let end = Self.parts[3].start * 512 + Self.parts[3].size * 512
        XCTAssertTrue(image[end...] == original[end...], "\(what): the backup table")
        // Swap: its header kept, the rest zeros.
        let swap = Self.parts[2].start * 512
        XCTAssertTrue(image[swap..<(swap + 65536)] == original[swap..<(swap + 65536)], "\(what): the swap header")
        if freeZeros {
            XCTAssertTrue(image[(swap + 65536)..<(swap + Self.parts[2].size * 512)].allSatisfy { $0 == 0 }, "\(what): the rest of swap is zeros")
        }
        for n in [2, 4] {
            let dev = try loop(restored, partition: n, readOnly: true)
            defer { detach(dev) }
            XCTAssertEqual(runTool("/usr/bin/env", ["e2fsck", "-fn", dev]), 0, "\(what): e2fsck of partition \(n)")
            let base = Self.parts[n - 1].start * 512
            let free = freeRanges(dev)
            XCTAssertFalse(free.isEmpty)
            // Free blocks wholly inside a 4 KiB chain block are zeros (a chain block that also holds a used
            // 1 KiB block is read as used).
            for r in free where freeZeros {
                let lo = (r.lowerBound + 4095) / 4096 * 4096, hi = r.upperBound / 4096 * 4096
                guard lo < hi else { continue }
                XCTAssertTrue(image[(base + lo)..<(base + hi)].allSatisfy { $0 == 0 }, "\(what): free bytes \(lo)..<\(hi) of partition \(n) are not zeros")
            }
            let mountPoint = "\(dir)/check-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try sh("mount -o ro,noload \(dev) \(mountPoint)")
            let diff = runProcess("/usr/bin/env", ["diff", "-r", "--no-dereference", "\(files)/p\(n)", mountPoint])
            runTool("/usr/bin/env", ["umount", mountPoint])
            XCTAssertEqual(diff.status, 0, "\(what): files of partition \(n) differ: \(diff.stdout.prefix(300))")
        }
    }

    func testNightsOfAGPTDiskRestoreUsedBlocksAndZeros() throws {
        let disk = "\(dir)/disk.img", chain = "\(dir)/chain"
        try makeDisk(disk)
        var reads: [Int] = []
        for k in 1...3 {
            if k > 1 { try night(disk, k) }
            try snapshotFiles(disk, into: "\(dir)/night\(k)")
            try sh("cp \(disk) \(dir)/disk\(k).img")
            let r = try strata(["capture", disk, chain, "--json", "--quiet"] + (k == 1 ? ["--used-blocks"] : []))
            XCTAssertEqual(r.status, 0, r.stderr)
            let report = jsonObject(r.stdout)
            reads.append(report["bytesRead"] as? Int ?? .max)
            let used = try XCTUnwrap(report["usedBlocks"] as? [String: Any], "night \(k)")
            let regions = try XCTUnwrap(used["regions"] as? [[String: Any]])
            XCTAssertEqual(regions.map { $0["method"] as? String }, ["whole", "bitmap", "swap-header", "bitmap", "whole"], "night \(k)")
            XCTAssertEqual(regions.map { $0["content"] as? String }, [nil, "ext4", "swap", "ext4", nil])
            XCTAssertEqual(regions[0]["reason"] as? String, "libblkid recognises nothing there")
            XCTAssertEqual(r.stderr, "strata: partition 1: read whole: libblkid recognises nothing there\n")
        }
        // Each capture read less than two thirds of the disk (the free space is a third of it and more).
        for (k, read) in reads.enumerated() { XCTAssertLessThan(read, Self.diskBytes * 2 / 3, "night \(k + 1) read \(read)") }
        let listed = jsonObject(try strata("list", chain, "--json").stdout)
        XCTAssertEqual(listed["usedBlocks"] as? Bool, true)
        XCTAssertEqual((listed["points"] as? [[String: Any]])?.compactMap { ($0["usedBlocks"] as? [String: Any])?["usedBytes"] as? Int }.count, 3)
        for k in 1...3 {
            let out = "\(dir)/restored\(k).img"
            XCTAssertEqual(try strata("restore", chain, out, "--point", String(k), "--verify", "--quiet").status, 0)
            try checkRestore(out, disk: "\(dir)/disk\(k).img", files: "\(dir)/night\(k)", what: "point \(k)")
            try? FileManager.default.removeItem(atPath: out)
        }
        // restore --delta of point 1 over a disk holding point 3: the free blocks are neither compared nor
        // written (they keep point 3's bytes, which no filesystem of point 1 reads); every used block is point 1's.
        let full1 = "\(dir)/full1.img", target = "\(dir)/target.img"
        XCTAssertEqual(try strata("restore", chain, full1, "--point", "1", "--quiet").status, 0)
        XCTAssertEqual(try strata("restore", chain, target, "--point", "3", "--quiet").status, 0)
        let d = try strata("restore", chain, target, "--point", "1", "--delta", "--verify", "--force", "--json")
        XCTAssertEqual(d.status, 0, d.stderr)
        let delta = jsonObject(d.stdout)
        XCTAssertGreaterThan(delta["blocksFree"] as? Int ?? 0, Self.diskBytes / 4096 / 4, "a quarter of the disk and more is free")
        XCTAssertEqual(delta["verified"] as? Bool, true)
        try checkRestore(target, disk: "\(dir)/disk1.img", files: "\(dir)/night1", what: "point 1 over point 3, --delta", freeZeros: false)
        XCTAssertNotEqual(try Data(contentsOf: URL(fileURLWithPath: target)), try Data(contentsOf: URL(fileURLWithPath: full1)), "the free blocks kept point 3's bytes")
        // Again: nothing differs; with --discard the free blocks become holes, and the target is the full restore.
        let again = jsonObject(try strata("restore", chain, target, "--point", "1", "--delta", "--force", "--json").stdout)
        XCTAssertEqual(again["blocksDiffering"] as? Int, 0)
        XCTAssertEqual(again["bytesWritten"] as? Int, 0)
        let discarded = try strata("restore", chain, target, "--point", "1", "--delta", "--discard", "--force", "--json")
        XCTAssertEqual(discarded.status, 0, discarded.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: target)), try Data(contentsOf: URL(fileURLWithPath: full1)), "--discard: the full restore, byte for byte")
        let refused = try strata("restore", chain, target, "--point", "1", "--discard", "--force")
        XCTAssertEqual(refused.status, 64)
        XCTAssertEqual(refused.stderr, "strata: error: --discard applies with --delta, which leaves the free blocks of a chain of used blocks as the target has them; a full restore writes them as zeros\n")
        for f in [full1, target] { try? FileManager.default.removeItem(atPath: f) }

        // Merged, the newest point is still that night's.
        XCTAssertEqual(try strata("merge", chain, "--from", "1", "--to", "3", "--quiet").status, 0)
        let merged = "\(dir)/merged.img"
        XCTAssertEqual(try strata("restore", chain, merged, "--quiet").status, 0)
        try checkRestore(merged, disk: "\(dir)/disk3.img", files: "\(dir)/night3", what: "merged point 3")
        XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0)
    }

    func testFilesystemsWithoutATrustedMapAreReadWhole() throws {
        if toolOutput(["sh", "-c", "command -v mkfs.xfs"]).isEmpty { throw XCTSkip("mkfs.xfs is not installed (Tools/setup installs it)") }
        let disk = "\(dir)/disk.img", chain = "\(dir)/chain"
        try makeDisk(disk)
        // Partition 2: an ext4 that needs journal recovery (as a crash leaves it); partition 4: an XFS.
        let root = try loop(disk, partition: 2)
        try sh("debugfs -w -R 'feature needs_recovery' \(root) > /dev/null 2>&1")
        detach(root)
        let xfs = try loop(disk, partition: 4)
        try sh("TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 mkfs.xfs -f -q \(xfs)")
        detach(xfs)
        let r = try strata("capture", disk, chain, "--used-blocks", "--json", "--quiet")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(
            r.stderr,
            """
            strata: partition 1: read whole: libblkid recognises nothing there
            strata: partition 2 (ext4): read whole: it needs journal recovery (mounted, or not cleanly unmounted), so its bitmaps may be stale
            strata: partition 4 (xfs): read whole: Strata reads no map of xfs

            """)
        let regions = try XCTUnwrap((jsonObject(r.stdout)["usedBlocks"] as? [String: Any])?["regions"] as? [[String: Any]])
        XCTAssertEqual(regions.map { $0["method"] as? String }, ["whole", "whole", "swap-header", "whole", "whole"])
        let out = "\(dir)/restored.img"
        XCTAssertEqual(try strata("restore", chain, out, "--quiet").status, 0)
        let original = try Data(contentsOf: URL(fileURLWithPath: disk)), image = try Data(contentsOf: URL(fileURLWithPath: out))
        let swap = Self.parts[2].start * 512 + 65536..<(Self.parts[2].start + Self.parts[2].size) * 512
        XCTAssertTrue(image[..<swap.lowerBound] == original[..<swap.lowerBound], "all but swap restores exactly")
        XCTAssertTrue(image[swap.upperBound...] == original[swap.upperBound...], "all but swap restores exactly")

        // The flag on a chain that reads every block.
        let plain = "\(dir)/plain"
        XCTAssertEqual(try strata("capture", disk, plain, "--quiet").status, 0)
        let refused = try strata("capture", disk, plain, "--used-blocks")
        XCTAssertEqual(refused.status, 64)
        XCTAssertEqual(
            refused.stderr,
            "strata: error: chain \(plain) reads every block, and --used-blocks applies only when a chain is made: capture into a new directory to start a chain of used blocks\n")
    }

    /// An NTFS on a GPT disk of stale bytes: partition 1, 48 MiB.
    static let ntfsPart = (start: 2048, size: 98304)

    /// Runs a FUSE driver (ntfs-3g) with every descriptor closed, so that its daemon holds none of the test's pipes.
    private func detached(_ command: String) throws {
        try sh("/usr/bin/python3 -c 'import subprocess, sys; subprocess.run(sys.argv[1:], close_fds=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)' \(command)")
    }

    /// Mounts the NTFS of `disk` with ntfs-3g for `body`, then unmounts it.
    private func inNTFS(_ disk: String, readOnly: Bool = false, _ body: (String) throws -> Void) throws {
        let dev = try attach(disk, offset: Self.ntfsPart.start * 512, length: Self.ntfsPart.size * 512, readOnly: readOnly)
        defer { detach(dev) }
        let m = "\(dir)/ntfs-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: m, withIntermediateDirectories: true)
        try detached("ntfs-3g \(readOnly ? "-o ro " : "")\(dev) \(m)")
        defer { runTool("/usr/bin/env", ["umount", m]) }
        try body(m)
    }

    /// The free clusters of the NTFS on `device` as byte ranges of it, from its $Bitmap (inode 6) as ntfscat
    /// dumps it and the cluster size its boot sector gives.
    private func ntfsFreeRanges(_ device: String) throws -> [Range<Int>] {
        let handle = try XCTUnwrap(FileHandle(forReadingAtPath: device))
        let boot = [UInt8](handle.readData(ofLength: 512))
        try handle.close()
        let sector = Int(boot[11]) | (Int(boot[12]) << 8)  // bytes per sector, then sectors per cluster, at 11 and 13
        let cluster = sector * Int(boot[13])
        let sectors = (0..<8).reduce(0) { $0 | (Int(boot[40 + $1]) << (8 * $1)) }  // total sectors, at 40
        let clusters = sectors * sector / cluster
        let bitmap = "\(dir)/bitmap"
        try sh("ntfscat -i 6 \(device) > \(bitmap)")
        let bits = [UInt8](try Data(contentsOf: URL(fileURLWithPath: bitmap)))
        var out: [Range<Int>] = []
        for c in 0..<clusters where bits[c >> 3] & (1 << (c & 7)) == 0 {
            if let last = out.last, last.upperBound == c * cluster { out[out.count - 1] = last.lowerBound..<(c + 1) * cluster } else { out.append(c * cluster..<(c + 1) * cluster) }
        }
        return out
    }

    func testNTFSIsReadByItsBitmapAndReadWholeWhenHibernated() throws {
        for tool in ["mkntfs", "ntfs-3g", "ntfscat", "ntfsfix"] where toolOutput(["sh", "-c", "command -v \(tool)"]).isEmpty {
            throw XCTSkip("\(tool) is not installed (Tools/setup installs ntfs-3g)")
        }
        let disk = "\(dir)/disk.img", chain = "\(dir)/chain"
        try sh("head -c \(64 << 20) /dev/urandom > \(disk)")  // stale bytes everywhere
        try sh("printf 'label: gpt\nstart=\(Self.ntfsPart.start), size=\(Self.ntfsPart.size), type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n' | sfdisk -q \(disk)")
        let dev = try attach(disk, offset: Self.ntfsPart.start * 512, length: Self.ntfsPart.size * 512)
        try sh("mkntfs -Q -F -L data \(dev) > /dev/null 2>&1")
        detach(dev)
        // Filled, then half deleted: the free clusters hold the deleted files' bytes.
        try inNTFS(disk) { m in try sh("mkdir \(m)/d && for i in $(seq 1 30); do head -c $((i * 40009)) /dev/urandom > \(m)/d/f$i; done; sync; rm \(m)/d/f1? \(m)/d/f2?") }
        for k in 1...2 {
            if k > 1 { try inNTFS(disk) { m in try sh("rm \(m)/d/f3; head -c 700000 /dev/urandom > \(m)/d/n\(k); head -c 5000 /dev/urandom > \(m)/d/f5") } }
            try inNTFS(disk, readOnly: true) { m in try sh("rm -rf \(dir)/night\(k) && cp -a \(m) \(dir)/night\(k)") }
            try sh("cp \(disk) \(dir)/disk\(k).img")
            let r = try strata(["capture", disk, chain, "--json", "--quiet"] + (k == 1 ? ["--used-blocks"] : []))
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stderr, "")
            let regions = try XCTUnwrap((jsonObject(r.stdout)["usedBlocks"] as? [String: Any])?["regions"] as? [[String: Any]])
            XCTAssertEqual(regions.map { $0["method"] as? String }, ["bitmap", "whole"], "night \(k)")
            XCTAssertEqual(regions.map { $0["content"] as? String }, ["ntfs", nil])
            XCTAssertLessThan(jsonObject(r.stdout)["bytesRead"] as? Int ?? .max, 40 << 20, "night \(k) read the NTFS's free clusters")
        }
        for k in 1...2 {
            let out = "\(dir)/restored\(k).img"
            XCTAssertEqual(try strata("restore", chain, out, "--point", String(k), "--verify", "--quiet").status, 0)
            let original = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk\(k).img")), image = try Data(contentsOf: URL(fileURLWithPath: out))
            let base = Self.ntfsPart.start * 512, end = base + Self.ntfsPart.size * 512
            XCTAssertTrue(image[..<base] == original[..<base] && image[(end - 512)...] == original[(end - 512)...], "point \(k): the tables and the backup boot sector")
            let restored = try attach(out, offset: base, length: Self.ntfsPart.size * 512, readOnly: true)
            XCTAssertEqual(runTool("/usr/bin/env", ["ntfsfix", "-n", restored]), 0, "point \(k): ntfsfix -n")
            let free = try ntfsFreeRanges(restored)
            detach(restored)
            XCTAssertGreaterThan(free.reduce(0) { $0 + $1.count }, 16 << 20)
            var stale = 0
            for r in free {
                XCTAssertTrue(image[(base + r.lowerBound)..<(base + r.upperBound)].allSatisfy { $0 == 0 }, "point \(k): free bytes \(r) are not zeros")
                stale += original[(base + r.lowerBound)..<(base + r.upperBound)].allSatisfy { $0 == 0 } ? 0 : 1
            }
            XCTAssertGreaterThan(stale, 0, "the source's free clusters held stale bytes")
            try inNTFS(out, readOnly: true) { m in
                let diff = runProcess("/usr/bin/env", ["diff", "-r", "\(dir)/night\(k)", m])
                XCTAssertEqual(diff.status, 0, "point \(k): files differ: \(diff.stdout.prefix(300))")
            }
            try? FileManager.default.removeItem(atPath: out)
        }

        // Hibernated: hiberfil.sys begins "HIBR", as Windows leaves it on hibernation and Fast Startup.
        try inNTFS(disk) { m in try sh("(printf HIBR; head -c 4092 /dev/zero) > \(m)/hiberfil.sys") }
        let hibernated = "\(dir)/hibernated"
        let r = try strata("capture", disk, hibernated, "--used-blocks", "--json", "--quiet")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderr, "strata: partition 1 (ntfs): read whole: Windows left it hibernated or by Fast Startup, so its bitmap may not be the disk's\n")
        let out = "\(dir)/restored.img"
        XCTAssertEqual(try strata("restore", hibernated, out, "--quiet").status, 0)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out)), try Data(contentsOf: URL(fileURLWithPath: disk)), "a hibernated NTFS restores exactly")
    }
}
