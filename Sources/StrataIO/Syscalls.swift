// Every raw libc call Strata makes, in one file, one small function each (as swift-system's Syscalls.swift
// and swift-nio's System.swift do): files, devices, mounts, sockets, processes, signals, the clock. Each C
// library's binding keeps a file of its own: pthreads (Threads.swift), liburing (URingQueue.swift), libfuse
// (FuseFiles.swift), the C library's calendar (LocalCalendar.swift), aligned memory (AlignedSlab.swift). Each retries EINTR here so no caller has to, traps on errnos that can
// only mean a bug in Strata (EBADF, EFAULT), and throws `IOError` for everything the world can cause (EIO,
// ENOSPC, EACCES...). Callers above this file never see errno.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
internal import CURing

/// A failed system call: what was attempted, on which path, and the errno it failed with.
public struct IOError: Error, Equatable, Sendable, CustomStringConvertible {
    public var operation: String
    public var path: String
    public var errno: Int32

    public init(_ operation: String, path: String, errno: Int32) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    public var reason: String { String(cString: strerror(errno)) }
    public var description: String { "\(operation) \(path): \(reason)" }

    /// Whether the error says the medium could not deliver these bytes (a bad sector, a failed transfer), as
    /// opposed to a mistake in the request: EIO, ENODATA, EILSEQ, EBADMSG, EREMOTEIO.
    public var isMediaError: Bool { [EIO, ENODATA, EILSEQ, EBADMSG, EREMOTEIO].contains(errno) }

    /// Whether the file does not exist (ENOENT).
    public var isMissing: Bool { errno == ENOENT }
    /// Whether the filesystem is full (ENOSPC, or EDQUOT: a quota is).
    public var isNoSpace: Bool { errno == ENOSPC || errno == EDQUOT }
    /// Whether a file of that name exists already (EEXIST).
    public var alreadyExists: Bool { errno == EEXIST }

    /// Whether the kernel said the file is busy (EBUSY: a device opened exclusively elsewhere).
    public var isBusy: Bool { errno == EBUSY }

    /// What went wrong, in terms a caller above StrataIO decides on (it never sees an errno).
    public enum Kind: Sendable, Equatable {
        /// ENOENT.
        case missing
        /// EPERM, EACCES: the process lacks the right.
        case notPermitted
        /// EBUSY.
        case busy
        /// EOPNOTSUPP, ENOTTY, ENOSYS: the filesystem or device has no such operation.
        case unsupported
        /// EINVAL: the kernel refused the request's arguments (for an ioctl, often: not this kind of file).
        case invalid
        /// EXDEV: the two paths are on different filesystems.
        case crossDevice
        /// ENOTDIR, EISDIR: a file where a directory was wanted, or the other way round.
        case wrongType
        /// ENOTCONN: a FUSE mount whose server is gone.
        case disconnected
        /// ENOSPC, EDQUOT.
        case noSpace
        /// EEXIST.
        case exists
        /// EFBIG: larger than allowed.
        case tooLarge
        /// EIO and the other media errors (`isMediaError`).
        case media
        /// Anything else.
        case other
    }

    public var kind: Kind {
        switch errno {
        case ENOENT: return .missing
        case EPERM, EACCES: return .notPermitted
        case EBUSY: return .busy
        case EOPNOTSUPP, ENOTTY, ENOSYS: return .unsupported
        case EINVAL: return .invalid
        case EXDEV: return .crossDevice
        case ENOTDIR, EISDIR: return .wrongType
        case ENOTCONN: return .disconnected
        case ENOSPC, EDQUOT: return .noSpace
        case EEXIST: return .exists
        case EFBIG: return .tooLarge
        default: return isMediaError ? .media : .other
        }
    }
}

