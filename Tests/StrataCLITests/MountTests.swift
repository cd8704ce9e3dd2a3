// `strata mount` and `strata unmount` on real FUSE, loop devices and filesystems: every byte of every point file
// equals that point's restore (sequentially and at random offsets); --files on ext4 and xfs gives each night's
// file tree; unmount leaves no mount, no loop device and no server, also after the server was killed with
// SIGKILL; a point stays readable while captures, merges and prunes run; a flipped byte fails only the reads that
// need its frame, with EIO and a log line naming the image and frame; bad input gets one line, its exit code, and
// nothing left mounted.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class MountTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        if getuid() != 0 { throw XCTSkip("mounting needs root") }
        if !FileManager.default.fileExists(atPath: "/dev/fuse") { throw XCTSkip("this machine has no /dev/fuse") }
        dir = try scratchDirectory("strata-mount")
    }
    override func tearDown() {
        // Whatever a failed test left mounted under the scratch directory.
        for line in (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8))?.split(separator: "\n").reversed() ?? [] {
            let f = line.split(separator: " ")
            if f.count > 1, f[1].hasPrefix(dir) { runTool("/usr/bin/env", ["umount", "-l", String(f[1])]) }
        }
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func contents(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// Mount points and loop devices that mention `path`.
    private func traces(of path: String) -> [String] {
        let mounts = ((try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains(path) }
        let loops = toolOutput(["losetup", "-a"]).split(separator: "\n").filter { $0.contains(path) || $0.contains("/run/strata") }
        return (mounts + loops).map(String.init)
    }

    private func mountDir(_ name: String) throws -> String {
        let m = "\(dir)/\(name)"
        try FileManager.default.createDirectory(atPath: m, withIntermediateDirectories: true)
        return m
    }

    /// Reads `count` bytes at `offset` of a file with pread: the bytes, or the errno of a failed read.
    private func pread(_ path: String, _ offset: Int, _ count: Int) -> Result<[UInt8], POSIXError> {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return .failure(POSIXError(POSIXErrorCode(rawValue: errno)!)) }
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
            if n < 0 { return .failure(POSIXError(POSIXErrorCode(rawValue: errno)!)) }
            if n == 0 { break }
            done += n
        }
        return .success(Array(out[0..<done]))
    }

    /// A chain of `nights` random nights of a disk with a merge in it; the bytes of each point.
    private func makeChain(nights: Int, size: Int = 6 << 20) throws -> (chain: String, points: [Int: Data]) {
        let chain = "\(dir)/chain"
        var points: [Int: Data] = [:]
        for night in 0..<nights {
            try makeDisk("\(dir)/disk", size: size, seed: 47, changes: 50 * night)
            XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
            points[night + 1] = try contents("\(dir)/disk")
        }
        XCTAssertEqual(try strata("merge", chain, "--from", "2", "--to", "3", "--quiet").status, 0)
        points[2] = nil
        return (chain, points)
    }

    func testEveryPointFileReadsAsItsRestore() throws {
        let (chain, points) = try makeChain(nights: 5)
        let m = try mountDir("points")
        let r = try strata("mount", chain, m)
        XCTAssertEqual(r.status, 0, r.stderr)
        defer { _ = try? strata("unmount", m) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: m).sorted(), points.keys.sorted().map { "point-\($0).img" })
        var rng = SystemRandomNumberGenerator()
        for (point, bytes) in points.sorted(by: { $0.key < $1.key }) {
            let file = "\(m)/point-\(point).img"
            XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int, bytes.count)
            XCTAssertEqual(try contents(file), bytes, "point \(point), read whole")
            let disk = [UInt8](bytes)
            for _ in 0..<40 {
                let offset = Int.random(in: 0..<disk.count, using: &rng), count = Int.random(in: 1...600_000, using: &rng)
                let want = Array(disk[offset..<min(disk.count, offset + count)])
                XCTAssertEqual(try pread(file, offset, count).get(), want, "point \(point): \(count) bytes at \(offset)")
            }
        }
        // Read-only: writing is refused.
        XCTAssertNil(FileHandle(forWritingAtPath: "\(m)/point-1.img"))
        // Through the page cache, one point: the same bytes, and the file maps shared.
        let cached = try mountDir("cached")
        XCTAssertEqual(try strata("mount", chain, cached, "--point", "4", "--page-cache").status, 0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: cached), ["point-4.img"])
        XCTAssertEqual(try contents("\(cached)/point-4.img"), points[4])
        let fd = open("\(cached)/point-4.img", O_RDONLY)
        let map = mmap(nil, points[4]!.count, PROT_READ, MAP_SHARED, fd, 0)
        XCTAssertNotEqual(map, MAP_FAILED, "a shared map of a page-cache point file")
        if let map, map != MAP_FAILED {
            XCTAssertEqual(Data(bytes: map, count: points[4]!.count), points[4])
            munmap(map, points[4]!.count)
        }
        close(fd)
        XCTAssertEqual(try strata("unmount", cached).status, 0)
        let u = try strata("unmount", m)
        XCTAssertEqual(u.status, 0, u.stderr)
        XCTAssertTrue(u.stdout.contains("unmounted the point files at"), u.stdout)
        XCTAssertTrue(u.stdout.contains("stopped"), u.stdout)
        XCTAssertEqual(traces(of: m), [])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: m), [])
    }

    /// A filesystem image of `type`, its tree changed night by night and captured each night; the tree of each
    /// point (relative path to contents).
    private func captureFilesystemNights(_ type: String, size: Int) throws -> (chain: String, trees: [Int: [String: Data]]) {
        let image = "\(dir)/\(type).img", chain = "\(dir)/\(type)-chain", work = try mountDir("\(type)-work")
        XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: nil))
        XCTAssertEqual(truncate(image, off_t(size)), 0)
        // xfsprogs refuses filesystems under 300 MB unless told it is a test.
        let env = ["TEST_DIR=1", "TEST_DEV=1", "QA_CHECK_FS=1"]
        XCTAssertEqual(runTool("/usr/bin/env", env + ["mkfs.\(type)", type == "xfs" ? "-f" : "-F", "-q", image]), 0)
        var trees: [Int: [String: Data]] = [:]
        for night in 1...3 {
            XCTAssertEqual(runTool("/usr/bin/env", ["mount", "-o", "loop", image, work]), 0)
            for k in 0..<20 {
                let sub = "\(work)/d\(k % 4)"
                try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
                if k % 3 == night % 3 || night == 1 {
                    let text = String(repeating: "night \(night) file \(k) ", count: 50 + 700 * k)
                    try Data(text.utf8).write(to: URL(fileURLWithPath: "\(sub)/f\(k).txt"))
                }
            }
            if night == 3 { try FileManager.default.removeItem(atPath: "\(work)/d1") }
            trees[night] = try tree(work)
            XCTAssertEqual(runTool("/usr/bin/env", ["umount", work]), 0)
            XCTAssertEqual(try strata("capture", image, chain, "--quiet").status, 0)
        }
        return (chain, trees)
    }

    private func tree(_ root: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: root)!
        while let rel = e.nextObject() as? String {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: "\(root)/\(rel)", isDirectory: &isDir), !isDir.boolValue, !rel.hasPrefix("lost+found") else { continue }
            out[rel] = try contents("\(root)/\(rel)")
        }
        return out
    }

    /// Each night's tree through `mount --files`: with the kernel's driver (a read-only loop device), and for ext4
    /// by default with fuse2fs (a process reading the point file at the filesystem's offset).
    private func checkFiles(_ type: String, size: Int) throws {
        if toolOutput(["sh", "-c", "command -v mkfs.\(type)"]).isEmpty { throw XCTSkip("mkfs.\(type) is not installed (Tools/setup installs it)") }
        let (chain, trees) = try captureFilesystemNights(type, size: size)
        for point in [1, 2, 3] {
            for kernel in type == "ext4" ? [false, true] : [true] {
                let m = try mountDir("\(type)-\(point)-\(kernel)")
                let r = try strata(["mount", chain, m, "--point", "\(point)", "--files"] + (kernel && type == "ext4" ? ["--kernel-driver"] : []))
                XCTAssertEqual(r.status, 0, r.stderr)
                XCTAssertEqual(try tree(m), trees[point], "\(type) point \(point): the tree differs")
                let source = traces(of: m).first { $0.contains(" \(m) ") } ?? ""
                if kernel {
                    XCTAssertTrue(source.hasPrefix("/dev/loop") && source.contains(" \(type) ") && source.contains(" ro,"), source)
                } else {
                    XCTAssertTrue(source.contains("/point-\(point).img \(m) fuse") && source.contains(" ro,"), source)
                }
                let u = try strata("unmount", m)
                XCTAssertEqual(u.status, 0, u.stderr)
                if kernel {
                    XCTAssertTrue(u.stdout.contains("unmounted \(m) (\(type) from /dev/loop"), u.stdout)
                    XCTAssertTrue(u.stdout.contains("detached /dev/loop"), u.stdout)
                } else {
                    XCTAssertTrue(u.stdout.contains("unmounted \(m) (fuse"), u.stdout)
                }
                XCTAssertEqual(traces(of: m), [], "\(type) point \(point): something is left")
                XCTAssertEqual(toolOutput(["sh", "-c", "pgrep -f '[f]use2fs .*\(m)' || true"]), "", "no driver process left")
            }
        }
    }

    /// An encrypted chain mounted in the background with its key file (the server started again with it); without
    /// the key, one line, exit 67, nothing mounted.
    func testAnEncryptedChainMountsWithItsKey() throws {
        let chain = "\(dir)/secret", key = "\(dir)/k"
        XCTAssertEqual(try strata("keygen", key).status, 0)
        try makeDisk("\(dir)/disk", size: 4 << 20, seed: 48)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--encrypt", "--key-file", key, "--quiet").status, 0)
        let m = try mountDir("secret-point")
        let refused = try strata("mount", chain, m)
        XCTAssertEqual(refused.status, 67)
        XCTAssertEqual(traces(of: m), [], "nothing mounted without the key")
        let r = try strata("mount", chain, m, "--key-file", key)
        XCTAssertEqual(r.status, 0, r.stderr)
        defer { _ = try? strata("unmount", m) }
        XCTAssertEqual(try contents("\(m)/point-1.img"), try contents("\(dir)/disk"))
        XCTAssertEqual(try strata("unmount", m).status, 0)
    }

    func testFilesOfExt4PointsAreEachNightsTree() throws { try checkFiles("ext4", size: 64 << 20) }
    func testFilesOfXfsPointsAreEachNightsTree() throws { try checkFiles("xfs", size: 64 << 20) }

    func testUnmountCleansUpAfterAKilledServer() throws {
        let (chain, trees) = try captureFilesystemNights("ext4", size: 32 << 20)
        let m = try mountDir("killed")
        XCTAssertEqual(try strata("mount", chain, m, "--files").status, 0)
        XCTAssertEqual(try tree(m), trees[3])
        // The background server: the one process serving this chain at this directory.
        let pids = toolOutput(["pgrep", "-f", "mount \(chain) \(m) "]).split(separator: "\n").compactMap { pid_t($0) }
        XCTAssertEqual(pids.count, 1, "one server for \(m)")
        let pid = try XCTUnwrap(pids.first)
        XCTAssertEqual(kill(pid, SIGKILL), 0)
        for _ in 0..<200 where kill(pid, 0) == 0 { usleep(10_000) }
        let u = try strata("unmount", m)
        XCTAssertEqual(u.status, 0, u.stderr)
        XCTAssertTrue(u.stdout.contains("(pid \(pid)) was no longer running"), u.stdout)
        XCTAssertEqual(traces(of: m), [])
        // And the directory mounts again.
        XCTAssertEqual(try strata("mount", chain, m, "--files", "--point", "1").status, 0)
        XCTAssertEqual(try tree(m), trees[1])
        XCTAssertEqual(try strata("unmount", m).status, 0)
        XCTAssertEqual(traces(of: m), [])
    }

    /// The server's threads that serve FUSE requests keep serving: libfuse's loop is given the threads to keep
    /// (asked through the wrong version of its loop function, it read none to keep and ended a thread after
    /// each request, starting another for the next: 8100 threads in 7 s of random reads).
    func testTheServersThreadsOutliveTheirRequests() throws {
        let (chain, points) = try makeChain(nights: 3)
        let m = try mountDir("threads")
        XCTAssertEqual(try strata("mount", chain, m, "--point", "1").status, 0)
        defer { _ = try? strata("unmount", m) }
        let pid = try XCTUnwrap(toolOutput(["pgrep", "-f", "mount \(chain) \(m) "]).split(separator: "\n").compactMap { pid_t($0) }.first)
        /// The server's threads named for serving the mount.
        func servers() -> Set<String> {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            return Set(tasks.filter { (try? String(contentsOfFile: "/proc/\(pid)/task/\($0)/comm", encoding: .utf8))?.hasPrefix("strata-fuse") == true })
        }
        /// Reads of 4 KiB at random, 4 threads at once, each checked.
        func readAtRandom() {
            let disk = [UInt8](points[1]!), file = "\(m)/point-1.img"
            DispatchQueue.concurrentPerform(iterations: 4) { _ in
                for _ in 0..<50 {
                    let offset = Int.random(in: 0..<(disk.count / 4096)) * 4096
                    XCTAssertEqual(try? pread(file, offset, 4096).get(), Array(disk[offset..<(offset + 4096)]))
                }
            }
        }
        readAtRandom()
        let first = servers()
        XCTAssertGreaterThanOrEqual(first.count, 3, "the loop's thread and at least 2 serving")
        readAtRandom()
        XCTAssertEqual(servers(), first, "the same threads served the second round")
    }

    func testAMountedPointReadsWhileTheChainChanges() throws {
        let (chain, points) = try makeChain(nights: 4)
        let m = try mountDir("busy")
        XCTAssertEqual(try strata("mount", chain, m, "--point", "3").status, 0)
        defer { _ = try? strata("unmount", m) }
        let file = "\(m)/point-3.img"
        XCTAssertEqual(try pread(file, 0, 100_000).get(), [UInt8](points[3]!.prefix(100_000)))
        // A capture, a merge of every point into one full image (removing every image the mount opened) and a
        // prune, then the page cache dropped so that every read goes to the server.
        try makeDisk("\(dir)/disk", size: 6 << 20, seed: 47, changes: 400)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
        XCTAssertEqual(try strata("merge", chain, "--from", "1", "--to", "4", "--quiet").status, 0)
        XCTAssertEqual(try strata("prune", chain, "--keep", "1", "--quiet").status, 0)
        XCTAssertEqual(runTool("/usr/bin/env", ["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"]), 0)
        XCTAssertEqual(try contents(file), points[3], "the mounted point after its images were merged away")
    }

    func testAFlippedByteFailsOnlyItsFramesReadsWithEIO() throws {
        let (chain, points) = try makeChain(nights: 3)
        // Flip a byte in the middle of the newest image's first frame (past its hash table).
        let image = try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasSuffix(".strata") }.sorted().last!
        var bytes = [UInt8](try contents("\(chain)/\(image)"))
        bytes[4096 + 64 * 16 + 100] ^= 0x5A
        try Data(bytes).write(to: URL(fileURLWithPath: "\(chain)/\(image)"))
        let m = try mountDir("flipped"), log = "\(dir)/server.log"
        XCTAssertEqual(try strata("mount", chain, m, "--log", log).status, 0)
        defer { _ = try? strata("unmount", m) }
        let newest = points.keys.max()!
        let file = "\(m)/point-\(newest).img"
        let disk = [UInt8](points[newest]!)
        var failed = 0, read = 0
        for offset in stride(from: 0, to: disk.count, by: 256 << 10) {
            switch pread(file, offset, 256 << 10) {
            case .success(let got):
                XCTAssertEqual(got, Array(disk[offset..<min(disk.count, offset + (256 << 10))]), "bytes at \(offset)")
                read += 1
            case .failure(let e):
                XCTAssertEqual(e.code, .EIO)
                failed += 1
            }
        }
        XCTAssertGreaterThan(failed, 0, "the damaged frame's range fails")
        XCTAssertGreaterThan(read, 0, "other ranges still read")
        let logged = try String(contentsOfFile: log, encoding: .utf8)
        XCTAssertTrue(logged.contains("image \(image): frame 0 ") && logged.contains("fails its checksum"), logged)
    }

    func testBadInputGetsOneLineItsExitCodeAndLeavesNothing() throws {
        let (chain, _) = try makeChain(nights: 3)
        func check(_ args: [String], _ status: Int32, _ text: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try strata(args)
            XCTAssertEqual(r.status, status, r.stderr, file: file, line: line)
            XCTAssertTrue(r.stderr.hasPrefix("strata: error: ") && r.stderr.contains(text), r.stderr, file: file, line: line)
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr, file: file, line: line)
        }
        let m = try mountDir("bad")
        try check(["mount", chain, "\(dir)/missing"], 73, "it does not exist")
        try check(["mount", chain, "\(dir)/disk"], 73, "it is not a directory")
        let full = try mountDir("full")
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(full)/x", contents: Data()))
        try check(["mount", chain, full], 73, "it is not empty")
        try check(["mount", chain, m, "--point", "9"], 64, "point 9")
        try check(["mount", "\(dir)/nochain", m], 65, "is not a Strata chain")
        // A point holding no filesystem (the disk is bytes): says what it found.
        try check(["mount", chain, m, "--files"], 65, "holds no filesystem strata can mount read-only (found no filesystem signature)")
        // Already a mount point.
        XCTAssertEqual(try strata("mount", chain, m).status, 0)
        try check(["mount", chain, m], 73, "it is already a mount point (fuse.strata")
        XCTAssertEqual(try strata("unmount", m).status, 0)
        try check(["unmount", m], 64, "is not a strata mount")
        XCTAssertEqual(traces(of: dir), [])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: m), [])
    }
}
