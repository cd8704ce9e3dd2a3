// Safe by default, through the strata binary on real loop devices: a restore onto a device in use (mounted,
// a mounted partition, swap, open exclusively), onto the chain itself (its image, inside its directory, a loop
// device over a chain file), a capture of the chain or of the disk holding it, an existing target file without
// and with --force; the file modes of a new chain and a restored file under umask 022 and 077; the warning on a
// chain readable by others. Every refusal: its exact line, exit 77, and every file and device byte-identical.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A loop device over a new file in `dir`, optionally partition-scanned; detached (and its partition nodes
/// removed) at deinit.
final class TestLoop {
    let path: String
    let backing: String
    private var nodes: [String] = []

    static func unavailableReason() -> String? {
        if getuid() != 0 { return "loop devices need root" }
        if runTool("/usr/bin/env", ["losetup", "--version"]) != 0 { return "losetup is not installed" }
        return nil
    }

    init(size: Int, in dir: String, partitions: Bool = false) throws {
        backing = "\(dir)/loop-\(UUID().uuidString.prefix(8)).img"
        XCTAssertTrue(FileManager.default.createFile(atPath: backing, contents: nil))
        XCTAssertEqual(truncate(backing, off_t(size)), 0)
        let dev = toolOutput(["losetup", "-f", "--show"] + (partitions ? ["-P"] : []) + [backing])
        guard dev.hasPrefix("/dev/loop") else { throw TestFailure("losetup failed on a machine that should have loop devices") }
        path = dev
    }

