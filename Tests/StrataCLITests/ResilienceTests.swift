// Integrity and resilience, through the strata binary: capture past bad sectors of a source that really fails
// (a FUSE file answering EIO, read directly and through a loop device), verify naming damaged images, frames
// and the points they affect, restore --verify, and SIGKILL of capture, merge, restore and verify in loops.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The repository's Tests/Fixtures directory (beside this file).
let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures").path

/// A disk that fails: `Tests/Fixtures/faultyfs.py` serving a backing file through FUSE with EIO for chosen byte
/// ranges. Unmounted at deinit.
final class FaultyDisk {
    let mountPoint: String
    let path: String
    private let process: Process

    static func unavailableReason() -> String? {
        if getuid() != 0 { return "FUSE mounts for tests need root" }
        if access("/dev/fuse", R_OK | W_OK) != 0 { return "/dev/fuse is not available" }
        if runTool("/usr/bin/python3", ["-c", "import fusepy"]) != 0 { return "python3-fusepy is not installed (Tools/setup installs it)" }
        return nil
    }

    /// `stalls`: ranges whose reads wait until `release()`.
    init(backing: String, bad: [(offset: Int, length: Int)], stalls: [(offset: Int, length: Int)] = [], in dir: String) throws {
        mountPoint = "\(dir)/fuse-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let list = "\(mountPoint).bad"
        let lines = bad.map { "\($0.offset) \($0.length)\n" } + stalls.map { "\($0.offset) \($0.length) stall\n" }
        try lines.joined().write(toFile: list, atomically: true, encoding: .utf8)
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["\(fixtures)/faultyfs.py", backing, list, mountPoint]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        path = "\(mountPoint)/disk"
        for _ in 0..<100 where access(path, R_OK) != 0 { usleep(50_000) }
        guard access(path, R_OK) == 0 else { throw TestFailure("the FUSE fixture did not mount at \(mountPoint)") }
    }

    /// Whether a read has reached a stalled range (and waits there).
    var stalled: Bool { access("\(mountPoint).stalled", F_OK) == 0 }

    /// Lets the reads waiting on a stalled range go on, and every later one.
    func release() { FileManager.default.createFile(atPath: "\(mountPoint).release", contents: Data()) }

    deinit {
        release()
        _ = runTool("/usr/bin/env", ["fusermount", "-u", mountPoint])
        process.terminate()
        process.waitUntilExit()
    }
}

/// Runs a tool to its end (within the deadline), its output discarded; returns its exit status.
@discardableResult
func runTool(_ tool: String, _ args: [String]) -> Int32 {
    let r = runProcess(tool, args)
    XCTAssertFalse(r.timedOut, "\(tool) \(args.joined(separator: " ")) did not finish and was killed")
    return r.status
}

/// A tool's stdout, trimmed.
func toolOutput(_ args: [String]) -> String {
    let r = runProcess("/usr/bin/env", args)
    XCTAssertFalse(r.timedOut, "\(args.joined(separator: " ")) did not finish and was killed")
    return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}

func jsonObject(_ text: String) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
}

