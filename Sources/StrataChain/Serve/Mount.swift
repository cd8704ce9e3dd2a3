// `strata mount` and `strata unmount`. A mount is one server process: it opens the chain (every
// point, or the one asked for), mounts the point files with FUSE, and with --files attaches a read-only loop
// device over the point's file and mounts the filesystem inside it (each mountable partition of a partitioned
// disk at DIR/pN) with the options that keep a read-only mount from replaying a journal. What it made is found
// again from the kernel (the mount table, the loop device's backing file) and from a small state directory
// (/run/strata/mount-HASH: the server's pid, and the hidden FUSE mount --files reads through), so `unmount`
// undoes everything also after the server was killed. The filesystem mounts' loop devices clear themselves once
// unmounted (LO_FLAGS_AUTOCLEAR).
import StrataIO


public struct MountOptions: Sendable {
    /// The point to serve (nil: every point as files; with `files`, the newest).
    public var point: UInt32?
    /// Mount the filesystem inside the point instead of serving point files.
    public var files = false
    public var cacheBytes = 64 << 20
    /// Serve the point files through the kernel's page cache (for programs that map them shared).
    public var pageCache = false
    /// With `files`: mount only this partition of the point.
    public var partition: Int? = nil
    /// With `files`: mount with the kernel's filesystem drivers, not the userspace ones (fuse2fs, ntfs-3g, fusefat).
    public var kernelDriver = false
    /// An encrypted chain's secret.
    public var secret: UserSecret? = nil
    public init() {}
}

public final class MountSession: @unchecked Sendable {  // what it mounted is changed under `ended` or before the server's threads start
    public let chain: String
    /// The mount directory, its path made canonical.
    public let directory: String
    private let options: MountOptions
    private let served: ServedChain
    private let readers: [PointReader]
    private let state: String
    private var fuse: FuseServer?
    /// Filesystems mounted from the loop device (DIR, or DIR/pN), and the partition directories made for them.
    private var mounted: [String] = []
    private var madeDirectories: [String] = []
    private let ended = Condition()
    private var loopEnded = false
    /// What is mounted, for the line `mount` prints.
    public private(set) var summary = ""
    /// What of the point did not mount (a partition its driver refused, swap...), one line each.
    public private(set) var notices: [String] = []

    /// Checks the directory and opens the chain and its points: everything that can fail before anything is
    /// mounted.
    public init(chain: String, directory: String, options: MountOptions) throws {
        self.chain = chain
        self.options = options
        self.directory = try MountSession.usableDirectory(directory)
        state = MountSession.stateDirectory(for: self.directory)
        if let pid = MountSession.serverPid(state), Daemon.isRunning(pid) {
            throw ChainError.mountPointUnusable(path: directory, problem: "strata (pid \(pid)) is already serving a mount there", todo: "run strata unmount \(directory) first")
        }
        served = try ServedChain(chain: chain, cacheBytes: options.cacheBytes, secret: options.secret)
        if options.files || options.point != nil {
            readers = [try served.reader(point: options.point)]
        } else {
            readers = try served.openEveryPoint()
        }
    }

    /// Where mounts keep their state: $STRATA_RUN_DIR, or /run/strata (/tmp/strata-run on a machine without /run).
    static var runDirectory: String {
        Sys.environment("STRATA_RUN_DIR") ?? (Sys.exists("/run") ? "/run/strata" : "/tmp/strata-run")
    }

