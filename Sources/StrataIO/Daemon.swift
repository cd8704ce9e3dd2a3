// A server that carries on in the background once it is ready (`strata mount` without --foreground): the
// command starts itself again, detached (a session of its own, stdin and stdout on /dev/null, stderr still the
// terminal so that a failure to start is reported where the user looks), and waits until the child says it is
// ready through a pipe (descriptor 3, named in STRATA_READY_FD) or exits. Forking a process that already runs
// threads is unsafe; starting the binary afresh is not. Then the child's later lines go to a log file, or to
// syslog (the journal).
#if canImport(Glibc)
import Glibc
#endif

public enum Daemon {
    static let readyVariable = "STRATA_READY_FD"

    /// Starts this program again with `arguments` (argv[1...]), detached. Returns its pid and the pipe's read end.
    public static func startDetached(_ arguments: [String]) throws -> (pid: pid_t, ready: Int32) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw IOError("create a pipe for", path: "the server", errno: errno) }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, 0x80)  // POSIX_SPAWN_SETSID (glibc; needs _GNU_SOURCE in C)
        let spawned = spawnSelf(arguments, &actions, &attributes, environment: ["\(readyVariable)=3"])
        Glibc.close(fds[1])
        switch spawned {
        case .success(let pid): return (pid, fds[0])
        case .failure(let e):
            Glibc.close(fds[0])
            throw e
        }
    }

    /// Starts this program (/proc/self/exe) again with `arguments`, the environment less STRATA_READY_FD plus
    /// `environment`.
    static func spawnSelf(
        _ arguments: [String], _ actions: inout posix_spawn_file_actions_t, _ attributes: inout posix_spawnattr_t, environment: [String] = []
    ) -> Result<pid_t, IOError> {
        let exe = "/proc/self/exe"
        var env = [String]()
        var e = environ
        while let p = e.pointee {
            let s = String(cString: p)
            if !s.hasPrefix(readyVariable + "=") { env.append(s) }
            e += 1
        }
        env += environment
        let argv: [UnsafeMutablePointer<CChar>?] = (["strata"] + arguments).map { w in w.withCString { strdup($0) } } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { w in w.withCString { strdup($0) } } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid = pid_t()
        let r = posix_spawn(&pid, exe, &actions, &attributes, argv, envp)
        return r == 0 ? .success(pid) : .failure(IOError("start", path: exe, errno: r))
    }

    /// Whether the child said it is ready before it exited (or closed the pipe).
    public static func waitReady(_ fd: Int32) -> Bool {
        defer { Glibc.close(fd) }
        var b: UInt8 = 0
        while true {
            let n = Glibc.read(fd, &b, 1)
            if n == 1 { return b == UInt8(ascii: "R") }
            if n < 0 && errno == EINTR { continue }
            return false
        }
    }

    /// Waits for a child to exit: its exit status (128 + the signal that killed it).
    public static func waitExit(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }

    /// In a child `startDetached` started: closes every descriptor it inherited but 0, 1, 2 and the ready pipe.
    /// A server that keeps its caller's pipes open would keep `$(strata mount ...)`, or a test harness waiting
    /// for the command's end, waiting for as long as it runs.
    public static func closeInheritedDescriptors() {
        guard isDetachedChild else { return }
        let open = ((try? Sys.listDirectory("/proc/self/fd")) ?? []).compactMap { Int32($0) }
        for fd in open where fd > 3 { Glibc.close(fd) }
    }

    /// Whether this process was started by `startDetached`.
    public static var isDetachedChild: Bool { getenv(readyVariable) != nil }

    /// In a child `startDetached` started: tells the parent it is ready and sends later stderr lines to `logFile`
    /// (appended) or, without one, to /dev/null (the caller logs through `Syslog`). Nothing in a foreground run.
    public static func announceReady(logFile: String?) {
        guard let v = getenv(readyVariable), let fd = Int32(String(cString: v)) else { return }
        unsetenv(readyVariable)
        var r = UInt8(ascii: "R")
        _ = Glibc.write(fd, &r, 1)
        Glibc.close(fd)
        let target = logFile.map { Glibc.open($0, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600) } ?? Glibc.open("/dev/null", O_WRONLY | O_CLOEXEC)
        if target >= 0 {
            dup2(target, 2)
            Glibc.close(target)
        }
        _ = chdir("/")  // a server does not keep a directory busy
    }

    /// Whether process `pid` exists.
    public static func isRunning(_ pid: pid_t) -> Bool { kill(pid, 0) == 0 || errno == EPERM }
}

/// Lines for the system log (the journal where there is one), as a background server's log.
public enum Syslog {
    nonisolated(unsafe) private static var opened = false  // openlog once: set by the server's first log line, on its one logging path

    public static func line(_ s: String) {
        if !opened {
            openlog("strata", LOG_PID, LOG_DAEMON)
            opened = true
        }
        s.withCString { p in withVaList([p]) { vsyslog(LOG_WARNING, "%s", $0) } }
    }
}