    /// Writes a DOS label with two partitions, has the kernel read it, and makes the /dev nodes (no udev here).
    func partition() throws -> [String] {
        let r = runProcess("/usr/bin/env", ["sfdisk", "-q", path], stdin: Data("label: dos\n,16M\n,\n".utf8))
        guard r.status == 0 else { throw TestFailure("sfdisk failed (Tools/setup installs fdisk): \(r.stderr)") }
        // Without udev the kernel's own scan does not always happen: partx adds the partitions explicitly.
        runTool("/usr/bin/env", ["partx", "-a", path])
        let name = (path as NSString).lastPathComponent
        var parts: [String] = []
        for i in 1...2 {
            let part = "\(name)p\(i)"
            guard let numbers = try? String(contentsOfFile: "/sys/block/\(name)/\(part)/dev", encoding: .utf8) else {
                throw TestFailure("the kernel did not scan \(path)'s partitions")
            }
            let mm = numbers.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ":")
            let node = "/dev/\(part)"
            if access(node, F_OK) != 0 {
                XCTAssertEqual(runTool("/usr/bin/env", ["mknod", node, "b", String(mm[0]), String(mm[1])]), 0)
                nodes.append(node)
            }
            parts.append(node)
        }
        return parts
    }

    deinit {
        runTool("/usr/bin/env", ["losetup", "-d", path])
        for node in nodes { unlink(node) }
        unlink(backing)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A filesystem mounted for one test; unmounted at deinit.
final class TestMount {
    let point: String
    init(_ device: String, at point: String, options: [String] = []) throws {
        self.point = point
        try FileManager.default.createDirectory(atPath: point, withIntermediateDirectories: true)
        XCTAssertEqual(runTool("/usr/bin/env", ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", device]), 0)
        guard runTool("/usr/bin/env", ["mount"] + options + [device, point]) == 0 else { throw TestFailure("mount \(device) failed") }
    }
    deinit { runTool("/usr/bin/env", ["umount", point]) }
}

final class SafetyTests: XCTestCase {
    var dir = ""
    let size = 8 << 20

    override func setUpWithError() throws {
        dir = try scratchDirectory("strata-safety")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func contents(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }


    /// A chain of two points of an 8 MiB disk at `dir/chain`.
    private func makeChain() throws -> String {
        let chain = "\(dir)/chain"
        try makeDisk("\(dir)/disk", size: size, seed: 21)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
        try makeDisk("\(dir)/disk", size: size, seed: 21, changes: 9)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
        return chain
    }

    /// Runs strata and checks that it was refused with exit 77 and exactly `message`.
    private func assertRefused(_ args: [String], _ message: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try strata(args)
        XCTAssertEqual(r.status, 77, r.stderr, file: file, line: line)
        XCTAssertEqual(r.stderr, "strata: error: \(message)\n", file: file, line: line)
    }

    private func requireLoop() throws {
        if let reason = TestLoop.unavailableReason() { throw XCTSkip(reason) }
    }

    // MARK: Targets in use

    func testRestoreRefusesAMountedDeviceEvenWithForce() throws {
        try requireLoop()
        let chain = try makeChain()
        let before = try chainFiles(chain)
        let loop = try TestLoop(size: 32 << 20, in: dir)
        let mount = try TestMount(loop.path, at: "\(dir)/mnt")
        sync()
        let device = try contents(loop.backing)
        let message = "target \(loop.path) is in use: it is mounted at \(mount.point); nothing was written: unmount it first (--force does not override this)"
        try assertRefused(["restore", chain, loop.path], message)
        try assertRefused(["restore", chain, loop.path, "--force"], message)
        sync()
        XCTAssertEqual(try contents(loop.backing), device, "the mounted device is untouched")
        XCTAssertEqual(try chainFiles(chain), before)
    }

    func testRestoreRefusesADeviceWhosePartitionIsMounted() throws {
        try requireLoop()
        let chain = try makeChain()
        let loop = try TestLoop(size: 40 << 20, in: dir, partitions: true)
        let parts = try loop.partition()
        let mount = try TestMount(parts[0], at: "\(dir)/mnt")
        sync()
        let device = try contents(loop.backing)
        try assertRefused(
            ["restore", chain, loop.path, "--force"],
            "target \(loop.path) is in use: its partition \(parts[0]) is mounted at \(mount.point); nothing was written: unmount it first (--force does not override this)")
        sync()
        XCTAssertEqual(try contents(loop.backing), device)
    }

    func testRestoreRefusesActiveSwap() throws {
        try requireLoop()
        let chain = try makeChain()
        let loop = try TestLoop(size: 16 << 20, in: dir)
        XCTAssertEqual(runTool("/usr/bin/env", ["mkswap", "-q", loop.path]), 0)
        guard runTool("/usr/bin/env", ["swapon", loop.path]) == 0 else { throw TestFailure("swapon \(loop.path) failed") }
        defer { runTool("/usr/bin/env", ["swapoff", loop.path]) }
        let device = try contents(loop.backing)
        try assertRefused(
            ["restore", chain, loop.path],
            "target \(loop.path) is in use: it is active swap; nothing was written: run swapoff \(loop.path) first")
        XCTAssertEqual(try contents(loop.backing), device)
    }

    /// A device another program holds open with O_EXCL (as a mount, an array or a partitioning tool would): the
    /// kernel's refusal of strata's own exclusive open is what names it.
    func testRestoreRefusesADeviceOpenExclusively() throws {
        try requireLoop()
        let chain = try makeChain()
        let loop = try TestLoop(size: 16 << 20, in: dir)
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        holder.arguments = ["-c", "import os,sys,time; fd=os.open(sys.argv[1], os.O_RDONLY|os.O_EXCL); print('held', flush=True); time.sleep(60)", loop.path]
        let ready = Pipe()
        holder.standardOutput = ready
        try holder.run()
        defer {
            holder.terminate()
            holder.waitUntilExit()
        }
        var said = Data()
        while !said.contains(UInt8(ascii: "\n")) {
            let more = ready.fileHandleForReading.availableData
            if more.isEmpty { break }
            said += more
        }
        XCTAssertEqual(String(decoding: said, as: UTF8.self), "held\n")
        try assertRefused(
            ["restore", chain, loop.path],
            "target \(loop.path) is in use: it is open exclusively by another program; nothing was written: stop what holds it first")
        XCTAssertEqual(try contents(loop.backing), Data(count: 16 << 20))
    }

    /// A block device that is free is written as before (and holds the point afterwards).
    func testRestoreWritesAFreeDevice() throws {
        try requireLoop()
        let chain = try makeChain()
        let loop = try TestLoop(size: size, in: dir)
        let r = try strata("restore", chain, loop.path, "--quiet")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try contents(loop.backing), try contents("\(dir)/disk"))
    }

    // MARK: The chain protects itself

    func testRestoreRefusesTheChainItself() throws {
        let chain = try makeChain()
        let before = try chainFiles(chain)
        func refusal(_ target: String, _ detail: String) -> String {
            "target \(target) is part of the chain \(chain) (\(detail)): restoring onto it would destroy the chain; nothing was changed: choose a target outside the chain"
        }
        try assertRefused(["restore", chain, "\(chain)/p000001.strata", "--force"], refusal("\(chain)/p000001.strata", "it is the chain's file p000001.strata"))
        try assertRefused(["restore", chain, "\(chain)/map-p000002.strata"], refusal("\(chain)/map-p000002.strata", "it is the chain's file map-p000002.strata"))
        try assertRefused(["restore", chain, "\(chain)/new.img"], refusal("\(chain)/new.img", "it is inside the chain's directory"))
        try assertRefused(["restore", chain, chain], refusal(chain, "it is the chain's directory"))
        XCTAssertEqual(symlink("\(chain)/p000002.strata", "\(dir)/link"), 0)
        try assertRefused(["restore", chain, "\(dir)/link", "--force"], refusal("\(dir)/link", "it is the chain's file p000002.strata"))
        XCTAssertEqual(link("\(chain)/p000001.strata", "\(dir)/hardlink"), 0)
        try assertRefused(["restore", chain, "\(dir)/hardlink", "--force"], refusal("\(dir)/hardlink", "it is the chain's file p000001.strata"))
        try assertRefused(["restore", chain, "\(dir)/../\((dir as NSString).lastPathComponent)/chain/p000001.strata", "--force"],
            refusal("\(dir)/../\((dir as NSString).lastPathComponent)/chain/p000001.strata", "it is the chain's file p000001.strata"))
        unlink("\(dir)/hardlink")
        XCTAssertEqual(try chainFiles(chain), before)
        XCTAssertEqual(try strata(["verify", chain, "--quiet"]).status, 0)
    }

    func testRestoreRefusesALoopDeviceOverAChainFile() throws {
        try requireLoop()
        let chain = try makeChain()
        let before = try chainFiles(chain)
        let dev = toolOutput(["losetup", "-f", "--show", "\(chain)/p000001.strata"])
        XCTAssertTrue(dev.hasPrefix("/dev/loop"), "losetup over a chain file")
        defer { runTool("/usr/bin/env", ["losetup", "-d", dev]) }
        let image = URL(fileURLWithPath: "\(chain)/p000001.strata").resolvingSymlinksInPath().path
        try assertRefused(
            ["restore", chain, dev, "--force"],
            "target \(dev) is part of the chain \(chain) (it is a loop device over \(image)): restoring onto it would destroy the chain; nothing was changed: choose a target outside the chain")
        try assertRefused(
            ["capture", dev, chain],
            "source \(dev) is part of the chain \(chain) (it is a loop device over \(image)): capturing it would image the chain into itself; nothing was changed: choose a source outside the chain")
        XCTAssertEqual(try chainFiles(chain), before)
    }

    func testCaptureRefusesAChainFile() throws {
        let chain = try makeChain()
        let before = try chainFiles(chain)
        try assertRefused(
            ["capture", "\(chain)/p000002.strata", chain],
            "source \(chain)/p000002.strata is part of the chain \(chain) (it is the chain's file p000002.strata): capturing it would image the chain into itself; nothing was changed: choose a source outside the chain")
        XCTAssertEqual(try chainFiles(chain), before)
    }

    func testCaptureRefusesTheDeviceHoldingTheChain() throws {
        try requireLoop()
        let loop = try TestLoop(size: 32 << 20, in: dir)
        let mount = try TestMount(loop.path, at: "\(dir)/mnt")
        let chain = "\(mount.point)/chain"
        try makeDisk("\(dir)/disk", size: 32 << 20, seed: 22)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
        let before = try chainFiles(chain)
        let message = "source \(loop.path) holds the chain \(chain), mounted at \(mount.point): the capture would image its own writes; nothing was changed: keep the chain on another disk"
        try assertRefused(["capture", loop.path, chain, "--allow-mounted"], message)
        try assertRefused(["capture", loop.path, "\(mount.point)/new-chain", "--allow-mounted"],
            "source \(loop.path) holds the chain \(mount.point)/new-chain, mounted at \(mount.point): the capture would image its own writes; nothing was changed: keep the chain on another disk")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(mount.point)/new-chain"), "no chain directory was made")
        XCTAssertEqual(try chainFiles(chain), before)
    }

    // MARK: Existing files

    func testExistingTargetFileNeedsForce() throws {
        let chain = try makeChain()
        let target = "\(dir)/out.img"
        let old = Data(repeating: 0x5A, count: 12345)
        try old.write(to: URL(fileURLWithPath: target))
        XCTAssertEqual(chmod(target, 0o640), 0)
        try assertRefused(["restore", chain, target], "target \(target) exists and is not empty; nothing was written: pass --force to replace it")
        XCTAssertEqual(try contents(target), old)
        let forced = try strata("restore", chain, target, "--force", "--quiet")
        XCTAssertEqual(forced.status, 0, forced.stderr)
        XCTAssertEqual(try contents(target), try contents("\(dir)/disk"))
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: target)[.posixPermissions] as? Int, 0o640, "a replaced file keeps its mode")
        // An empty file is no data to lose.
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/empty.img", contents: nil))
        XCTAssertEqual(try strata("restore", chain, "\(dir)/empty.img", "--quiet").status, 0)
    }

    // MARK: Private by default

    private func underUmask(_ mask: String, _ args: [String]) throws -> Run {
        let r = runProcess("/bin/sh", ["-c", "umask \(mask); exec \"$0\" \"$@\"", strataBinary] + args)
        XCTAssertFalse(r.timedOut)
        return Run(r)
    }

    private func mode(_ path: String) throws -> Int {
        try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as! Int
    }

    func testNewChainsAndRestoredFilesArePrivateUnderAnyUmask() throws {
        try makeDisk("\(dir)/disk", size: size, seed: 23)
        for mask in ["022", "077", "000"] {
            let chain = "\(dir)/chain-\(mask)"
            XCTAssertEqual(try underUmask(mask, ["capture", "\(dir)/disk", chain, "--quiet"]).status, 0)
            try makeDisk("\(dir)/disk", size: size, seed: 23, changes: 3)
            XCTAssertEqual(try underUmask(mask, ["capture", "\(dir)/disk", chain, "--quiet"]).status, 0)
            XCTAssertEqual(try underUmask(mask, ["merge", chain, "--from", "1", "--to", "2", "--quiet"]).status, 0)
            XCTAssertEqual(try mode(chain), 0o700, "umask \(mask): chain directory")
            let names = try FileManager.default.contentsOfDirectory(atPath: chain)
            XCTAssertEqual(Set(names), [".lock", "chain.manifest", "p000001-000002.strata", "map-p000002.strata"])
            for name in names { XCTAssertEqual(try mode("\(chain)/\(name)"), 0o600, "umask \(mask): \(name)") }
            let restored = "\(dir)/restored-\(mask).img"
            let r = try underUmask(mask, ["restore", chain, restored, "--quiet"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stderr, "", "a private chain draws no warning")
            XCTAssertEqual(try mode(restored), 0o600, "umask \(mask): restored file")
        }
    }

    func testAChainReadableByOthersDrawsOneWarningLine() throws {
        let chain = try makeChain()
        XCTAssertEqual(chmod(chain, 0o755), 0)
        for name in try FileManager.default.contentsOfDirectory(atPath: chain) where name != ".lock" {
            XCTAssertEqual(chmod("\(chain)/\(name)", 0o644), 0)
        }
        let warning = "strata: warning: chain \(chain) is readable by other users (directory drwxr-xr-x, 4 files up to -rw-r--r--); make it private: chmod -R go= \(chain)\n"
        for args in [["list", chain], ["verify", chain, "--quiet"], ["restore", chain, "\(dir)/out.img", "--quiet"]] {
            let r = try strata(args)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stderr, warning, args.joined(separator: " "))
        }
        XCTAssertEqual(runTool("/usr/bin/env", ["chmod", "-R", "go=", chain]), 0)
        let after = try strata("list", chain)
        XCTAssertEqual(after.stderr, "", "the suggested chmod silences it")
    }
}

