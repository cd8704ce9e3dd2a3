// What the tests of partitioned disks share (PartitionTests, PartitionMountTests, UsedBlocksTests): root and a
// free loop device or a skip, a scratch directory, shell steps that fail the test with their output, loop devices
// over a file or a range of it, and a tearDown that unmounts whatever a failed test left under the directory and
// detaches what it attached.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

class LoopDeviceTestCase: XCTestCase {
    var dir = ""
    var loops: [String] = []
    /// The scratch directory's name prefix.
    var scratchName: String { "strata-loops" }

    override func setUpWithError() throws {
        if getuid() != 0 { throw XCTSkip("loop devices and mounts need root") }
        if toolOutput(["sh", "-c", "losetup -f"]).isEmpty { throw XCTSkip("this machine has no free loop device") }
        dir = try scratchDirectory(scratchName)
    }

    override func tearDown() {
        for line in (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8))?.split(separator: "\n").reversed() ?? [] {
            let f = line.split(separator: " ")
            if f.count > 1, f[1].hasPrefix(dir) { runTool("/usr/bin/env", ["umount", "-l", String(f[1])]) }
        }
        for loop in loops.reversed() { runTool("/usr/bin/env", ["losetup", "-d", loop]) }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Runs `script` with sh; a failure fails the test with its output.
    func sh(_ script: String) throws {
        let r = runProcess("/bin/sh", ["-c", script], deadline: 120)
        guard r.status == 0 else { throw TestFailure("\(script): exit \(r.status): \(r.stdout) \(r.stderr)") }
    }

    /// A loop device over `file`, or over `length` bytes of it at `offset`; detached in tearDown if not before.
    func attach(_ file: String, offset: Int = 0, length: Int? = nil, readOnly: Bool = false) throws -> String {
        var args = ["losetup", "-f", "--show"] + (readOnly ? ["-r"] : [])
        if offset > 0 { args += ["-o", String(offset)] }
        if let length { args += ["--sizelimit", String(length)] }
        let dev = toolOutput(args + [file])
        guard dev.hasPrefix("/dev/loop") else { throw TestFailure("losetup \(file) failed: \(dev)") }
        loops.append(dev)
        return dev
    }

    func detach(_ dev: String) {
        runTool("/usr/bin/env", ["losetup", "-d", dev])
        loops.removeAll { $0 == dev }
    }

    /// Mounts the `length` bytes at `offset` of `file` (a partition of a disk image) on a loop device of their own at
    /// a fresh directory, runs `body` there, then unmounts and detaches. Read-only mounts replay no journal: `ro,noload`
    /// (ext4) unless `options` says otherwise (`ro,norecovery` for XFS).
    func inMount(_ file: String, offset: Int, length: Int, readOnly: Bool = false, options: String? = nil, _ body: (String) throws -> Void) throws {
        let dev = try attach(file, offset: offset, length: length, readOnly: readOnly)
        defer { detach(dev) }
        let mountPoint = "\(dir)/mnt-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let o = options ?? (readOnly ? "ro,noload" : nil)
        try sh("mount \(o.map { "-o \($0) " } ?? "")\(dev) \(mountPoint)")
        defer { runTool("/usr/bin/env", ["umount", mountPoint]) }
        try body(mountPoint)
    }
}

/// The free blocks of the ext2/3/4 filesystem in `path` (a device or an image file), as byte ranges of it:
/// dumpe2fs's lists of each group's free blocks.
func ext4FreeRanges(_ path: String) -> [Range<Int>] {
    let text = toolOutput(["sh", "-c", "dumpe2fs \(path) 2>/dev/null"])
    guard let blockSize = text.split(separator: "\n").first(where: { $0.hasPrefix("Block size:") }).flatMap({ Int($0.split(separator: " ").last!) }) else { return [] }
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