/// What `stat` says of a file, in Swift terms: callers above StrataIO read a kind and a size, not `st_mode`.
public struct FileStatus: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case regular, directory, blockDevice, characterDevice, symbolicLink, other }
    public var kind: Kind
    /// The permission bits (mode & 0o7777).
    public var permissions: UInt32
    public var size: UInt64
    /// The device holding the file, and its inode: together, the file's identity.
    public var device: UInt64
    public var inode: UInt64
    /// For a block or character device: its device number.
    public var deviceNumber: UInt64
    public var owner: UInt32
    /// The last change of the file's content (mtime), in nanoseconds since the epoch.
    public var modifiedNanos: UInt64

    public var identity: FileIdentity { FileIdentity(device: device, inode: inode) }

    init(_ st: Glibc.stat) {
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .regular
        case S_IFDIR: kind = .directory
        case S_IFBLK: kind = .blockDevice
        case S_IFCHR: kind = .characterDevice
        case S_IFLNK: kind = .symbolicLink
        default: kind = .other
        }
        permissions = UInt32(st.st_mode & 0o7777)
        size = UInt64(max(0, st.st_size))
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        deviceNumber = UInt64(st.st_rdev)
        owner = UInt32(st.st_uid)
        modifiedNanos = UInt64(max(0, st.st_mtim.tv_sec)) * 1_000_000_000 + UInt64(max(0, st.st_mtim.tv_nsec))
    }
}

/// An open file descriptor that closes itself when it goes: it cannot be copied, so nothing closes it twice or
/// forgets to (swift-system's FileDescriptor, with the ownership in the type). `rawValue` is for the calls of
/// this module that take one; it is valid as long as the value lives.
public struct FileDescriptor: ~Copyable {
    public let rawValue: Int32

    public init(owning rawValue: Int32) { self.rawValue = rawValue }

    deinit { _ = Glibc.close(rawValue) }

    /// Hands the descriptor to an owner that closes it itself (a class's deinit).
    public consuming func release() -> Int32 {
        let raw = rawValue
        discard self
        return raw
    }
}

/// How a file is opened, for callers above StrataIO (which pass no O_ flags).
public struct OpenFlags: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let readOnly = OpenFlags([])
    public static let writeOnly = OpenFlags(rawValue: O_WRONLY)
    public static let readWrite = OpenFlags(rawValue: O_RDWR)
    /// With `create`: fail if it exists.
    public static let exclusive = OpenFlags(rawValue: O_EXCL)
    public static let truncate = OpenFlags(rawValue: O_TRUNC)
}

@inline(__always)
func checkBug(_ err: Int32, _ op: String) {
    precondition(err != EBADF && err != EFAULT, "strata bug: \(op) failed with \(String(cString: strerror(err)))")
}

/// Runs `body` until it does not fail with EINTR; returns its result or throws IOError.
@inline(__always)
func retrying<T: BinaryInteger>(_ op: String, _ path: String, _ body: () -> T) throws -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        checkBug(e, op)
        throw IOError(op, path: path, errno: e)
    }
}

