// A read-only FUSE file system of named files, through libfuse 3's high-level API on its multithreaded loop, in
// requests of up to 1 MiB: the system side of `strata mount` (StrataChain's FuseServer says what the files are
// and reads them). By default reads bypass the kernel's page cache (direct_io): each read reaches the server,
// and the bytes are copied once, into the reader's buffer. Through the page cache (`pageCache`, kept across
// opens: the files never change) a sequential read cost twice the CPU on a 2-core machine (the kernel copies
// each byte into the cache and again out of it): 4.9-10.9 s for the reference disk's 6 GiB against 3.1-3.6 s;
// it is what a program that maps the files with MAP_SHARED needs. A read that throws gets EIO, never bytes.
// One file system a process (libfuse's C callbacks find it through `current`).
#if canImport(Glibc)
import Glibc
#endif
import CFuse

/// One file of a `FuseFiles` file system: its name, its size, and how to read it (bytes read, fewer only at
/// its end; a throw answers EIO).
public struct FuseFile: Sendable {
    public var name: String
    public var size: UInt64
    public var read: @Sendable (_ into: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64) throws -> Int

    public init(name: String, size: UInt64, read: @escaping @Sendable (UnsafeMutableRawPointer, Int, UInt64) throws -> Int) {
        (self.name, self.size, self.read) = (name, size, read)
    }
}

/// Read-only files served through FUSE.
public final class FuseFiles: @unchecked Sendable {  // `fuse` is set once in init and cleared in close, after the loop ended
    private let files: [FuseFile]
    private var fuse: OpaquePointer?
    private let mountedAt: String
    private let pageCache: Bool

    /// The libfuse callbacks' way back to the one file system of this process. Set in init and cleared in
    /// close, both before any callback can run and after the last one has (the loop has returned).
    nonisolated(unsafe) private static var current: FuseFiles?  // set before the loop starts, cleared after it ended

    /// Mounts `files` read-only at `dir` (an empty directory); the file system's source shows as `source`.
    /// Throws a `FuseFiles.Failure` line saying what the machine refused.
    public init(files: [FuseFile], at dir: String, source: String, pageCache: Bool) throws {
        precondition(FuseFiles.current == nil, "one FUSE file system a process")
        self.files = files
        self.pageCache = pageCache
        mountedAt = dir
        FuseFiles.current = self
        let escaped = String(source.map { $0 == "," || $0 == "\\" ? "_" : $0 })
        var options = "ro,default_permissions,max_read=1048576,fsname=\(escaped),subtype=strata"
        if getuid() == 0 { options += ",allow_other" }
        let words: [String] = ["strata", "-o", options]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { w in w.withCString { strdup($0) } }
        defer { argv.forEach { free($0) } }
        var ops = fuse_operations()
        ops.getattr = { path, st, _ in FuseFiles.current!.getattr(String(cString: path!), st!) }
        ops.readdir = { path, buf, fill, _, _, _ in FuseFiles.current!.readdir(String(cString: path!), buf, fill!) }
        ops.open = { path, fi in FuseFiles.current!.open(String(cString: path!), fi!) }
        ops.read = { _, buf, size, offset, fi in FuseFiles.current!.read(buf!, size, offset, fi!) }
        ops.`init` = { conn, cfg in
            cfg!.pointee.kernel_cache = 1
            cfg!.pointee.entry_timeout = 86400
            cfg!.pointee.attr_timeout = 86400
            cfg!.pointee.negative_timeout = 86400
            conn!.pointee.max_background = 16  // 16 MiB in flight: well inside the chain's default frame cache
            conn!.pointee.max_read = 1 << 20  // as the max_read mount option says
            return nil
        }
        var args = argv.withUnsafeBufferPointer { p in
            fuse_args(argc: Int32(p.count), argv: UnsafeMutablePointer(mutating: p.baseAddress), allocated: 0)
        }
        guard let f = strata_fuse_new(&args, &ops, nil) else {
            FuseFiles.current = nil
            throw Failure("cannot start a FUSE file system: libfuse refused its options; nothing was mounted")
        }
        guard fuse_mount(f, dir) == 0 else {
            fuse_destroy(f)
            FuseFiles.current = nil
            let why = Sys.exists("/dev/fuse") ? "the kernel refused the FUSE mount (see the line above)" : "this machine has no /dev/fuse: load the fuse module (modprobe fuse)"
            throw Failure("cannot mount \(dir) with FUSE: \(why); nothing was mounted")
        }
        fuse = f
    }

