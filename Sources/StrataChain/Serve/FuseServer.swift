// `strata mount`'s file system: the points of a chain as read-only files (`point-N.img`) through libfuse 3's
// high-level API, served from the point readers on libfuse's multithreaded loop, in requests of up to 1 MiB.
// By default reads bypass the kernel's page cache (direct_io): each read reaches the server, whose read-ahead
// decodes the frames ahead of a sequential reader in parallel, and the bytes are copied once, into the reader's
// buffer. Through the page cache (`pageCache`, kept across opens: a point never changes; read-ahead widened
// after mounting to 8 MiB) a sequential read cost twice the CPU on a 2-core machine (the kernel copies each byte
// into the cache and again out of it, and the cache's pages are allocated and cleared): 4.9-10.9 s for the
// reference disk's 6 GiB against 3.1-3.6 s; it is what a program that maps the files with MAP_SHARED needs. A read that fails its check gets EIO, never bytes, and one line on the log names the image
// and frame. One file system a process (libfuse's C callbacks find it through `current`).
import CFuse
import StrataIO

#if canImport(Glibc)
import Glibc
#endif

final class FuseServer: @unchecked Sendable {
    /// The files served, by name.
    private let files: [(name: String, reader: PointReader)]
    private let log: (String) -> Void
    private var fuse: OpaquePointer?
    private let mountedAt: String
    private let pageCache: Bool
    /// Bytes the kernel reads ahead of a sequential reader.
    static let readAheadKiB = 8192
    /// Threads serving requests: as many as the machine has cores where reads wait on little but decoding (a
    /// chain on local storage), more where they wait on the network (a chain in a bucket). More threads than cores
    /// decoding at once made random reads' tails long: the scheduler shares the cores out in slices of
    /// milliseconds, and a read whose thread lost its core waited behind all the others (fio, 16 random 4 KiB reads
    /// in flight, 2 cores, seekable chain: p99 0.84 ms and 31-33k reads a second with 2 threads, 2.7-3.1 ms and
    /// 27-29k with 4, 4.6-9.9 ms with 8-32; a gate letting 2 decode at a time in order under 32 threads: 1.1-1.2
    /// ms, 22k). A sequential reader is decoded ahead by the read-ahead threads whatever the number.
    static func threads(remote: Bool) -> Int { remote ? 16 : max(2, Sys.onlineCores) }

    nonisolated(unsafe) private static var current: FuseServer?

    /// Mounts `files` read-only at `dir` (an empty directory); the file system's source shows as `source`.
    init(
        files: [(name: String, reader: PointReader)], at dir: String, source: String, pageCache: Bool, log: @escaping (String) -> Void
    ) throws {
        precondition(FuseServer.current == nil, "one FUSE file system a process")
        self.files = files
        self.pageCache = pageCache
        self.log = log
        mountedAt = dir
        FuseServer.current = self
        let escaped = String(source.map { $0 == "," || $0 == "\\" ? "_" : $0 })
        var options = "ro,default_permissions,max_read=1048576,fsname=\(escaped),subtype=strata"
        if getuid() == 0 { options += ",allow_other" }
        let words: [String] = ["strata", "-o", options]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { w in w.withCString { strdup($0) } }
        defer { argv.forEach { free($0) } }
        var ops = fuse_operations()
        ops.getattr = { path, st, _ in FuseServer.current!.getattr(String(cString: path!), st!) }
        ops.readdir = { path, buf, fill, _, _, _ in FuseServer.current!.readdir(String(cString: path!), buf, fill!) }
        ops.open = { path, fi in FuseServer.current!.open(String(cString: path!), fi!) }
        ops.read = { _, buf, size, offset, fi in FuseServer.current!.read(buf!, size, offset, fi!) }
        ops.`init` = { conn, cfg in
            cfg!.pointee.kernel_cache = 1
            cfg!.pointee.entry_timeout = 86400
            cfg!.pointee.attr_timeout = 86400
            cfg!.pointee.negative_timeout = 86400
            conn!.pointee.max_background = 16  // 16 MiB in flight: well inside the default cache (62 frames)
            conn!.pointee.max_read = 1 << 20  // as the max_read mount option says
            return nil
        }
        var args = argv.withUnsafeBufferPointer { p in
            fuse_args(argc: Int32(p.count), argv: UnsafeMutablePointer(mutating: p.baseAddress), allocated: 0)
        }
        guard let f = strata_fuse_new(&args, &ops, nil) else {
            FuseServer.current = nil
            throw ChainError.machineLacks("cannot start a FUSE file system: libfuse refused its options; nothing was mounted")
        }
        guard fuse_mount(f, dir) == 0 else {
            fuse_destroy(f)
            FuseServer.current = nil
            let why = Sys.exists("/dev/fuse") ? "the kernel refused the FUSE mount (see the line above)" : "this machine has no /dev/fuse: load the fuse module (modprobe fuse)"
            throw ChainError.machineLacks("cannot mount \(dir) with FUSE: \(why); nothing was mounted")
        }
        fuse = f
    }

    /// Serves requests until the file system is unmounted or `stop` is called, on up to `threads` threads, all
    /// kept once started (with fewer kept idle than requests in flight, libfuse ends a thread as each request is
    /// answered and starts another for the next).
    func run(threads: Int) {
        guard let fuse else { return }
        _ = strata_fuse_loop_mt(fuse, UInt32(threads), UInt32(threads))
    }

    /// Ends the loop `run` is in.
    func stop() {
        guard let fuse else { return }
        fuse_session_exit(fuse_get_session(fuse))
    }

    /// Unmounts (if still mounted) and frees the file system, once `run` has returned.
    func close() {
        guard let f = fuse else { return }
        fuse_unmount(f)
        fuse_destroy(f)
        fuse = nil
        FuseServer.current = nil
    }

    /// The kernel reads ahead 128 KiB of a FUSE file unless told otherwise (its backing device's read_ahead_kb):
    /// at that size a sequential read runs a request at a time. Called once `run` runs: the kernel sets the
    /// read-ahead when the server answers its INIT request (a stat of the mount waits for that).
    func widenReadAhead() {
        _ = try? Sys.stat(mountedAt)
        guard let dev = Mounts.mounted(at: mountedAt)?.device else { return }
        let path = "/sys/class/bdi/\(BlockDevices.major(dev)):\(BlockDevices.minor(dev))/read_ahead_kb"
        try? Sys.writeSmallFile(path, "\(Self.readAheadKiB)\n")
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
        st.pointee.st_size = Int(files[i].reader.size)
        st.pointee.st_blksize = 1 << 20
        st.pointee.st_blocks = Int((files[i].reader.size + 511) / 512)
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
        let (name, reader) = files[Int(fi.pointee.fh)]
        guard offset >= 0 else { return -EINVAL }
        guard UInt64(offset) < reader.size else { return 0 }
        do {
            return Int32(try reader.read(into: buf, count: size, at: UInt64(offset)))
        } catch {
            log("\(name): read of \(size) bytes at \(offset) failed (EIO): \(PointReader.describe(error))")
            return -EIO
        }
    }
}
