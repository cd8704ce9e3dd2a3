// A point's partitions: `list --partitions` of GPT and MBR disk points (logical partitions included, a damaged
// entry named), `restore --partition N` of an ext4 partition of a GPT disk onto a loop device (fsck-clean, every
// file equal to that night's, --delta writing only what changed, --verify), of a partition whose size is not a
// multiple of the chain's block size, and `restore -` into a pipe (equal to the restore to a file); and the
// refusals, each with its exit code: no such partition, an extended one, a damaged table, a start inside a
// block, a terminal, --delta into a pipe.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class PartitionTests: LoopDeviceTestCase {
    override var scratchName: String { "strata-partitions" }

    // The GPT disk: 1 an EFI system partition (no filesystem), 2 an ext4 root, 3 swap, 4 an ext4 whose size
    // (12289 sectors) is not a multiple of 4096 bytes. In 512-byte sectors.
    static let gpt: [(start: Int, size: Int, type: String, name: String)] = [
        (2048, 8192, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI"),
        (10240, 98304, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "root"),
        (108544, 8192, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "swap"),
        (116736, 12289, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "odd"),
    ]

    /// Mounts partition `n` of `disk` at a fresh directory, runs `body` in it, and unmounts it.
    private func inPartition(_ disk: String, _ n: Int, readOnly: Bool = false, _ body: (String) throws -> Void) throws {
        let p = Self.gpt[n - 1]
        try inMount(disk, offset: p.start * 512, length: p.size * 512, readOnly: readOnly, body)
    }

    /// The GPT disk at `path`, its ext4 partitions filled with files (a copy of partition 2's kept in `files`).
    private func makeGPTDisk(_ path: String, files: String) throws {
        try sh("truncate -s 72M \(path)")
        let table = Self.gpt.map { "start=\($0.start), size=\($0.size), type=\($0.type), name=\"\($0.name)\"" }.joined(separator: "\n")
        try sh("printf 'label: gpt\n\(table)\n' | sfdisk -q \(path)")
        for n in [2, 4] {
            let p = Self.gpt[n - 1]
            let dev = try attach(path, offset: p.start * 512, length: p.size * 512)
            try sh("mkfs.ext4 -q -F -L \(p.name) \(dev)")
            detach(dev)
        }
        let swap = Self.gpt[2]
        let dev = try attach(path, offset: swap.start * 512, length: swap.size * 512)
        try sh("mkswap -L swap \(dev) >/dev/null")
        detach(dev)
        try inPartition(path, 2) { root in
            try sh("mkdir -p \(root)/etc \(root)/var && for i in $(seq 1 40); do head -c $((i * 3001)) /dev/urandom > \(root)/etc/f$i; done && head -c 5000000 /dev/urandom > \(root)/var/big")
            try sh("rm -rf \(files) && cp -a \(root) \(files)")
        }
        try inPartition(path, 4) { odd in try sh("head -c 2000000 /dev/urandom > \(odd)/data") }
    }

    /// A night's changes to partition 2: files rewritten, removed, added (the new state copied to `files`).
    private func changeNight(_ path: String, files: String) throws {
        try inPartition(path, 2) { root in
            try sh("for i in $(seq 1 5); do head -c 7000 /dev/urandom > \(root)/etc/f$i; done; rm \(root)/etc/f40; head -c 300000 /dev/urandom > \(root)/var/new; dd if=/dev/urandom of=\(root)/var/big bs=4096 seek=100 count=20 conv=notrunc status=none")
            try sh("rm -rf \(files) && cp -a \(root) \(files)")
        }
    }

    /// Checks the ext4 on `device` is clean and holds exactly the files in `files`.
    private func checkExt4(_ device: String, equals files: String) throws {
        XCTAssertEqual(runTool("/usr/bin/env", ["e2fsck", "-fn", device]), 0, "e2fsck of the restored partition")
        let mountPoint = "\(dir)/check-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try sh("mount -o ro,noload \(device) \(mountPoint)")
        defer { runTool("/usr/bin/env", ["umount", mountPoint]) }
        let diff = runProcess("/usr/bin/env", ["diff", "-r", "--no-dereference", files, mountPoint])
        XCTAssertEqual(diff.status, 0, "restored files differ: \(diff.stdout.prefix(500))")
    }

    func testListPartitionsOfGPTAndMBRPoints() throws {
        let disk = "\(dir)/disk.img", chain = "\(dir)/chain"
        try makeGPTDisk(disk, files: "\(dir)/files")
        XCTAssertEqual(try strata("capture", disk, chain, "--quiet").status, 0)
        let listed = try strata("list", chain, "--partitions", "--json")
        XCTAssertEqual(listed.status, 0, listed.stderr)
        let report = jsonObject(listed.stdout)
        XCTAssertEqual((report["table"] as? [String: Any])?["scheme"] as? String, "gpt")
        XCTAssertEqual(report["size"] as? Int, 72 << 20)
        let parts = try XCTUnwrap(report["partitions"] as? [[String: Any]])
        XCTAssertEqual(parts.map { $0["number"] as? Int }, [1, 2, 3, 4])
        XCTAssertEqual(parts.map { $0["offset"] as? Int }, Self.gpt.map { $0.start * 512 })
        XCTAssertEqual(parts.map { $0["size"] as? Int }, Self.gpt.map { $0.size * 512 })
        XCTAssertEqual(parts.map { $0["name"] as? String }, Self.gpt.map(\.name))
        XCTAssertEqual(parts.map { $0["type"] as? String }, Self.gpt.map(\.type))
        XCTAssertEqual(parts.map { ($0["content"] as? [String: Any])?["type"] as? String }, [nil, "ext4", "swap", "ext4"])
        XCTAssertEqual(parts.map { ($0["content"] as? [String: Any])?["label"] as? String }, [nil, "root", "swap", "odd"])
        XCTAssertEqual(parts[0]["typeName"] as? String, "EFI System")
        let human = try strata("list", chain, "--partitions")
        XCTAssertEqual(human.status, 0)
        XCTAssertTrue(human.stdout.hasPrefix("point 1: GPT disk, 72.0 MiB"), human.stdout)
        XCTAssertTrue(human.stdout.contains("ext4 \"root\""), human.stdout)

        // An encrypted chain: its partitions need its secret (its list of points does not).
        let sealed = "\(dir)/sealed"
        let env = ["STRATA_PASSPHRASE=correct horse battery staple", strataBinary]
        XCTAssertEqual(runProcess("/usr/bin/env", env + ["capture", disk, sealed, "--encrypt", "--quiet"], deadline: 120).status, 0)
        let locked = try strata("list", sealed, "--partitions")
        XCTAssertEqual(locked.status, 67, locked.stderr)
        let opened = runProcess("/usr/bin/env", env + ["list", sealed, "--partitions", "--json"], deadline: 120)
        XCTAssertEqual(opened.status, 0, opened.stderr)
        XCTAssertEqual(
            (jsonObject(opened.stdout)["partitions"] as? [[String: Any]])?.map { ($0["content"] as? [String: Any])?["type"] as? String },
            [nil, "ext4", "swap", "ext4"])

        // MBR: two primary partitions, the second an extended one holding two logical partitions.
        let mbr = "\(dir)/mbr.img", mbrChain = "\(dir)/mbr-chain"
        try sh("truncate -s 64M \(mbr) && printf 'label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=100000, type=5\nstart=24576, size=20480, type=83\nstart=47104, size=20480, type=82\n' | sfdisk -q \(mbr)")
        XCTAssertEqual(try strata("capture", mbr, mbrChain, "--quiet").status, 0)
        let m = jsonObject(try strata("list", mbrChain, "--partitions", "--json").stdout)
        XCTAssertEqual((m["table"] as? [String: Any])?["scheme"] as? String, "dos")
        let mparts = try XCTUnwrap(m["partitions"] as? [[String: Any]])
        XCTAssertEqual(mparts.map { $0["number"] as? Int }, [1, 2, 5, 6])
        XCTAssertEqual(mparts.map { $0["container"] as? Bool }, [false, true, false, false])
        XCTAssertEqual(mparts.map { $0["offset"] as? Int }, [2048, 22528, 24576, 47104].map { $0 * 512 })
        XCTAssertEqual(mparts.map { $0["type"] as? String }, ["0x83", "0x5", "0x83", "0x82"])

        // A table whose second entry runs past the end of the disk: listed, named, and refused by --partition.
        let bad = "\(dir)/bad.img", badChain = "\(dir)/bad-chain"
        try sh("truncate -s 64M \(bad) && printf 'label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=100000, type=83\n' | sfdisk -q \(bad) && truncate -s 32M \(bad)")
        XCTAssertEqual(try strata("capture", bad, badChain, "--quiet").status, 0)
        let b = jsonObject(try strata("list", badChain, "--partitions", "--json").stdout)
        let bparts = try XCTUnwrap(b["partitions"] as? [[String: Any]])
        XCTAssertTrue(bparts[0]["problem"] is NSNull)
        XCTAssertEqual(bparts[1]["problem"] as? String, "partition 2 ends at byte 62734336, past the end of the disk (33554432 bytes)")
        let refused = try strata("restore", badChain, "\(dir)/out", "--partition", "2")
        XCTAssertEqual(refused.status, 65)
        XCTAssertEqual(
            refused.stderr,
            "strata: error: the partition table of point 1 is damaged: partition 2 ends at byte 62734336, past the end of the disk (33554432 bytes); nothing was written: restore the whole point and repair the table\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out"))
        // A disk without a table.
        let plain = "\(dir)/plain.img", plainChain = "\(dir)/plain-chain"
        try makeDisk(plain, size: 1 << 20, seed: 3)
        XCTAssertEqual(try strata("capture", plain, plainChain, "--quiet").status, 0)
        let p = jsonObject(try strata("list", plainChain, "--partitions", "--json").stdout)
        XCTAssertTrue(p["table"] is NSNull)
        XCTAssertEqual((p["partitions"] as? [Any])?.count, 0)
        let none = try strata("restore", plainChain, "\(dir)/out", "--partition", "1")
        XCTAssertEqual(none.status, 64)
        XCTAssertEqual(
            none.stderr,
            "strata: error: point 1 has no partition 1 to restore: the point holds no partition table; nothing was written: see strata list CHAIN --partitions\n")
    }

    func testRestoredPartitionOnALoopDeviceIsCleanAndHoldsThatNightsFiles() throws {
        let disk = "\(dir)/disk.img", chain = "\(dir)/chain"
        try makeGPTDisk(disk, files: "\(dir)/night1")
        XCTAssertEqual(try strata("capture", disk, chain, "--quiet").status, 0)
        try changeNight(disk, files: "\(dir)/night2")
        XCTAssertEqual(try strata("capture", disk, chain, "--quiet").status, 0)

        // Night 1's root onto a loop device of exactly its size.
        let size = Self.gpt[1].size * 512
        let target = "\(dir)/root.img"
        try sh("truncate -s \(size) \(target)")
        let dev = try attach(target)
        let first = try strata("restore", chain, dev, "--partition", "2", "--point", "1", "--json")
        XCTAssertEqual(first.status, 0, first.stderr)
        let r = jsonObject(first.stdout)
        XCTAssertEqual(r["bytesWritten"] as? Int, size)
        XCTAssertEqual((r["partition"] as? [String: Any])?["offset"] as? Int, Self.gpt[1].start * 512)
        try checkExt4(dev, equals: "\(dir)/night1")
        // Rolled forward to night 2 with --delta: only what changed is written; then verified.
        let delta = try strata("restore", chain, dev, "--partition", "2", "--delta", "--verify", "--json")
        XCTAssertEqual(delta.status, 0, delta.stderr)
        let d = jsonObject(delta.stdout)
        XCTAssertEqual(d["bytesCompared"] as? Int, size)
        XCTAssertEqual(d["verified"] as? Bool, true)
        let differing = try XCTUnwrap(d["blocksDiffering"] as? Int)
        XCTAssertGreaterThan(differing, 0)
        XCTAssertLessThan(d["bytesWritten"] as? Int ?? .max, size / 4)
        try checkExt4(dev, equals: "\(dir)/night2")
        // The same bytes as the partition of the disk itself.
        try sh("dd if=\(disk) bs=512 skip=\(Self.gpt[1].start) count=\(Self.gpt[1].size) status=none | cmp - \(dev)")
        // Again: nothing differs.
        let again = jsonObject(try strata("restore", chain, dev, "--partition", "2", "--delta", "--json").stdout)
        XCTAssertEqual(again["blocksDiffering"] as? Int, 0)
        XCTAssertEqual(again["bytesWritten"] as? Int, 0)
        // A device smaller than the partition: refused before anything is written.
        let small = "\(dir)/small.img"
        try sh("truncate -s \(size - (1 << 20)) \(small)")
        let smallDev = try attach(small)
        let refused = try strata("restore", chain, smallDev, "--partition", "2")
        XCTAssertEqual(refused.status, 73)
        XCTAssertTrue(refused.stderr.contains("is too small") || refused.stderr.contains("smaller"), refused.stderr)
    }

    func testPartitionEndingInsideABlockAndStreams() throws {
        let disk = "\(dir)/disk.img", chain = "\(dir)/chain"
        try makeGPTDisk(disk, files: "\(dir)/night1")
        XCTAssertEqual(try strata("capture", disk, chain, "--quiet").status, 0)
        let odd = Self.gpt[3]
        let expected = "\(dir)/odd-expected.img"
        try sh("dd if=\(disk) of=\(expected) bs=512 skip=\(odd.start) count=\(odd.size) status=none")

        // To a file: exactly the partition's bytes (its last block cut where the partition ends).
        let out = "\(dir)/odd.img"
        let r = try strata("restore", chain, out, "--partition", "4", "--verify", "--json")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(jsonObject(r.stdout)["verified"] as? Bool, true)
        try sh("cmp \(expected) \(out)")
        // --delta over itself: the cut block compares equal (the target holds only the partition's part of it).
        let again = jsonObject(try strata("restore", chain, out, "--partition", "4", "--delta", "--force", "--json").stdout)
        XCTAssertEqual(again["blocksDiffering"] as? Int, 0)
        // Over a target of other bytes: the result is the partition again.
        try sh("head -c \(odd.size * 512) /dev/urandom > \(out)")
        let fixed = try strata("restore", chain, out, "--partition", "4", "--delta", "--force", "--verify")
        XCTAssertEqual(fixed.status, 0, fixed.stderr)
        try sh("cmp \(expected) \(out)")
        XCTAssertEqual(runTool("/usr/bin/env", ["e2fsck", "-fn", out]), 0)

        // Streams: the whole point and one partition into a pipe, equal to the disk and the partition.
        try sh("\(strataBinary) restore \(chain) - --quiet | cmp - \(disk)")
        try sh("\(strataBinary) restore \(chain) - --partition 4 --quiet | cmp - \(expected)")
        // The summary goes to standard error, away from the stream.
        let summary = runProcess("/bin/sh", ["-c", "\(strataBinary) restore \(chain) - --json | wc -c"], deadline: 120)
        XCTAssertEqual(summary.stdout.trimmingCharacters(in: .whitespacesAndNewlines), String(72 << 20))
        XCTAssertEqual(jsonObject(summary.stderr)["bytesWritten"] as? Int, 72 << 20)
        // A reader that stops early: a one-line error, not a silent death.
        let closed = runProcess("/bin/bash", ["-c", "\(strataBinary) restore \(chain) - --quiet | head -c 1000 > /dev/null; exit ${PIPESTATUS[0]}"], deadline: 120)
        XCTAssertEqual(closed.status, 74)
        XCTAssertEqual(closed.stderr, "strata: error: write standard output failed: Broken pipe\n")

        // Refusals.
        let delta = try strata("restore", chain, "-", "--delta")
        XCTAssertEqual(delta.status, 64)
        XCTAssertEqual(
            delta.stderr,
            "strata: error: --delta reads the target back, and standard output cannot be read; restore to a file, a device or an NBD export for it\n")
        let terminal = runProcess("/usr/bin/env", ["script", "-qec", "\(strataBinary) restore \(chain) -", "/dev/null"], deadline: 60)
        XCTAssertEqual(terminal.status, 73, terminal.stdout)
        XCTAssertTrue(
            terminal.stdout.contains(
                "strata: error: cannot write target standard output: it is a terminal; pipe it into a program (| ssh host dd of=/dev/sdb bs=1M) or name a file"),
            terminal.stdout)
        let missing = try strata("restore", chain, "\(dir)/x", "--partition", "7")
        XCTAssertEqual(missing.status, 64)
        XCTAssertEqual(
            missing.stderr,
            "strata: error: point 1 has no partition 7 to restore: its GPT table lists 1, 2, 3, 4; nothing was written: see strata list CHAIN --partitions\n")
        // A partition starting inside a block (an MBR disk's 63-sector start, 4096-byte blocks).
        let old = "\(dir)/old.img", oldChain = "\(dir)/old-chain"
        try sh("truncate -s 16M \(old) && printf 'label: dos\nstart=63, size=20000, type=83\n' | sfdisk -q \(old)")
        XCTAssertEqual(try strata("capture", old, oldChain, "--quiet").status, 0)
        let inside = try strata("restore", oldChain, "\(dir)/y", "--partition", "1")
        XCTAssertEqual(inside.status, 64)
        XCTAssertTrue(inside.stderr.hasPrefix("strata: error: partition 1 of point 1 starts at byte 32256, inside one of the chain's 4096-byte blocks"), inside.stderr)
        // The same disk captured with 512-byte blocks restores it.
        let small = "\(dir)/old-chain-512"
        XCTAssertEqual(try strata("capture", old, small, "--block-size", "512", "--quiet").status, 0)
        XCTAssertEqual(try strata("restore", small, "\(dir)/y", "--partition", "1", "--quiet").status, 0)
        try sh("dd if=\(old) bs=512 skip=63 count=20000 status=none | cmp - \(dir)/y")
    }
}
