// Freezing a filesystem (FIFREEZE) for a consistent image, and the guardian that makes sure it is thawed.
// A filesystem left frozen is the worst outcome a backup tool can have (every writer on the machine hangs), and
// a process cannot thaw anything after SIGKILL, so the freeze is watched from outside: before freezing, strata
// starts itself again as a guardian (in a session of its own, so a Ctrl-C on the terminal does not reach it)
// holding the read end of a pipe whose write end only strata holds. When strata thaws it says so on the pipe
// and the guardian leaves; when the pipe closes without that word (strata killed, crashed, or exited on an
// error path that missed the thaw) or the guardian itself is told to stop (systemd stopping the unit signals
// every process of it), the guardian thaws at once. Thawing a filesystem that is not frozen fails with EINVAL
// and is harmless, so the two sides never need to agree on who thawed.
#if canImport(Glibc)
import Glibc
#endif

/// A filesystem frozen for as long as the value lives (or until `thaw`), watched by a guardian process.
public final class FrozenFilesystem {
    public let mountPoint: String
    private let fd: Int32
    private let guardian: pid_t
    private var control: Int32
    private let frozenAt: UInt64
    /// How long the filesystem stayed frozen, once thawed.
    public private(set) var frozenSeconds: Double = 0

    /// The hidden subcommand the guardian runs as (`strata <commandName> MOUNTPOINT`).
    public static let guardianCommand = "__freeze-guardian"

    static let fifreeze: UInt = 0xC004_5877  // _IOWR('X', 119, int)
    static let fithaw: UInt = 0xC004_5878  // _IOWR('X', 120, int)

    /// Freezes the filesystem mounted at `mountPoint` once its guardian is watching. Throws `IOError` when the
    /// mount point cannot be opened, the guardian cannot start, or the filesystem cannot be frozen (EOPNOTSUPP:
    /// it has no freeze; EPERM: not root; EBUSY: frozen already).
    public init(mountPoint: String) throws {
        self.mountPoint = mountPoint
        fd = try Sys.open(mountPoint, O_RDONLY | O_DIRECTORY)
        var control: [Int32] = [0, 0], ready: [Int32] = [0, 0]
        guard pipe(&control) == 0, pipe(&ready) == 0 else {
            Glibc.close(fd)
            throw IOError("create a pipe for the freeze guardian of", path: mountPoint, errno: errno)
        }
        for f in control + ready { _ = fcntl(f, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, control[0], 0)
        posix_spawn_file_actions_adddup2(&actions, ready[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, 0x80)  // POSIX_SPAWN_SETSID
        let spawned = Daemon.spawnSelf([Self.guardianCommand, mountPoint], &actions, &attributes)
        Glibc.close(control[0])
        Glibc.close(ready[1])
        var word: UInt8 = 0
        var n = -1
        if case .success = spawned { repeat { n = Glibc.read(ready[0], &word, 1) } while n < 0 && errno == EINTR }
        Glibc.close(ready[0])
        guard case .success(let pid) = spawned, n == 1, word == UInt8(ascii: "R") else {
            Glibc.close(control[1])
            Glibc.close(fd)
            if case .success(let pid) = spawned { _ = Daemon.waitExit(pid) }
            if case .failure(let e) = spawned { throw e }
            throw IOError("start the freeze guardian of", path: mountPoint, errno: ECHILD)
        }
        guardian = pid
        self.control = control[1]
        frozenAt = Sys.monotonicNanos()
        if ioctl(fd, Self.fifreeze, 0) != 0 {
            let e = errno
            release()
            throw IOError("freeze", path: mountPoint, errno: e)
        }
    }

    /// Thaws the filesystem and lets the guardian go. Returns how long it was frozen.
    @discardableResult
    public func thaw() throws -> Double {
        guard control >= 0 else { return frozenSeconds }
        let failed = ioctl(fd, Self.fithaw, 0) != 0 ? errno : 0
        frozenSeconds = Double(Sys.monotonicNanos() - frozenAt) / 1e9
        release()
        if failed != 0 && failed != EINVAL { throw IOError("thaw", path: mountPoint, errno: failed) }
        return frozenSeconds
    }

    /// Tells the guardian the filesystem is thawed and waits for it to leave.
    private func release() {
        var word = UInt8(ascii: "T")
        _ = Glibc.write(control, &word, 1)
        Glibc.close(control)
        control = -1
        _ = Daemon.waitExit(guardian)
        Glibc.close(fd)
    }

    deinit { try? thaw() }

    /// The guardian's whole life (the hidden subcommand): says it is ready on stdout, then waits on stdin. "T"
    /// means strata thawed: leave. End of file, an error, or SIGTERM/SIGINT/SIGHUP: thaw, then leave.
    public static func watch(mountPoint: String) -> Never {
        let fd = Glibc.open(mountPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { exit(1) }
        guardedDescriptor = fd
        for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE] {
            signal(s) { _ in
                _ = ioctl(FrozenFilesystem.guardedDescriptor, FrozenFilesystem.fithaw, 0)
                _exit(0)
            }
        }
        var ready = UInt8(ascii: "R")
        _ = Glibc.write(1, &ready, 1)
        Glibc.close(1)
        _ = chdir("/")
        var word: UInt8 = 0
        while true {
            let n = Glibc.read(0, &word, 1)
            if n < 0 && errno == EINTR { continue }
            if n == 1 && word == UInt8(ascii: "T") { exit(0) }
            _ = ioctl(fd, fithaw, 0)
            exit(0)
        }
    }

    nonisolated(unsafe) static var guardedDescriptor: Int32 = -1  // the guardian process's one descriptor, set before its signal handlers are installed
}