    static func stateDirectory(for directory: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        for b in directory.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        let hex = String(h, radix: 16)
        return "\(runDirectory)/mount-" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    static func serverPid(_ state: String) -> Int32? {
        Sys.readSmallFile("\(state)/pid").flatMap { Int32($0.split(separator: "\n").first ?? "") }
    }

    /// The canonical path of an empty directory that is not a mount point, or why it cannot be used.
    static func usableDirectory(_ path: String) throws -> String {
        let canonical: String
        do { canonical = try Sys.resolvedPath(path) } catch let e as IOError {
            switch e.kind {
            case .missing: throw ChainError.mountPointUnusable(path: path, problem: "it does not exist", todo: "create it (mkdir) or name another directory")
            case .disconnected:
                throw ChainError.mountPointUnusable(path: path, problem: "it is a FUSE mount whose server is gone", todo: "run strata unmount \(path)")
            default: throw ChainError.mountPointUnusable(path: path, problem: e.reason, todo: "check the path and your permissions")
            }
        }
        guard let st = try? Sys.stat(canonical), st.kind == .directory else {
            throw ChainError.mountPointUnusable(path: path, problem: "it is not a directory", todo: "name an empty directory")
        }
        if let m = Mounts.mounted(at: canonical) {
            throw ChainError.mountPointUnusable(
                path: path, problem: "it is already a mount point (\(m.type) from \(m.source))", todo: "unmount it or name another directory")
        }
        guard ((try? Sys.listDirectory(canonical)) ?? []).isEmpty else {
            throw ChainError.mountPointUnusable(path: path, problem: "it is not empty", todo: "name an empty directory")
        }
        return canonical
    }

    // MARK: Mounting

    /// Mounts, and returns once the directory is usable (the server runs on threads of its own until `wait`
    /// returns). On failure, undoes what it did.
    public func mount(log: @escaping @Sendable (String) -> Void) throws {
        do {
            try Sys.makeDirectories(MountSession.runDirectory)
            MountSession.removeState(state)
            try Sys.mkdir(state)
            try Sys.writeNewFile("\(state)/pid", "\(Sys.processID)\n")
            let target = fuseTarget
            if options.files { try Sys.mkdir(target) }
            let files = readers.map { (name: "point-\($0.point).img", reader: $0) }
            // A userspace filesystem driver (fuse2fs above all) reads the point file in small pieces: through the
            // page cache, the kernel's read-ahead gathers them into large reads (fuse2fs: 2.7x). The kernel's
            // drivers, through a loop device, gain nothing (1.13x slower, within noise): docs/PERFORMANCE.md,
            // "Files back".
            let server = try FuseServer(files: files, at: target, source: "strata:\(chain)", pageCache: options.pageCache || (options.files && !options.kernelDriver), log: log)
            fuse = server
            Threads.spawn("strata-fuse") { [self] in
                server.run(threads: FuseServer.threads(remote: !ChainStores.isLocal(chain)))
                ended.publish { loopEnded = true }
            }
            server.widenReadAhead()
            if options.files {
                try mountFilesystem(of: readers[0].point, file: "\(target)/\(files[0].name)")
            } else {
                summary = files.count == 1 ? files[0].name : "\(files.count) point files (\(files[0].name) ... \(files.last!.name))"
            }
        } catch {
            fuse?.stop()
            finish(log: log)
            throw error
        }
    }

    /// Blocks until the file system is unmounted (`strata unmount`, `umount`) or the server is stopped by a
    /// signal; then unmounts what is left (lazily where a process still uses it) and removes its state.
    public func wait(log: @escaping (String) -> Void) {
        ended.lock()
        while !loopEnded { ended.wait() }
        ended.unlock()
        finish(log: log)
    }

    /// Stops the server from another thread (a signal): unmounts what it mounted (lazily where a process still
    /// uses it), which ends the loop `wait` waits for.
    public func stop(log: @escaping (String) -> Void) {
        ended.withLock {
            unmountFilesystems(log: log)
            if Mounts.mounted(at: fuseTarget) != nil { try? Mounts.unmount(fuseTarget, lazy: true) }
        }
    }

    /// Where the FUSE file system is mounted: DIR, or with --files the hidden directory the loop device reads.
    private var fuseTarget: String { options.files ? "\(state)/fuse" : directory }

    /// Unmounts the filesystems mounted from the loop device that are still mounted, lazily where one is in use.
    private func unmountFilesystems(log: (String) -> Void) {
        let still = Set(Mounts.table().map(\.mountPoint))
        for dir in mounted.reversed() where still.contains(dir) {
            do { try Mounts.unmount(dir) } catch {
                log("\(dir) is still in use: detached lazily (it goes when its last user does)")
                try? Mounts.unmount(dir, lazy: true)
            }
        }
    }

    private static func attachLoop(_ file: String, offset: UInt64, size: UInt64, point: UInt32) throws -> AttachedLoop {
        do { return try LoopDevices.attachReadOnly(file, offset: offset, size: size, scanPartitions: false) } catch let e as IOError {
            if e.path == "/dev/loop-control" && e.isMissing {
                throw ChainError.machineLacks("this machine has no loop devices (/dev/loop-control): load the loop module (modprobe loop); nothing was mounted")
            }
            throw ChainError.machineLacks("cannot attach a loop device to point \(point): \(e.reason); nothing was mounted")
        }
    }

    /// Mounts the filesystem of the point, or of each of its partitions (found in its table by libblkid, each
    /// given a read-only loop device or a userspace driver of its own at its offset: no partition scan, no /dev
    /// node to wait for), at DIR or DIR/pN. A partition its driver refuses is named with the driver's words and
    /// the others still mount; nothing mounted at all is an error saying what was found.
    private func mountFilesystem(of point: UInt32, file: String) throws {
        let layout = try PointLayout.read(readers[0])
        var found: [String] = []
        if layout.table == nil {
            if let n = options.partition {
                throw ChainError.noSuchPartition(point: point, number: n, detail: "the point holds no partition table")
            }
            mountOne(file, content: layout.whole, offset: 0, size: layout.size, at: directory, label: "", point: point, found: &found)
        } else {
            var parts = layout.partitions
            if let n = options.partition { parts = [try layout.partition(n)] }
            for p in parts {
                let name = "p\(p.number)"
                if let problem = layout.problems[p.number] {
                    found.append("\(name): \(problem)")
                    continue
                }
                let dir = "\(directory)/\(name)"
                try Sys.mkdir(dir, mode: 0o755)
                madeDirectories.append(dir)
                if !mountOne(file, content: layout.contents[p.number], offset: p.offset, size: p.size, at: dir, label: "\(name): ", point: point, found: &found) {
                    try? Sys.rmdir(dir)
                    madeDirectories.removeLast()
                }
            }
        }
        guard !mounted.isEmpty else { throw ChainError.noFilesystem(point: point, found: found.joined(separator: "; ")) }
        // What did not mount beside what did: one line each.
        notices = found
    }

    /// Records a filesystem mounted at `dir` (unmounted at the end) and what it is, for the summary line.
    private func record(_ dir: String, _ what: String) -> Bool {
        mounted.append(dir)
        summary += (summary.isEmpty ? "" : ", ") + "\(what) at \(dir)"
        return true
    }

    /// Mounts the filesystem `content` names at `offset` of the point file, `size` bytes, at `dir`, with the
    /// driver chosen; on failure says why in `found` and returns false.
    @discardableResult
    private func mountOne(
        _ file: String, content: DiskContent?, offset: UInt64, size: UInt64, at dir: String, label: String, point: UInt32, found: inout [String]
    ) -> Bool {
        guard let type = content?.type else {
            found.append(label + "no filesystem signature")
            return false
        }
        func loop() throws -> AttachedLoop { try Self.attachLoop(file, offset: offset, size: size, point: point) }
        if !options.kernelDriver, let driver = FilesystemDrivers.userspace(type) {
            guard let program = Sys.findProgram(driver.program) else {
                found.append("\(label)\(type) needs \(driver.program) (apt install \(driver.package)), or --kernel-driver")
                return false
            }
            do {
                let run: (status: Int32, output: String)
                if driver.takesOffset {
                    run = Sys.runProgram(program, driver.arguments(source: file, offset: offset, at: dir))
                } else {
                    // The driver holds the loop device once it runs; ours is let go when this scope ends.
                    let device = try loop()
                    run = Sys.runProgram(program, driver.arguments(source: device.path, offset: 0, at: dir))
                }
                guard run.status == 0, Mounts.mounted(at: dir) != nil else {
                    let words = run.output.split(separator: "\n").last.map(String.init) ?? "exit \(run.status)"
                    found.append("\(label)\(type), which \(driver.program) refused: \(words)")
                    return false
                }
            } catch {
                found.append("\(label)\(type): \((error as? ChainError)?.description ?? "\(error)")")
                return false
            }
            try? Mounts.remountReadOnly(dir)
            return record(dir, "\(type) of point \(point) (\(driver.program))")
        }
        guard let kernel = FilesystemDrivers.kernel(type) else {
            found.append(label + type)
            return false
        }
        guard FilesystemDrivers.kernelHas(kernel.type) else {
            let other = FilesystemDrivers.userspace(type).map { " (\($0.program) reads it without --kernel-driver)" } ?? ""
            found.append("\(label)\(type), which this kernel has no driver for\(other)")
            return false
        }
        do {
            let device = try loop()
            defer { withExtendedLifetime(device) {} }
            do { try Mounts.mountReadOnly(device.path, at: dir, type: kernel.type, options: kernel.options) } catch {
                found.append("\(label)\(type), which the kernel refused: \((error as? IOError)?.reason ?? "\(error)")")
                return false
            }
            return record(dir, "\(type) of point \(point) (\(device.path))")
        } catch {
            found.append("\(label)\(type): \((error as? ChainError)?.description ?? "\(error)")")
            return false
        }
    }

    private func finish(log: (String) -> Void) {
        unmountFilesystems(log: log)
        mounted = []
        for dir in madeDirectories.reversed() { try? Sys.rmdir(dir) }
        madeDirectories = []
        fuse?.close()
        fuse = nil
        MountSession.removeState(state)
    }

    /// Removes a mount's state directory (its hidden FUSE mount unmounted first, stale or not), if there is one.
    static func removeState(_ state: String) {
        if Mounts.mounted(at: "\(state)/fuse") != nil { try? Mounts.unmount("\(state)/fuse", lazy: true) }
        try? Sys.rmdir("\(state)/fuse")
        try? Sys.unlink("\(state)/pid")
        try? Sys.rmdir(state)
    }

    // MARK: Unmounting

    /// Undoes a mount at `path`: unmounts the filesystems mounted there, detaches their loop devices, unmounts
    /// the point files, waits for the server to end; also after the server was killed. Returns one line a thing
    /// done.
    public static func unmount(_ path: String) throws -> [String] {
        let canonical = canonicalEvenIfStale(path)
        let state = stateDirectory(for: canonical)
        let pid = serverPid(state)
        let wasRunning = pid.map(Daemon.isRunning) ?? false
        let ours = Mounts.table().filter { $0.mountPoint == canonical || $0.mountPoint.hasPrefix(canonical + "/") }
        let hidden = Mounts.mounted(at: "\(state)/fuse")
        guard !ours.isEmpty || hidden != nil || Sys.exists(state) else { throw ChainError.notMounted(path: path) }
        var lines: [String] = []
        var loops: [String] = []
        for m in ours.reversed() {
            do { try Mounts.unmount(m.mountPoint) } catch let e as IOError where e.isBusy { throw ChainError.mountBusy(path: m.mountPoint) }
            if m.type.hasPrefix("fuse") && m.source.hasPrefix("strata:") {
                lines.append("unmounted the point files at \(m.mountPoint)")
            } else {
                lines.append("unmounted \(m.mountPoint) (\(m.type) from \(m.source))")
                if m.source.hasPrefix("/dev/loop") { loops.append(m.source) }
            }
        }
        // Partition directories mount made (DIR was empty before it).
        for name in ((try? Sys.listDirectory(canonical)) ?? []).sorted() where name.hasPrefix("p") && name.dropFirst().allSatisfy(\.isNumber) {
            try? Sys.rmdir("\(canonical)/\(name)")
        }
        if hidden != nil {
            // A userspace driver reading the point file ends once its filesystem is unmounted: a moment later.
            var busy = true
            for _ in 0..<500 where busy {
                do {
                    try Mounts.unmount("\(state)/fuse")
                    busy = false
                } catch let e as IOError where e.isBusy {
                    Sys.sleep(seconds: 0.01)
                }
            }
            if busy { throw ChainError.mountBusy(path: canonical) }
            lines.append("unmounted the point file the filesystem was read through (\(state)/fuse)")
        }
        // The loop devices clear themselves once their filesystem is gone (the kernel may take a moment).
        for device in Set(loops.map(wholeLoopDevice)).sorted() {
            for _ in 0..<200 where LoopDevices.isAttached(device) { Sys.sleep(seconds: 0.01) }
            if LoopDevices.isAttached(device) { LoopDevices.detach(device) }
            lines.append(LoopDevices.isAttached(device) ? "could not detach \(device): detach it with losetup -d \(device)" : "detached \(device)")
        }
        if let pid {
            if wasRunning {
                for _ in 0..<1000 where Daemon.isRunning(pid) { Sys.sleep(seconds: 0.01) }
                lines.append(Daemon.isRunning(pid) ? "the server (pid \(pid)) is still running" : "the server (pid \(pid)) stopped")
            } else {
                lines.append("the server (pid \(pid)) was no longer running: cleaned up after it")
            }
        }
        removeState(state)
        return lines
    }

    /// /dev/loop3 for /dev/loop3p1.
    static func wholeLoopDevice(_ path: String) -> String {
        let name = path.dropFirst("/dev/".count)
        guard let p = name.dropFirst(4).firstIndex(of: "p") else { return path }
        return "/dev/" + name[..<p]
    }

    /// The canonical path of a directory, also when it is a stale FUSE mount (whose own stat fails).
    static func canonicalEvenIfStale(_ path: String) -> String {
        if let p = Sys.realPath(path) { return p }
        var trimmed = path
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
        let parent = BlockDevices.parentDirectory(of: trimmed)
        let last = trimmed.split(separator: "/").last.map(String.init) ?? trimmed
        guard let base = Sys.realPath(parent) else { return trimmed }
        return base == "/" ? "/\(last)" : "\(base)/\(last)"
    }
}
