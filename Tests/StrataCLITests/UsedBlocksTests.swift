// A chain of used blocks (`capture --used-blocks`) on a GPT disk with an unformatted partition, an ext4 filled
// and half deleted (stale data in its free blocks), a swap area over random bytes, an ext4 of 1 KiB blocks, an
// XFS and an NTFS (made with mkntfs, written with ntfs-3g), each filled then half deleted, over three nights:
// every point restores to a disk whose filesystems are clean (e2fsck -fn, xfs_repair -n, ntfsfix -n) and hold
// exactly that night's files, whose free blocks are zeros, whose swap keeps its header and nothing else, and whose
// unformatted partition and tables equal the disk's; the capture reads less than the disk. A merge keeps every
// point so. An ext4 that needs journal recovery, an XFS whose log is dirty (shut down, as a crash leaves it) and an
// XFS whose free-space tree disagrees with its group's header are read whole, with a notice, and restore exactly.
// An NTFS over nights of changes is ntfsfix-clean, its files that night's, its free clusters zeros; hibernated
// (hiberfil.sys signed HIBR, as Windows leaves it), it is read whole and restores exactly. The flag on a chain that
// reads every block is refused.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class UsedBlocksTests: LoopDeviceTestCase {
    override var scratchName: String { "strata-used" }

    /// The disk, in 512-byte sectors: 1 unformatted (random bytes), 2 ext4 (4 KiB blocks), 3 swap, 4 ext4 (1 KiB
    /// blocks), 5 XFS, 6 NTFS.
    static let parts: [(start: Int, size: Int, type: String)] = [
        (2048, 8192, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        (10240, 131072, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        (141312, 8192, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"),
        (149504, 40960, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        (190464, 40960, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        (231424, 32768, "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
    ]
    static let diskBytes = 130 << 20
    static let ext4Parts = [2, 4], xfsPart = 5, ntfsPartition = 6

    override func setUpWithError() throws {
        try super.setUpWithError()
        for tool in ["mkfs.xfs", "xfs_repair", "xfs_db", "xfs_io", "mkntfs", "ntfs-3g", "ntfscat", "ntfsfix"]
        where toolOutput(["sh", "-c", "command -v \(tool)"]).isEmpty {
            throw XCTSkip("\(tool) is not installed (Tools/setup installs xfsprogs and ntfs-3g)")
        }
    }

    private func loop(_ file: String, partition n: Int, readOnly: Bool = false) throws -> String {
        let p = Self.parts[n - 1]
        return try attach(file, offset: p.start * 512, length: p.size * 512, readOnly: readOnly)
    }

    /// Mounts partition `n` of `disk` for `body`: the kernel's ext4 or XFS, or ntfs-3g.
    private func inPartition(_ disk: String, _ n: Int, readOnly: Bool = false, _ body: (String) throws -> Void) throws {
        let p = Self.parts[n - 1]
        if n == Self.ntfsPartition { return try inNTFS(disk, at: (p.start, p.size), readOnly: readOnly, body) }
        try inMount(disk, offset: p.start * 512, length: p.size * 512, readOnly: readOnly, options: n == Self.xfsPart && readOnly ? "ro,norecovery" : nil, body)
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
        let xfs = try loop(disk, partition: Self.xfsPart)
        try sh("TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 mkfs.xfs -f -q -K \(xfs)")  // -K: no discard, the stale bytes stay
        detach(xfs)
        let ntfs = try loop(disk, partition: Self.ntfsPartition)
        try sh("mkntfs -Q -F -L data \(ntfs) > /dev/null 2>&1")
        detach(ntfs)
        // Filled, then half deleted: the free blocks hold the deleted files' bytes.
        try inPartition(disk, 2) { m in
            try sh("for i in $(seq 1 40); do head -c $((i * 30011)) /dev/urandom > \(m)/f$i; done; sync; rm \(m)/f2? \(m)/f3?")
        }
        try inPartition(disk, 4) { m in try sh("for i in 1 2 3 4 5 6; do head -c 900000 /dev/urandom > \(m)/g$i; done; sync; rm \(m)/g2 \(m)/g4") }
        for n in [Self.xfsPart, Self.ntfsPartition] {
            try inPartition(disk, n) { m in try sh("for i in 1 2 3 4 5 6 7 8; do head -c 1100000 /dev/urandom > \(m)/x$i; done; sync; rm \(m)/x2 \(m)/x4 \(m)/x6") }
        }
    }

    /// A night: files rewritten, removed and added in both ext4s.
    private func night(_ disk: String, _ k: Int) throws {
        try inPartition(disk, 2) { m in
            try sh("rm -f \(m)/f1\(k); head -c 400000 /dev/urandom > \(m)/n\(k); head -c 5000 /dev/urandom > \(m)/f5; sync; rm -f \(m)/f4")
        }
        try inPartition(disk, 4) { m in try sh("rm -f \(m)/g\(k); head -c 300000 /dev/urandom > \(m)/h\(k)") }
        for n in [Self.xfsPart, Self.ntfsPartition] {
            try inPartition(disk, n) { m in try sh("rm -f \(m)/x\(k + 4); head -c 600000 /dev/urandom > \(m)/y\(k); head -c 7000 /dev/urandom > \(m)/x1") }
        }
    }

    /// Copies of the ext4s' files now, to compare a restore with.
    private func snapshotFiles(_ disk: String, into: String) throws {
        for n in Self.ext4Parts + [Self.xfsPart, Self.ntfsPartition] {
            try inPartition(disk, n, readOnly: true) { m in try sh("rm -rf \(into)/p\(n) && mkdir -p \(into) && cp -a \(m) \(into)/p\(n)") }
        }
    }

    /// The free blocks of the XFS on `device`, as byte ranges of it: the records of each group's free-space tree
    /// (one leaf in a filesystem this small), as xfs_db prints them. (xfs_repair needs `-o force_geometry` for a
    /// filesystem of one group, as here.)
    private func xfsFreeRanges(_ device: String) throws -> [Range<Int>] {
        let geometry = toolOutput(["xfs_db", "-r", "-c", "sb 0", "-c", "p blocksize agblocks agcount", device])
        func field(_ name: String) throws -> Int {
            try XCTUnwrap(geometry.split(separator: "\n").first { $0.hasPrefix("\(name) = ") }.flatMap { Int($0.split(separator: " ").last!) }, name)
        }
        let blockSize = try field("blocksize"), groupBlocks = try field("agblocks")
        var out: [Range<Int>] = []
        for g in 0..<(try field("agcount")) {
            let recs = toolOutput(["xfs_db", "-r", "-c", "agf \(g)", "-c", "addr bnoroot", "-c", "p level recs", device])
            XCTAssertTrue(recs.hasPrefix("level = 0"), "a one-level tree: \(recs.prefix(80))")
            for item in recs.split(whereSeparator: { $0 == "\n" || $0 == " " }) where item.contains(":[") {
                let numbers = item.split(separator: "[").last!.dropLast().split(separator: ",").compactMap { Int($0) }
                let start = (g * groupBlocks + numbers[0]) * blockSize
                out.append(start..<(start + numbers[1] * blockSize))
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
        let end = Self.parts.last!.start * 512 + Self.parts.last!.size * 512
        XCTAssertTrue(image[end...] == original[end...], "\(what): the backup table")
        // Swap: its header kept, the rest zeros.
        let swap = Self.parts[2].start * 512
        XCTAssertTrue(image[swap..<(swap + 65536)] == original[swap..<(swap + 65536)], "\(what): the swap header")
        if freeZeros {
            XCTAssertTrue(image[(swap + 65536)..<(swap + Self.parts[2].size * 512)].allSatisfy { $0 == 0 }, "\(what): the rest of swap is zeros")
        }
        for n in Self.ext4Parts + [Self.xfsPart, Self.ntfsPartition] {
            let dev = try loop(restored, partition: n, readOnly: true)
            defer { detach(dev) }
            let free: [Range<Int>]
            switch n {
            case Self.xfsPart:
                XCTAssertEqual(runTool("/usr/bin/env", ["xfs_repair", "-n", "-o", "force_geometry", dev]), 0, "\(what): xfs_repair -n of partition \(n)")
                free = try xfsFreeRanges(dev)
            case Self.ntfsPartition:
                XCTAssertEqual(runTool("/usr/bin/env", ["ntfsfix", "-n", dev]), 0, "\(what): ntfsfix -n of partition \(n)")
                free = try ntfsFreeRanges(dev)
            default:
                XCTAssertEqual(runTool("/usr/bin/env", ["e2fsck", "-fn", dev]), 0, "\(what): e2fsck of partition \(n)")
                free = ext4FreeRanges(dev)
            }
            let base = Self.parts[n - 1].start * 512
            XCTAssertGreaterThan(free.reduce(0) { $0 + $1.count }, 1 << 20, "\(what): partition \(n) is half empty")
            // Free blocks wholly inside a 4 KiB chain block are zeros (a chain block that also holds a used
            // 1 KiB block or cluster is read as used).
            var stale = 0
            for r in free where freeZeros {
                let lo = (r.lowerBound + 4095) / 4096 * 4096, hi = r.upperBound / 4096 * 4096
                guard lo < hi else { continue }
                XCTAssertTrue(image[(base + lo)..<(base + hi)].allSatisfy { $0 == 0 }, "\(what): free bytes \(lo)..<\(hi) of partition \(n) are not zeros")
                if !original[(base + lo)..<(base + hi)].allSatisfy({ $0 == 0 }) { stale += 1 }
            }
            if freeZeros { XCTAssertGreaterThan(stale, 0, "\(what): the source's free space in partition \(n) held stale bytes") }
        }
        for n in Self.ext4Parts + [Self.xfsPart, Self.ntfsPartition] {
            try inPartition(restored, n, readOnly: true) { m in
                let diff = runProcess("/usr/bin/env", ["diff", "-r", "--no-dereference", "\(files)/p\(n)", m])
                XCTAssertEqual(diff.status, 0, "\(what): files of partition \(n) differ: \(diff.stdout.prefix(300))")
            }
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
            XCTAssertEqual(regions.map { $0["method"] as? String }, ["whole", "bitmap", "swap-header", "bitmap", "bitmap", "bitmap", "whole"], "night \(k)")
            XCTAssertEqual(regions.map { $0["content"] as? String }, [nil, "ext4", "swap", "ext4", "xfs", "ntfs", nil])
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
        let disk = "\(dir)/disk.img"
        try makeDisk(disk)
        // Partition 2: an ext4 that needs journal recovery (as a crash leaves it); partition 5: an XFS shut down
        // after a write, its log dirty (as a crash leaves it).
        let root = try loop(disk, partition: 2)
        try sh("debugfs -w -R 'feature needs_recovery' \(root) > /dev/null 2>&1")
        detach(root)
        try inPartition(disk, Self.xfsPart) { m in try sh("head -c 300000 /dev/urandom > \(m)/late; sync; xfs_io -x -c shutdown \(m)") }
        /// Captures the disk into a new chain: the stderr, and checks that all but swap's tail, the 1 KiB ext4 and
        /// the NTFS (read by their bitmaps) restore exactly.
        func captureWhole(_ name: String) throws -> String {
            let chain = "\(dir)/\(name)"
            let r = try strata("capture", disk, chain, "--used-blocks", "--json", "--quiet")
            XCTAssertEqual(r.status, 0, r.stderr)
            let regions = try XCTUnwrap((jsonObject(r.stdout)["usedBlocks"] as? [String: Any])?["regions"] as? [[String: Any]])
            XCTAssertEqual(regions.map { $0["method"] as? String }, ["whole", "whole", "swap-header", "bitmap", "whole", "bitmap", "whole"], name)
            let out = "\(dir)/restored.img"
            XCTAssertEqual(try strata("restore", chain, out, "--quiet").status, 0)
            let original = try Data(contentsOf: URL(fileURLWithPath: disk)), image = try Data(contentsOf: URL(fileURLWithPath: out))
            let swap = Self.parts[2].start * 512 + 65536..<(Self.parts[2].start + Self.parts[2].size) * 512
            func bytes(_ n: Int) -> Range<Int> { Self.parts[n - 1].start * 512..<(Self.parts[n - 1].start + Self.parts[n - 1].size) * 512 }
            for exact in [0..<swap.lowerBound, swap.upperBound..<bytes(4).lowerBound, bytes(5), bytes(6).upperBound..<original.count] {
                XCTAssertTrue(image[exact] == original[exact], "\(name): bytes \(exact) restore exactly")
            }
            try FileManager.default.removeItem(atPath: out)
            return r.stderr
        }
        XCTAssertEqual(
            try captureWhole("dirty-log"),
            """
            strata: partition 1: read whole: libblkid recognises nothing there
            strata: partition 2 (ext4): read whole: it needs journal recovery (mounted, or not cleanly unmounted), so its bitmaps may be stale
            strata: partition 5 (xfs): read whole: its log is not clean (not unmounted cleanly, or mounted), so its free-space trees may be stale

            """)
        // The XFS mounted and unmounted (its log replayed, then clean), then its group's header made to count one
        // free block more than its tree holds (xfs_db writes the field and its checksum).
        try inPartition(disk, Self.xfsPart) { _ in }
        let xfs = try loop(disk, partition: Self.xfsPart)
        let free = try XCTUnwrap(Int(toolOutput(["xfs_db", "-r", "-c", "agf 0", "-c", "p freeblks", xfs]).split(separator: " ").last ?? ""))
        try sh("xfs_db -x -c 'agf 0' -c 'write freeblks \(free + 1)' \(xfs) > /dev/null")
        detach(xfs)
        let stderr = try captureWhole("miscounted")
        XCTAssertTrue(stderr.contains("strata: partition 5 (xfs): read whole: allocation group 0's free-space tree holds \(free) free blocks (longest "), stderr)
        XCTAssertTrue(stderr.contains("), its header says \(free + 1) (longest "), stderr)
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
    private func inNTFS(_ disk: String, at part: (start: Int, size: Int) = ntfsPart, readOnly: Bool = false, _ body: (String) throws -> Void) throws {
        let dev = try attach(disk, offset: part.start * 512, length: part.size * 512, readOnly: readOnly)
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