    /// What the machine refused, as one line.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let description: String
        init(_ line: String) { description = line }
    }

    /// Serves requests until the file system is unmounted or `stop` is called, on up to `threads` threads, all
    /// kept once started (with fewer kept idle than requests in flight, libfuse ends a thread as each request is
    /// answered and starts another for the next).
    public func run(threads: Int) {
        guard let fuse else { return }
        _ = strata_fuse_loop_mt(fuse, UInt32(threads), UInt32(threads))
    }

    /// Ends the loop `run` is in.
    public func stop() {
        guard let fuse else { return }
        fuse_session_exit(fuse_get_session(fuse))
    }

    /// Unmounts (if still mounted) and frees the file system, once `run` has returned.
    public func close() {
        guard let f = fuse else { return }
        fuse_unmount(f)
        fuse_destroy(f)
        fuse = nil
        FuseFiles.current = nil
    }

    /// The kernel reads ahead 128 KiB of a FUSE file unless told otherwise (its backing device's read_ahead_kb):
    /// at that size a sequential read runs a request at a time. Called once `run` runs: the kernel sets the
    /// read-ahead when the server answers its INIT request (a stat of the mount waits for that).
    public func widenReadAhead(kiB: Int) {
        _ = try? Sys.stat(mountedAt)
        guard let dev = Mounts.mounted(at: mountedAt)?.device else { return }
        let path = "/sys/class/bdi/\(BlockDevices.major(dev)):\(BlockDevices.minor(dev))/read_ahead_kb"
        try? Sys.writeSmallFile(path, "\(kiB)\n")
    }

    // MARK: Requests

    private func file(_ path: String) -> Int? {
        guard path.hasPrefix("/") else { return nil }
        return files.firstIndex { $0.name == path.dropFirst() }
    }

    private func getattr(_ path: String, _ st: UnsafeMutablePointer<stat>) -> Int32 {
        st.initialize(to: stat())
        st.pointee.st_uid = getuid()
        st.pointee.st_gid = getgid()
        if path == "/" {
            st.pointee.st_mode = S_IFDIR | 0o555
            st.pointee.st_nlink = 2
            return 0
        }
        guard let i = file(path) else { return -ENOENT }
        st.pointee.st_mode = S_IFREG | 0o444
        st.pointee.st_nlink = 1
        st.pointee.st_size = Int(files[i].size)
        st.pointee.st_blksize = 1 << 20
        st.pointee.st_blocks = Int((files[i].size + 511) / 512)
        return 0
    }

    private func readdir(_ path: String, _ buf: UnsafeMutableRawPointer?, _ fill: fuse_fill_dir_t) -> Int32 {
        guard path == "/" else { return -ENOTDIR }
        for name in [".", ".."] + files.map(\.name) { _ = fill(buf, name, nil, 0, fuse_fill_dir_flags(0)) }
        return 0
    }

    private func open(_ path: String, _ fi: UnsafeMutablePointer<fuse_file_info>) -> Int32 {
        guard let i = file(path) else { return -ENOENT }
        guard fi.pointee.flags & O_ACCMODE == O_RDONLY else { return -EROFS }
        fi.pointee.fh = UInt64(i)
        if pageCache {
            fi.pointee.keep_cache = 1
        } else {
            fi.pointee.direct_io = 1
        }
        return 0
    }

    private func read(_ buf: UnsafeMutablePointer<CChar>, _ size: Int, _ offset: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>) -> Int32 {
        let file = files[Int(fi.pointee.fh)]
        guard offset >= 0 else { return -EINVAL }
        guard UInt64(offset) < file.size else { return 0 }
        do {
            return Int32(try file.read(buf, size, UInt64(offset)))
        } catch {
            return -EIO  // the file's reader has logged why
        }
    }
}