final class ResilienceTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = try scratchDirectory("strata-res")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func contents(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }


    // MARK: Bad sectors

    /// Bad ranges: a whole block, one 512-byte sector inside a block, three blocks, a sector in the last block.
    private let size = 8 << 20
    private var badRanges: [(offset: Int, length: Int)] { [(4096, 4096), (1_000_000, 512), (3_000_000 - 100, 9000), ((8 << 20) - 512, 512)] }
    /// The 4 KiB blocks those ranges touch, as [offset, length] byte ranges joined.
    private let expectedRanges = [[4096, 4096], [999_424, 4096], [2_998_272, 12288], [(8 << 20) - 4096, 4096]]

    private func expectedRestore(_ disk: Data) -> Data {
        var d = disk
        for r in expectedRanges { d.replaceSubrange(r[0]..<(r[0] + r[1]), with: Data(count: r[1])) }
        return d
    }

    private func checkBadSectors(viaLoop: Bool) throws {
        if let reason = FaultyDisk.unavailableReason() { throw XCTSkip(reason) }
        let backing = "\(dir)/backing"
        try makeDisk(backing, size: size, seed: 9)
        for i in stride(from: size / 2, to: size, by: 4096) where i % 8192 == 0 {  // data in the second half too
            let h = FileHandle(forWritingAtPath: backing)!
            h.seek(toFileOffset: UInt64(i))
            h.write(Data(repeating: UInt8(i / 8192 & 0xFF) | 1, count: 4096))
            h.closeFile()
        }
        let disk = try contents(backing)
        let chain = "\(dir)/chain"
        XCTAssertEqual(try strata("capture", backing, chain, "--quiet").status, 0, "a clean first capture")
        let before = try chainFiles(chain)

        let faulty = try FaultyDisk(backing: backing, bad: badRanges, in: dir)
        var source = faulty.path
        var loop: String?
        if viaLoop {
            let dev = toolOutput(["losetup", "-f", "--show", "--read-only", faulty.path])
            guard dev.hasPrefix("/dev/loop") else { throw TestFailure("losetup over the FUSE file failed") }
            loop = dev
            source = dev
        }
        defer { if let loop { runTool("/usr/bin/env", ["losetup", "-d", loop]) } }

        // Default: the first read error fails the capture, loudly, and the chain is untouched.
        let strict = try strata("capture", source, chain)
        XCTAssertEqual(strict.status, 74, strict.stderr)
        XCTAssertTrue(strict.stderr.contains("error: read error on source \(source) at byte "), strict.stderr)
        XCTAssertTrue(strict.stderr.hasSuffix("Input/output error; the disk may be failing: pass --max-bad-blocks N to image past unreadable blocks (the chain was not changed)\n"), strict.stderr)
        XCTAssertEqual(try chainFiles(chain), before)

        // Too many: stops past the limit, chain untouched.
        let few = try strata("capture", source, chain, "--max-bad-blocks", "5")
        XCTAssertEqual(few.status, 74, few.stderr)
        XCTAssertTrue(few.stderr.contains("error: source \(source) has more than 5 unreadable blocks"), few.stderr)
        XCTAssertEqual(try chainFiles(chain), before)

        // Enough: the capture finishes and reports exactly the blocks it could not read.
        let ok = try strata("capture", source, chain, "--max-bad-blocks", "1000", "--json")
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let j = jsonObject(ok.stdout)
        XCTAssertEqual(j["unreadableBlocks"] as? Int, 6)
        XCTAssertEqual(j["unreadableRanges"] as? [[Int]], expectedRanges)
        XCTAssertEqual(j["blocksChanged"] as? Int, 6, "only the unreadable blocks differ from point 1")

        // Restore writes zeros there and reports them; point 1 is untouched by it.
        let restore = try strata("restore", chain, "\(dir)/out", "--force", "--json", "--verify")
        XCTAssertEqual(restore.status, 0, restore.stderr)
        let r = jsonObject(restore.stdout)
        XCTAssertEqual(r["unreadableBlocks"] as? Int, 6)
        XCTAssertEqual(r["unreadableRanges"] as? [[Int]], expectedRanges)
        XCTAssertEqual(r["verified"] as? Bool, true)
        XCTAssertEqual(try contents("\(dir)/out"), expectedRestore(disk))
        let text = try strata("restore", chain, "\(dir)/out", "--force", "--quiet")
        XCTAssertEqual(text.stderr, "strata: warning: 6 blocks written as zeros (unreadable at capture), at bytes 4096+4096, 999424+4096, 2998272+12288, 8384512+4096\n")
        XCTAssertEqual(try strata("restore", chain, "\(dir)/out", "--force", "--point", "1", "--quiet").status, 0)
        XCTAssertEqual(try contents("\(dir)/out"), disk)
        XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0, "unreadable blocks are not damage")

        // Once the disk reads again, the next capture picks the blocks up.
        let healed = try strata("capture", backing, chain, "--json")
        XCTAssertEqual(jsonObject(healed.stdout)["blocksChanged"] as? Int, 6)
        XCTAssertEqual(try strata("restore", chain, "\(dir)/out", "--force", "--quiet").status, 0)
        XCTAssertEqual(try contents("\(dir)/out"), disk)
    }

    func testCapturePastBadSectorsOfAFile() throws { try checkBadSectors(viaLoop: false) }

    func testCapturePastBadSectorsOfALoopDevice() throws {
        if getuid() != 0 { throw XCTSkip("loop devices need root") }
        try checkBadSectors(viaLoop: true)
    }

    /// A chain of used blocks reads the used runs of a chunk as one piece of several reads (free blocks between
    /// them not read): a bad sector in free space costs nothing, and one in a used run that is not a piece's first
    /// read is found and recorded exactly, block by block, as in any other read.
    func testBadSectorsOfAChainOfUsedBlocksAreFoundWhereUsedAndOnlyThere() throws {
        if let reason = FaultyDisk.unavailableReason() { throw XCTSkip(reason) }
        let backing = "\(dir)/fs.img", files = "\(dir)/files", chain = "\(dir)/chain"
        func sh(_ script: String) throws -> String {
            let r = runProcess("/bin/sh", ["-c", script], deadline: 120)
            guard r.status == 0 else { throw TestFailure("\(script): exit \(r.status): \(r.stdout) \(r.stderr)") }
            return r.stdout
        }
        // 40 files of 3 blocks each, side by side; every other one deleted: used runs of 3 blocks, 3 free between.
        _ = try sh("mkdir -p \(files) && for i in $(seq 10 49); do head -c 12288 /dev/urandom > \(files)/f$i; done")
        _ = try sh("head -c \(16 << 20) /dev/urandom > \(backing) && mkfs.ext4 -q -F -E nodiscard -b 4096 -d \(files) \(backing)")
        func blocks(_ name: String) throws -> [Int] {
            try sh("debugfs -R 'blocks /\(name)' \(backing) 2>/dev/null").split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        }
        let kept = try blocks("f21"), deleted = try blocks("f22"), later = try blocks("f23")
        XCTAssertEqual(kept.count, 3)
        XCTAssertEqual(later.first, (deleted.last ?? 0) + 1, "the files lie side by side: \(kept) \(deleted) \(later)")
        for i in stride(from: 10, to: 50, by: 2) { _ = try sh("debugfs -w -R 'rm /f\(i)' \(backing) > /dev/null 2>&1") }
        let free = ext4FreeRanges(backing)
        XCTAssertTrue(free.contains { $0.contains(deleted[1] * 4096) }, "f22's blocks are free")
        let disk = try contents(backing)

        // A bad sector in a block that is free: never read, so even a strict capture does not meet it.
        do {
            let faulty = try FaultyDisk(backing: backing, bad: [(deleted[1] * 4096 + 512, 512)], in: dir)
            let r = try strata("capture", faulty.path, chain, "--used-blocks", "--json")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(jsonObject(r.stdout)["unreadableBlocks"] as? Int, 0)
        }
        // Bad sectors in used runs between free blocks: the capture stops at the first, then records both.
        // (A rescue that read more than the failed part would also meet the free one, f22's first block.)
        let bad = [(later[1] * 4096 + 1024, 100), (kept[2] * 4096, 4096), (deleted[0] * 4096, 4096)]
        let faulty = try FaultyDisk(backing: backing, bad: bad, in: dir)
        let before = try chainFiles(chain)
        let strict = try strata("capture", faulty.path, chain)
        XCTAssertEqual(strict.status, 74, strict.stderr)
        XCTAssertEqual(try chainFiles(chain), before)
        let ok = try strata("capture", faulty.path, chain, "--max-bad-blocks", "10", "--json")
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let j = jsonObject(ok.stdout)
        XCTAssertEqual(j["unreadableRanges"] as? [[Int]], [[kept[2] * 4096, 4096], [later[1] * 4096, 4096]])
        XCTAssertEqual(j["blocksChanged"] as? Int, 2, "only the unreadable blocks differ from point 1")
        // The restore: zeros for the unreadable and the free blocks, the rest the source's.
        XCTAssertEqual(try strata("restore", chain, "\(dir)/out", "--quiet").status, 0)
        var expected = disk
        for r in free + [kept[2] * 4096..<kept[2] * 4096 + 4096, later[1] * 4096..<later[1] * 4096 + 4096] {
            expected.replaceSubrange(r, with: Data(count: r.count))
        }
        XCTAssertEqual(try contents("\(dir)/out"), expected)
        XCTAssertEqual(try strata("restore", chain, "\(dir)/out1", "--point", "1", "--quiet").status, 0)
        var first = disk
        for r in free { first.replaceSubrange(r, with: Data(count: r.count)) }
        XCTAssertEqual(try contents("\(dir)/out1"), first, "point 1, captured past the free bad sector, is whole")
    }

    // MARK: verify

    private func makeChain(_ chain: String, nights: Int, size: Int = 6 << 20) throws -> [Data] {
        var states: [Data] = []
        for night in 0..<nights {
            try makeDisk("\(dir)/disk", size: size, seed: 11, changes: 300 * night)
            XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
            states.append(try contents("\(dir)/disk"))
        }
        return states
    }

    private func flip(_ path: String, at offset: Int) throws {
        let h = FileHandle(forUpdatingAtPath: path)!
        h.seek(toFileOffset: UInt64(offset))
        let b = h.readData(ofLength: 1)
        h.seek(toFileOffset: UInt64(offset))
        h.write(Data([b[0] ^ 0x10]))
        h.closeFile()
    }

    func testVerifyPassesAWholeChainAndChangesNothing() throws {
        let chain = "\(dir)/chain"
        _ = try makeChain(chain, nights: 3)
        try "left by a killed run".write(toFile: "\(chain)/.strata-tmp-1-p000009.strata", atomically: false, encoding: .utf8)
        let before = try chainFiles(chain)
        let v = try strata("verify", chain, "--json")
        XCTAssertEqual(v.status, 0, v.stderr)
        let j = jsonObject(v.stdout)
        XCTAssertEqual(j["whole"] as? Bool, true)
        XCTAssertEqual(j["images"] as? Int, 3)
        XCTAssertEqual(j["wholePoints"] as? [Int], [1, 2, 3])
        XCTAssertEqual(j["affectedPoints"] as? [Int], [])
        XCTAssertEqual(try chainFiles(chain), before, "verify is read-only, even about leftovers")
        let text = try strata("verify", chain, "--checksums-only")
        XCTAssertEqual(text.status, 0)
        XCTAssertTrue(text.stdout.hasPrefix("checked 3 images, "), text.stdout)
        XCTAssertTrue(text.stdout.hasSuffix(": all whole\n"), text.stdout)
    }

    /// A flipped byte in a frame of point 2's image: verify names the file, the frame and its source blocks,
    /// says point 1 is whole and points 2 and 3 affected (unless point 3 overwrote those blocks), exits 65.
    func testVerifyNamesADamagedFrameAndTheAffectedPoints() throws {
        let chain = "\(dir)/chain"
        _ = try makeChain(chain, nights: 3)
        try flip("\(chain)/p000002.strata", at: 4096 + 100)  // in the block hashes of frame 0 of image 2
        for deep in [true, false] {
            let v = deep ? try strata("verify", chain, "--json") : try strata("verify", chain, "--json", "--checksums-only")
            XCTAssertEqual(v.status, 65, v.stderr)
            let j = jsonObject(v.stdout)
            XCTAssertEqual(j["whole"] as? Bool, false)
            let problems = j["problems"] as! [[String: Any]]
            XCTAssertEqual(problems.count, 1)
            XCTAssertEqual(problems[0]["file"] as? String, "p000002.strata")
            XCTAssertEqual(problems[0]["detail"] as? String, "frame 0 at byte 4096 fails its checksum")
            XCTAssertFalse((problems[0]["blocks"] as! [[Int]]).isEmpty)
            XCTAssertEqual(j["wholePoints"] as? [Int], [1])
            XCTAssertEqual(j["affectedPoints"] as? [Int], [2, 3])
            XCTAssertTrue(v.stderr.hasSuffix("strata: error: verify found 1 damaged item (listed above); points affected: 2, 3; restore unaffected points, or use another copy of the chain\n"), v.stderr)
        }
        let text = try strata("verify", chain)
        XCTAssertTrue(text.stdout.hasPrefix("damaged: p000002.strata: frame 0 at byte 4096 fails its checksum; source blocks "), text.stdout)
        XCTAssertTrue(text.stdout.contains("1 damaged; points whole: 1; points affected: 2, 3"), text.stdout)
        XCTAssertEqual(try strata("verify", chain, "--point", "1").status, 0, "point 1 needs nothing from image 2")
        XCTAssertEqual(try strata("verify", chain, "--point", "2").status, 65)
        XCTAssertEqual(try strata("restore", chain, "\(dir)/out", "--force", "--point", "1", "--quiet").status, 0)
        XCTAssertEqual(try strata("restore", chain, "\(dir)/out", "--force", "--point", "2", "--quiet").status, 65)
    }

    /// Damage to headers, indexes, the manifest's files and links: each named, never a crash.
    func testVerifyNamesBrokenImagesMissingFilesAndForeignImages() throws {
        let chain = "\(dir)/chain"
        _ = try makeChain(chain, nights: 3)
        let clean = try chainFiles(chain)
        func restoreClean() throws {
            for (name, data) in clean { try data.write(to: URL(fileURLWithPath: "\(chain)/\(name)")) }
        }
        func verify() throws -> (Int32, [[String: Any]], [Int]) {
            let v = try strata("verify", chain, "--json")
            let j = jsonObject(v.stdout)
            return (v.status, j["problems"] as? [[String: Any]] ?? [], j["affectedPoints"] as? [Int] ?? [])
        }

        try flip("\(chain)/p000001.strata", at: 40)  // header
        var (status, problems, affected) = try verify()
        XCTAssertEqual(status, 65)
        XCTAssertEqual(problems.map { $0["file"] as! String }, ["p000001.strata"])
        XCTAssertEqual(affected, [1, 2, 3])

        try restoreClean()
        let image2 = clean["p000002.strata"]!
        try flip("\(chain)/p000002.strata", at: image2.count - 10)  // index
        (status, problems, affected) = try verify()
        XCTAssertEqual(status, 65)
        XCTAssertEqual(problems.map { $0["file"] as! String }, ["p000002.strata"])
        XCTAssertTrue((problems[0]["detail"] as! String).contains("index"), "\(problems)")
        XCTAssertEqual(affected, [2, 3])

        try restoreClean()
        try FileManager.default.removeItem(atPath: "\(chain)/p000003.strata")
        (status, problems, affected) = try verify()
        XCTAssertEqual(problems.map { $0["detail"] as! String }, ["the file is missing"])
        XCTAssertEqual(affected, [3])

        // An image of another chain spliced in under the right name.
        try restoreClean()
        let other = "\(dir)/other"
        _ = try makeChain(other, nights: 2)
        try FileManager.default.removeItem(atPath: "\(chain)/p000002.strata")
        try FileManager.default.copyItem(atPath: "\(other)/p000002.strata", toPath: "\(chain)/p000002.strata")
        (status, problems, affected) = try verify()
        XCTAssertEqual(status, 65)
        XCTAssertTrue((problems.first?["detail"] as? String ?? "").hasPrefix("it belongs to another chain"), "\(problems)")
        XCTAssertEqual(affected, [2, 3])
        let r = try strata("restore", chain, "\(dir)/out", "--force", "--point", "3")
        XCTAssertEqual(r.status, 65)
        XCTAssertTrue(r.stderr.contains("p000002.strata: it belongs to another chain"), r.stderr)

        // A manifest that is garbage.
        try restoreClean()
        try Data((0..<300).map { UInt8(truncatingIfNeeded: $0 &* 37) }).write(to: URL(fileURLWithPath: "\(chain)/chain.manifest"))
        let garbage = try strata("verify", chain)
        XCTAssertEqual(garbage.status, 65)
        XCTAssertTrue(garbage.stderr.hasPrefix("strata: error: chain is damaged: chain.manifest: "), garbage.stderr)
    }

    func testRestoreVerifyReadsTheTargetBack() throws {
        let chain = "\(dir)/chain"
        let states = try makeChain(chain, nights: 3)
        for point in 1...3 {
            let r = try strata("restore", chain, "\(dir)/out", "--force", "--point", "\(point)", "--verify")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.hasSuffix(", read back and verified\n"), r.stdout)
            XCTAssertEqual(try contents("\(dir)/out"), states[point - 1])
        }
    }

    // MARK: Killed at random moments, 20 times each

    private func points(_ chain: String) throws -> [Int] {
        let list = try strata("list", chain, "--json")
        XCTAssertEqual(list.status, 0, list.stderr)
        return (jsonObject(list.stdout)["points"] as? [[String: Any]] ?? []).map { $0["point"] as! Int }
    }

    /// Starts strata with `args`, kills it with SIGKILL after `micros`, and says whether the kill landed while it
    /// ran (false: it had finished first).
    private func killAfter(_ args: [String], micros: UInt32) throws -> Bool {
        let p = try launch(args)
        usleep(micros)
        kill(p.pid, SIGKILL)
        let r = p.finish()
        XCTAssertFalse(r.timedOut)
        return r.signalled && r.status == SIGKILL
    }

    private func timed(_ args: String...) throws -> UInt32 {
        let started = Date()
        XCTAssertEqual(try strata(args).status, 0)
        return UInt32(max(Date().timeIntervalSince(started), 0.02) * 1_000_000)
    }

    /// Runs `round` with kill moments drawn from 0..90% of `span` (a measured run), the window halving after a
    /// round whose command finished before the kill, until a kill lands mid-run; fails when none does.
    private func killMidRun(_ what: String, span: UInt32, _ round: (UInt32) throws -> Bool, rng: inout SystemRandomNumberGenerator) rethrows {
        var window = span / 10 * 9
        for _ in 0..<8 {
            if try round(UInt32.random(in: 0...window, using: &rng)) { return }
            window /= 2
        }
        XCTFail("\(what): the command finished before every kill")
    }

    /// 20 rounds each of capture, merge/prune, restore and verify killed with SIGKILL at a random moment; after
    /// every round verify passes and every point the chain lists restores bit for bit.
    func testKillLoopsLeaveAVerifiableChain() throws {
        let size = 8 << 20
        let chain = "\(dir)/chain"
        var states: [Int: Data] = [:]
        var rng = SystemRandomNumberGenerator()
        func checkAll(_ what: String) throws {
            let v = try strata("verify", chain, "--quiet")
            XCTAssertEqual(v.status, 0, "\(what): \(v.stdout) \(v.stderr)")
            for point in try points(chain) {
                let r = try strata("restore", chain, "\(dir)/out", "--force", "--point", "\(point)", "--quiet")
                XCTAssertEqual(r.status, 0, "\(what): \(r.stderr)")
                XCTAssertEqual(try contents("\(dir)/out"), states[point], "\(what): point \(point)")
            }
        }
        try makeDisk("\(dir)/disk", size: size, seed: 12)
        let captureSpan = try timed("capture", "\(dir)/disk", chain, "--quiet")
        states[1] = try contents("\(dir)/disk")

        for round in 1...20 {
            try makeDisk("\(dir)/disk", size: size, seed: 12, changes: 40 * round)
            try killMidRun("capture round \(round)", span: captureSpan, { micros in
                let before = try points(chain)
                let killed = try killAfter(["capture", "\(dir)/disk", chain, "--quiet"], micros: micros)
                let after = try points(chain)
                if after.count > before.count { states[after.last!] = try contents("\(dir)/disk") } else { XCTAssertEqual(after, before) }
                try checkAll("capture round \(round)")
                return killed
            }, rng: &rng)
        }
        while try points(chain).count < 8 {
            XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
            states[try points(chain).last!] = try contents("\(dir)/disk")
        }
        let mergeSpan = try timed("merge", chain, "--from", "2", "--to", "3", "--quiet")
        for round in 1...20 {
            try killMidRun("merge round \(round)", span: mergeSpan, { micros in
                var ps = try points(chain)
                if ps.count < 4 {
                    try makeDisk("\(dir)/disk", size: size, seed: 12, changes: 900 + 40 * round)
                    XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
                    ps = try points(chain)
                    states[ps.last!] = try contents("\(dir)/disk")
                }
                let args = round % 3 == 0
                    ? ["prune", chain, "--keep", "\(ps.count - 1)", "--quiet"]
                    : ["merge", chain, "--from", "\(ps[ps.count - 3])", "--to", "\(ps[ps.count - 2])", "--quiet"]
                let killed = try killAfter(args, micros: micros)
                XCTAssertTrue(Set(try points(chain)).isSubset(of: Set(ps)))
                try checkAll("merge round \(round)")
                return killed
            }, rng: &rng)
        }
        let restoreSpan = try timed("restore", chain, "\(dir)/out", "--force", "--quiet")
        let verifySpan = try timed("verify", chain, "--quiet")
        let files = try chainFiles(chain)
        for round in 1...20 {
            try killMidRun("restore round \(round)", span: restoreSpan, { try killAfter(["restore", chain, "\(dir)/target", "--force", "--quiet"], micros: $0) }, rng: &rng)
            try killMidRun("verify round \(round)", span: verifySpan, { try killAfter(["verify", chain, "--quiet"], micros: $0) }, rng: &rng)
            XCTAssertEqual(try chainFiles(chain), files, "round \(round): restore and verify never change the chain")
        }
        try checkAll("after killed restores and verifies")
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0, "the next command cleans up and works")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasPrefix(".strata-tmp-") }, [])
    }
}