public enum Sys {
    static func open(_ path: String, _ flags: Int32, mode: Glibc.mode_t = 0o600) throws -> Int32 {
        try retrying("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    /// Opens `path`; the descriptor closes when the value goes.
    public static func open(_ path: String, _ flags: OpenFlags) throws -> FileDescriptor { FileDescriptor(owning: try open(path, flags.rawValue)) }

    /// `create` for callers above StrataIO; the descriptor closes when the value goes.
    public static func create(_ path: String, _ flags: OpenFlags, mode: UInt32 = 0o600) throws -> FileDescriptor {
        FileDescriptor(owning: try create(path, flags.rawValue, mode: Glibc.mode_t(mode)))
    }

    /// `open` for this module's own scoped uses: the descriptor closes when the value goes.
    static func descriptor(_ path: String, _ flags: Int32, mode: Glibc.mode_t = 0o600) throws -> FileDescriptor {
        FileDescriptor(owning: try open(path, flags, mode: mode))
    }

    /// `create` for this module's own scoped uses.
    static func newDescriptor(_ path: String, _ flags: Int32, mode: Glibc.mode_t = 0o600) throws -> FileDescriptor {
        FileDescriptor(owning: try create(path, flags, mode: mode))
    }

    /// Opens `path` with O_CREAT and sets its mode to exactly `mode`, whatever the umask: Strata's own files
    /// (chain files, scratch files) are private, 0600, since they hold a whole disk.
    static func create(_ path: String, _ flags: Int32, mode: Glibc.mode_t = 0o600) throws -> Int32 {
        let fd = try open(path, flags | O_CREAT, mode: mode)
        do { try fchmod(fd, mode, path: path) } catch {
            close(fd)
            throw error
        }
        return fd
    }

    public static func close(_ fd: Int32) { _ = Glibc.close(fd) }

    public static func pread(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64, path: String) throws -> Int {
        try retrying("read", path) { Glibc.pread(fd, buf, count, off_t(offset)) }
    }

    public static func pwrite(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int, _ offset: UInt64, path: String) throws -> Int {
        try retrying("write", path) { Glibc.pwrite(fd, buf, count, off_t(offset)) }
    }

    /// One pread as an I/O engine completes it: the byte count, or the negated errno (EINTR included: IOPump
    /// resubmits it, as it does for io_uring's completions).
    public static func preadOnce(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64) -> Int {
        let n = Glibc.pread(fd, buf, count, off_t(offset))
        return n >= 0 ? n : -Int(Glibc.errno)
    }

    /// One pwrite as an I/O engine completes it (see `preadOnce`).
    public static func pwriteOnce(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int, _ offset: UInt64) -> Int {
        let n = Glibc.pwrite(fd, buf, count, off_t(offset))
        return n >= 0 ? n : -Int(Glibc.errno)
    }

    /// Writes all of `count` bytes (pwrite may write less, e.g. near a full disk before it reports ENOSPC).
    public static func pwriteAll(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int, _ offset: UInt64, path: String) throws {
        var done = 0
        while done < count {
            let n = try pwrite(fd, buf + done, count - done, offset + UInt64(done), path: path)
            if n == 0 { throw IOError("write", path: path, errno: ENOSPC) }
            done += n
        }
    }

    /// Reads exactly `count` bytes unless the file ends first; returns the number read.
    public static func preadFully(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64, path: String) throws -> Int {
        var done = 0
        while done < count {
            let n = try pread(fd, buf + done, count - done, offset + UInt64(done), path: path)
            if n == 0 { break }
            done += n
        }
        return done
    }

    public static func fstat(_ fd: Int32, path: String) throws -> FileStatus {
        var st = Glibc.stat()
        _ = try retrying("stat", path) { Glibc.fstat(fd, &st) }
        return FileStatus(st)
    }

    /// The status of what `path` names (a link is followed).
    public static func stat(_ path: String) throws -> FileStatus {
        var st = Glibc.stat()
        _ = try retrying("stat", path) { strata_stat(path, &st) }
        return FileStatus(st)
    }

    public static func fsync(_ fd: Int32, path: String) throws { _ = try retrying("fsync", path) { Glibc.fsync(fd) } }
    public static func fdatasync(_ fd: Int32, path: String) throws { _ = try retrying("fdatasync", path) { Glibc.fdatasync(fd) } }
    public static func ftruncate(_ fd: Int32, _ size: UInt64, path: String) throws {
        _ = try retrying("truncate", path) { Glibc.ftruncate(fd, off_t(size)) }
    }

    public static func rename(_ from: String, _ to: String) throws {
        _ = try retrying("rename", from) { Glibc.rename(from, to) }
    }

    public static func unlink(_ path: String) throws { _ = try retrying("remove", path) { Glibc.unlink(path) } }

    static func fchmod(_ fd: Int32, _ mode: Glibc.mode_t, path: String) throws {
        _ = try retrying("set mode of", path) { Glibc.fchmod(fd, mode) }
    }

    /// Makes a directory with exactly `mode` (0700: a chain is private), whatever the umask.
    public static func mkdir(_ path: String, mode: UInt32 = 0o700) throws {
        _ = try retrying("create directory", path) { Glibc.mkdir(path, Glibc.mode_t(mode)) }
        _ = try retrying("set mode of", path) { Glibc.chmod(path, Glibc.mode_t(mode)) }
    }

    /// Makes a directory and those above it that are missing (0700 for those it makes).
    public static func makeDirectories(_ path: String) throws {
        guard !exists(path) else { return }
        let parent = BlockDevices.parentDirectory(of: path)
        if parent != path && parent != "." { try makeDirectories(parent) }
        do { try mkdir(path) } catch let e as IOError where e.alreadyExists {}
    }

    /// Creates a small file that must not exist yet, with `text`.
    public static func writeNewFile(_ path: String, _ text: String) throws {
        let fd = try create(path, O_WRONLY | O_EXCL)
        defer { close(fd) }
        let bytes = Array(text.utf8)
        try bytes.withUnsafeBytes { try pwriteAll(fd, $0.baseAddress!, $0.count, 0, path: path) }
    }

    /// Writes every dirty page of every filesystem back (sync(2)): bench's runs start on a quiet disk, as a
    /// nightly command does, not behind the previous run's writes.
    public static func syncAll() { Glibc.sync() }

    public static func rmdir(_ path: String) throws { _ = try retrying("remove directory", path) { Glibc.rmdir(path) } }

    /// The status of `path` itself (a link is not followed).
    public static func lstat(_ path: String) throws -> FileStatus {
        var st = Glibc.stat()
        _ = try retrying("stat", path) { Glibc.lstat(path, &st) }
        return FileStatus(st)
    }

    /// Opens a block device for writing with O_EXCL: the kernel refuses (EBUSY) while it is mounted, active
    /// swap, a member of an array or volume, or opened exclusively by anyone else; and while this descriptor is
    /// open, none of those can start.
    static func openExclusive(_ path: String, _ flags: Int32) throws -> Int32 {
        try open(path, flags | O_EXCL)
    }

    /// Writes a small text file that exists (a /sys setting).
    public static func writeSmallFile(_ path: String, _ text: String) throws {
        let fd = try open(path, O_WRONLY)
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { b in Glibc.write(fd, b.baseAddress, b.count) }
        guard n == bytes.count else { throw IOError("write", path: path, errno: n < 0 ? errno : EIO) }
    }

    /// Whether anything exists at `path` (a link is followed).
    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// A small text file read whole (/proc, /sys), or nil when it cannot be read.
    public static func readSmallFile(_ path: String) -> String? {
        guard let fd = try? open(path, O_RDONLY) else { return nil }
        defer { close(fd) }
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { b in (try? retrying("read", path) { Glibc.read(fd, b.baseAddress, b.count) }) ?? -1 }
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// An ioctl whose argument is a pointer (or nil); returns its result, throwing `operation`'s IOError on failure.
    @discardableResult
    static func deviceControl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?, _ operation: String, path: String) throws -> Int32 {
        try retrying(operation, path) { argument.map { ioctl(fd, request, $0) } ?? ioctl(fd, request) }
    }

    /// An ioctl whose argument is an integer (a descriptor, a number).
    @discardableResult
    static func deviceControl(_ fd: Int32, _ request: UInt, value: Int32, _ operation: String, path: String) throws -> Int32 {
        try retrying(operation, path) { ioctl(fd, request, value) }
    }

    /// mount(2).
    static func mount(_ source: String, at target: String, type: String, flags: UInt, options: String) throws {
        _ = try retrying("mount \(type) from \(source) at", target) { Glibc.mount(source, target, type, flags, options) }
    }

    /// umount2(2).
    static func unmount(_ path: String, flags: Int32) throws {
        _ = try retrying("unmount", path) { umount2(path, flags) }
    }

    // MARK: Sockets

    /// A stream socket of `domain` (AF_UNIX, AF_INET), close-on-exec.
    static func streamSocket(_ domain: Int32, path: String) throws -> FileDescriptor {
        FileDescriptor(owning: try retrying("open a socket for", path) { socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
    }

    /// setsockopt(2) of an Int32 option (SO_REUSEADDR, TCP_NODELAY...); failures are ignored (a tuning).
    static func setSocketOption(_ fd: Int32, _ level: Int32, _ option: Int32, _ value: Int32) {
        var v = value
        _ = setsockopt(fd, level, option, &v, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Binds `fd` to the address at `address` (`length` bytes) and listens.
    static func bindAndListen(_ fd: Int32, _ address: UnsafeRawPointer, length: Int, backlog: Int32, path: String) throws {
        _ = try retrying("listen on", path) { bind(fd, address.assumingMemoryBound(to: sockaddr.self), socklen_t(length)) }
        _ = try retrying("listen on", path) { listen(fd, backlog) }
    }

    /// The next connection on a listening socket, close-on-exec; nil once the socket is shut down.
    static func accept(_ fd: Int32) -> Int32? {
        while true {
            let c = Glibc.accept(fd, nil, nil)
            if c >= 0 {
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                return c
            }
            if Glibc.errno == EINTR || Glibc.errno == ECONNABORTED { continue }
            return nil
        }
    }

    /// shutdown(2) of both directions.
    static func shutdownSocket(_ fd: Int32) { _ = shutdown(fd, Int32(SHUT_RDWR)) }

    /// One recv(2) into `buffer`, retried on EINTR: the bytes received (0 at the peer's end), or nil on a failure.
    static func receive(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int? {
        while true {
            let n = recv(fd, buffer, count, 0)
            if n >= 0 { return n }
            if Glibc.errno != EINTR { return nil }
        }
    }

    /// One send(2) of `buffer`, retried on EINTR, without SIGPIPE: the bytes sent, or nil on a failure.
    static func send(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int? {
        while true {
            let n = Glibc.send(fd, buffer, count, Int32(MSG_NOSIGNAL))
            if n >= 0 { return n }
            if Glibc.errno != EINTR { return nil }
        }
    }

    /// One sendmsg(2) of `parts` (an iovec array), retried on EINTR, without SIGPIPE: the bytes sent, or nil.
    static func sendGathered(_ fd: Int32, _ parts: UnsafeMutablePointer<iovec>, count: Int) -> Int? {
        var message = msghdr()
        message.msg_iov = parts
        message.msg_iovlen = count
        while true {
            let n = sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
            if n >= 0 { return n }
            if Glibc.errno != EINTR { return nil }
        }
    }

    /// Device size in bytes of a block device (BLKGETSIZE64).
    public static func blockDeviceSize(_ fd: Int32, path: String) throws -> UInt64 {
        var size: UInt64 = 0
        _ = try retrying("get size of", path) { ioctl(fd, strata_BLKGETSIZE64, &size) }
        return size
    }

    /// Logical block size of a block device (BLKSSZGET): the alignment O_DIRECT needs.
    public static func logicalBlockSize(_ fd: Int32, path: String) throws -> Int {
        var size: Int32 = 0
        _ = try retrying("get block size of", path) { ioctl(fd, strata_BLKSSZGET, &size) }
        return Int(size)
    }

    /// Zeroes a byte range of a block device (BLKZEROOUT); the device may do it without transferring data.
    public static func zeroOut(_ fd: Int32, offset: UInt64, length: UInt64, path: String) throws {
        var range: (UInt64, UInt64) = (offset, length)
        _ = try retrying("zero range of", path) { ioctl(fd, strata_BLKZEROOUT, &range) }
    }

    /// Discards a byte range of a block device (BLKDISCARD): what it reads as afterwards is the device's choice.
    /// Nothing where the device takes no discard (EOPNOTSUPP).
    public static func discard(_ fd: Int32, offset: UInt64, length: UInt64, path: String) throws {
        var range: (UInt64, UInt64) = (offset, length)
        if ioctl(fd, strata_BLKDISCARD, &range) == 0 { return }
        let e = Glibc.errno
        guard e == EOPNOTSUPP else { throw IOError("discard a range of", path: path, errno: e) }
    }

    /// Makes a byte range of a file read as zeros without changing its length: a hole punched
    /// (FALLOC_FL_PUNCH_HOLE), or zeros written where the filesystem cannot punch one.
    public static func punchHole(_ fd: Int32, offset: UInt64, length: UInt64, path: String) throws {
        let punch: Int32 = 0x02 | 0x01  // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if strata_fallocate(fd, punch, Int64(offset), Int64(length)) == 0 { return }
        let e = Glibc.errno
        guard e == EOPNOTSUPP || e == ENOSYS || e == EINVAL else { throw IOError("punch a hole in", path: path, errno: e) }
        let chunk = 1 << 20
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: chunk)
        var at: UInt64 = 0
        while at < length {
            let n = Int(min(UInt64(chunk), length - at))
            try pwriteAll(fd, zeros, n, offset + at, path: path)
            at += UInt64(n)
        }
    }

    /// The next data offset at or after `offset` (SEEK_DATA), or nil at end of file / no more data.
    public static func seekData(_ fd: Int32, from offset: UInt64, path: String) throws -> UInt64? {
        let r = lseek(fd, off_t(offset), SEEK_DATA)
        if r < 0 {
            if Glibc.errno == ENXIO { return nil }
            if Glibc.errno == EINVAL { return offset }  // filesystem without SEEK_DATA: all data
            throw IOError("seek in", path: path, errno: Glibc.errno)
        }
        return UInt64(r)
    }

    public static func seekHole(_ fd: Int32, from offset: UInt64, path: String) throws -> UInt64 {
        let r = lseek(fd, off_t(offset), SEEK_HOLE)
        if r < 0 { throw IOError("seek in", path: path, errno: Glibc.errno) }
        return UInt64(r)
    }

    /// Non-blocking exclusive advisory lock; false when another process holds it.
    public static func tryLock(_ fd: Int32, path: String) throws -> Bool {
        while true {
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { return true }
            let e = Glibc.errno
            if e == EINTR { continue }
            if e == EWOULDBLOCK { return false }
            throw IOError("lock", path: path, errno: e)
        }
    }

    /// FS_IOC_GETFSMAP on `fd` (any file or directory of a mounted filesystem): `head` is a `fsmap_head` with its
    /// keys and record count set, followed by room for the records; the kernel fills in the entries.
    public static func filesystemMap(_ fd: borrowing FileDescriptor, _ head: UnsafeMutableRawPointer, path: String) throws {
        try deviceControl(fd.rawValue, strata_FS_IOC_GETFSMAP, head, "read the map of used space (FS_IOC_GETFSMAP) of", path: path)
    }

    /// The filesystem holding `path`: its free bytes (statvfs f_bfree), and those available to this user (f_bavail).
    public static func filesystemSpace(_ path: String) throws -> (free: UInt64, available: UInt64) {
        var s = statvfs()
        _ = try retrying("stat filesystem of", path) { statvfs(path, &s) }
        return (UInt64(s.f_bfree) * UInt64(s.f_frsize), UInt64(s.f_bavail) * UInt64(s.f_frsize))
    }

    /// Free bytes available to this user on the filesystem holding `path`.
    public static func freeSpace(_ path: String) throws -> UInt64 { try filesystemSpace(path).available }

    /// The filesystem type (statfs f_type) of an open file.
    public static func filesystemType(_ fd: Int32, path: String) throws -> Int {
        try retrying("stat filesystem of", path) { strata_fstatfs_type(fd) }
    }

    public static func listDirectory(_ path: String) throws -> [String] {
        guard let d = opendir(path) else { throw IOError("list", path: path, errno: Glibc.errno) }
        defer { closedir(d) }
        var names = [String]()
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    public static func isTerminal(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    /// Writes all of `text` to standard error, unbuffered (a progress line, a notice).
    public static func writeStandardError(_ text: String) {
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && Glibc.errno == EINTR { continue }
            guard n > 0 else { return }
            done += n
        }
    }

    public static var onlineCores: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// A second descriptor on `path` for O_DIRECT reads (page cache bypassed), or nil where the filesystem
    /// refuses O_DIRECT (tmpfs).
    public static func openDirectForReading(_ path: String) -> Int32? { try? open(path, O_RDONLY | strata_O_DIRECT) }

    /// `path` with every symbolic link, "." and ".." resolved; nil when it does not exist.
    public static func realPath(_ path: String) -> String? { try? resolvedPath(path) }

    /// `path` resolved as `realPath` does; throws (missing, wrongType, disconnected...) where it cannot be.
    public static func resolvedPath(_ path: String) throws -> String {
        guard let p = realpath(path, nil) else { throw IOError("resolve", path: path, errno: Glibc.errno) }
        defer { free(p) }
        return String(cString: p)
    }

    /// Whether `path` is a directory this process may create files in.
    public static func isWritableDirectory(_ path: String) -> Bool {
        guard let st = try? stat(path) else { return false }
        return st.kind == .directory && access(path, W_OK | X_OK) == 0
    }

    /// This process's id.
    public static var processID: Int32 { getpid() }
    /// The real user and group ids of this process.
    public static var userID: UInt32 { getuid() }
    public static var groupID: UInt32 { getgid() }

    /// The machine's host name (gethostname), or "localhost" where it has none.
    public static var hostName: String {
        var name = [CChar](repeating: 0, count: 256)
        guard gethostname(&name, name.count - 1) == 0 else { return "localhost" }
        return name.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// Every environment variable of this process, by name.
    public static func environmentVariables() -> [String: String] {
        var out: [String: String] = [:]
        for s in environmentEntries() {
            if let eq = s.firstIndex(of: "=") { out[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
        }
        return out
    }

    /// The value of an environment variable, or nil where it is not set.
    public static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    /// Sleeps the calling thread for `seconds` (a poll's pause; pipelines wait on conditions instead).
    public static func sleep(seconds: Double) {
        var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - seconds.rounded(.down)) * 1e9))
        var left = timespec()
        while nanosleep(&ts, &left) != 0 && Glibc.errno == EINTR { ts = left }
    }

    /// Seconds since 1970 (UTC), from the real-time clock.
    public static var wallClockSeconds: UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(max(0, ts.tv_sec))
    }

    public static func monotonicNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// How a child `Sys.spawn` starts holds its descriptors: each of 0, 1, 2 from /dev/null, or a copy of one of
/// this process's (`dups`: from, to).
struct ChildDescriptors {
    var nullInput = false, nullOutput = false, nullError = false
    var dups: [(from: Int32, to: Int32)] = []
}

/// The one path a signal handler may take: async-signal-safe calls on values set before it was installed.
nonisolated(unsafe) private var terminationThaw: Int32 = -1  // set once, before the handlers are installed
nonisolated(unsafe) private var terminationUnlink: UnsafeMutablePointer<CChar>?  // likewise

extension Sys {
    // MARK: Processes and signals

    /// A pipe, both ends close-on-exec: its read and write ends, for the caller to own (`FileDescriptor`).
    static func pipe(for what: String) throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        _ = try retrying("create a pipe for", what) { Glibc.pipe(&fds) }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return (fds[0], fds[1])
    }

    /// One byte read from a pipe, EINTR retried; nil at its end or on a failure.
    static func readByte(_ fd: Int32) -> UInt8? {
        var b: UInt8 = 0
        while true {
            let n = Glibc.read(fd, &b, 1)
            if n == 1 { return b }
            if n < 0 && Glibc.errno == EINTR { continue }
            return nil
        }
    }

    /// One byte written to a pipe, EINTR retried; false when it could not be.
    @discardableResult
    static func writeByte(_ fd: Int32, _ byte: UInt8) -> Bool {
        var b = byte
        while true {
            let n = Glibc.write(fd, &b, 1)
            if n == 1 { return true }
            if n < 0 && Glibc.errno == EINTR { continue }
            return false
        }
    }

    /// Starts `executable` with `arguments` (argv[1...]; argv[0] is "strata") and `environment` (NAME=VALUE), in a
    /// session of its own, its descriptors as `descriptors` says. Returns its pid.
    static func spawn(
        _ executable: String, arguments: [String], environment: [String], descriptors: ChildDescriptors
    ) -> Result<Int32, IOError> {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if descriptors.nullInput { posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0) }
        if descriptors.nullOutput { posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0) }
        if descriptors.nullError { posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0) }
        for d in descriptors.dups { posix_spawn_file_actions_adddup2(&actions, d.from, d.to) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, 0x80)  // POSIX_SPAWN_SETSID (glibc; needs _GNU_SOURCE in C)
        let argv: [UnsafeMutablePointer<CChar>?] = (["strata"] + arguments).map { w in w.withCString { strdup($0) } } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { w in w.withCString { strdup($0) } } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid = pid_t()
        let r = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        return r == 0 ? .success(pid) : .failure(IOError("start", path: executable, errno: r))
    }

    /// Runs `program` (an absolute path) with `arguments`, its input /dev/null, and waits for it to exit: its
    /// status and the last 4 KiB of what it wrote (stdout and stderr together). The output goes to a file in
    /// memory, not a pipe: a program that leaves a daemon behind (a FUSE driver) keeps its descriptors open.
    public static func runProgram(_ program: String, _ arguments: [String]) -> (status: Int32, output: String) {
        let fd = strata_memfd("strata-program-output")
        guard fd >= 0 else { return (127, "cannot make a file in memory for its output") }
        defer { Glibc.close(fd) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fd, 1)
        posix_spawn_file_actions_adddup2(&actions, fd, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([program] + arguments).map { w in w.withCString { strdup($0) } } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        let r = posix_spawn(&pid, program, &actions, nil, argv, environ)
        guard r == 0 else { return (127, String(cString: strerror(r))) }
        let status = waitExit(pid)
        let size = Int(max(Glibc.lseek(fd, 0, SEEK_END), 0))
        let keep = min(size, 4096)
        var bytes = [UInt8](repeating: 0, count: keep)
        let n = keep == 0 ? 0 : bytes.withUnsafeMutableBytes { preadOnce(fd, $0.baseAddress!, keep, UInt64(size - keep)) }
        return (status, String(decoding: bytes.prefix(max(n, 0)), as: UTF8.self))
    }

    /// The first of `directories` holding an executable `name`, or nil.
    public static func findProgram(_ name: String, in directories: [String] = ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]) -> String? {
        directories.map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
    }

    /// Waits for a child to exit: its exit status (128 + the signal that killed it).
    public static func waitExit(_ pid: Int32) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && Glibc.errno == EINTR {}
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }

    /// Whether process `pid` exists.
    public static func isRunning(_ pid: Int32) -> Bool { kill(pid, 0) == 0 || Glibc.errno == EPERM }

    /// Every environment entry (NAME=VALUE), in order.
    static func environmentEntries() -> [String] {
        var out = [String]()
        var e = environ
        while let p = e.pointee {
            out.append(String(cString: p))
            e += 1
        }
        return out
    }

    static func unsetEnvironment(_ name: String) { unsetenv(name) }

    /// The termination signals a server takes on one thread: SIGINT, SIGTERM, SIGHUP.
    private static var terminationSignals: sigset_t {
        var s = sigset_t()
        sigemptyset(&s)
        for sig in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&s, sig) }
        return s
    }

    /// Blocks the termination signals in the calling thread and in the threads it starts from then on.
    static func blockTerminationSignals() {
        var s = terminationSignals
        pthread_sigmask(SIG_BLOCK, &s, nil)
    }

    /// Waits until a termination signal arrives (they must be blocked) and returns it.
    static func waitForTerminationSignal() -> Int32 {
        var s = terminationSignals
        var sig: Int32 = 0
        while sigwait(&s, &sig) != 0 {}
        return sig
    }

    /// CPU seconds, user and system: of the process (`who` 0, RUSAGE_SELF) or the calling thread (1, RUSAGE_THREAD).
    static func cpuSeconds(_ who: Int32) -> (user: Double, system: Double) {
        var r = rusage()
        getrusage(__rusage_who_t(UInt32(who)), &r)
        return (Double(r.ru_utime.tv_sec) + Double(r.ru_utime.tv_usec) / 1e6, Double(r.ru_stime.tv_sec) + Double(r.ru_stime.tv_usec) / 1e6)
    }

    /// openlog(3) for this process's lines, as a daemon's, with its pid (`identity` is static: openlog keeps it).
    static func openSystemLog(_ identity: StaticString) {
        openlog(UnsafeRawPointer(identity.utf8Start).assumingMemoryBound(to: CChar.self), LOG_PID, LOG_DAEMON)
    }

    /// One line to the system log (the journal where there is one), at warning level.
    static func systemLog(_ line: String) { line.withCString { p in withVaList([p]) { vsyslog(LOG_WARNING, "%s", $0) } } }

    /// Makes `fd` this process's descriptor `target` (dup2), and closes `fd`.
    static func moveDescriptor(_ fd: Int32, to target: Int32) {
        _ = dup2(fd, target)
        _ = Glibc.close(fd)
    }

    /// Closes one of this process's descriptors by number (an inherited one, standard output).
    static func closeNumber(_ fd: Int32) { _ = Glibc.close(fd) }

    /// chdir("/"): a server or guardian keeps no directory busy.
    static func leaveWorkingDirectory() { _ = chdir("/") }

    /// Ends the process at once (no atexit handlers, no flushing): what a signal handler may call.
    static func exitNow(_ status: Int32) -> Never { _exit(status) }

    /// SIGINT and SIGTERM end the process with status 0, removing `unlinking` first (a socket file); SIGPIPE is
    /// ignored (a write to a client gone fails instead).
    static func exitOnTermination(unlinking path: String?) {
        if let path { terminationUnlink = strdup(path) }
        let stop: @convention(c) (Int32) -> Void = { _ in
            if let p = terminationUnlink { Glibc.unlink(p) }
            _exit(0)
        }
        signal(SIGINT, stop)
        signal(SIGTERM, stop)
        signal(SIGPIPE, SIG_IGN)
    }

    /// SIGTERM, SIGINT, SIGHUP and SIGPIPE thaw the filesystem open at `fd` (FITHAW) and end the process: the
    /// freeze guardian's last word, whatever stops it.
    static func thawOnTermination(_ fd: Int32, request: UInt) {
        terminationThaw = fd
        terminationThawRequest = request
        for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE] {
            signal(s) { _ in
                _ = ioctl(terminationThaw, terminationThawRequest, 0)
                _exit(0)
            }
        }
    }
}

nonisolated(unsafe) private var terminationThawRequest: UInt = 0  // set with `terminationThaw`

extension Sys {
    /// Makes glibc serve allocations of `bytes` and more from mmap, and give them back when freed: its sliding
    /// threshold otherwise serves them from per-thread arenas that keep what was freed. (mallopt is in malloc.h,
    /// which Swift's Glibc module does not bring in; M_MMAP_THRESHOLD is -3 there.)
    public static func mapLargeAllocations(from bytes: Int) {
        _ = strata_mallopt(-3, Int32(bytes))
    }
}

@_silgen_name("mallopt")
private func strata_mallopt(_ parameter: Int32, _ value: Int32) -> Int32
