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

    /// Starts this program again with `arguments` (argv[1...]), detached. Returns its pid and the pipe's read end
    /// (for `waitReady`, which closes it).
    public static func startDetached(_ arguments: [String]) throws -> (pid: Int32, ready: Int32) {
        let ends = try Sys.pipe(for: "the server")
        let readEnd = FileDescriptor(owning: ends.read)
        let spawned: Result<Int32, IOError>
        do {
            let writeEnd = FileDescriptor(owning: ends.write)  // closed here: the child's copy is the only one left
            spawned = spawnSelf(
                arguments, descriptors: ChildDescriptors(nullInput: true, nullOutput: true, dups: [(writeEnd.rawValue, 3)]),
                environment: ["\(readyVariable)=3"])
        }
        switch spawned {
        case .success(let pid): return (pid, readEnd.release())
        case .failure(let e): throw e
        }
    }

    /// Starts this program (/proc/self/exe) again with `arguments`, its descriptors as `descriptors` says, the
    /// environment less STRATA_READY_FD plus `environment`.
    static func spawnSelf(_ arguments: [String], descriptors: ChildDescriptors, environment: [String] = []) -> Result<Int32, IOError> {
        let env = Sys.environmentEntries().filter { !$0.hasPrefix(readyVariable + "=") } + environment
        return Sys.spawn("/proc/self/exe", arguments: arguments, environment: env, descriptors: descriptors)
    }

    /// Whether the child said it is ready before it exited (or closed the pipe). Closes `fd`.
    public static func waitReady(_ fd: Int32) -> Bool {
        let pipe = FileDescriptor(owning: fd)
        return Sys.readByte(pipe.rawValue) == UInt8(ascii: "R")
    }

    /// Waits for a child to exit: its exit status (128 + the signal that killed it).
    public static func waitExit(_ pid: Int32) -> Int32 { Sys.waitExit(pid) }

    /// In a child `startDetached` started: closes every descriptor it inherited but 0, 1, 2 and the ready pipe.
    /// A server that keeps its caller's pipes open would keep `$(strata mount ...)`, or a test harness waiting
    /// for the command's end, waiting for as long as it runs.
    public static func closeInheritedDescriptors() {
        guard isDetachedChild else { return }
        let open = ((try? Sys.listDirectory("/proc/self/fd")) ?? []).compactMap { Int32($0) }
        for fd in open where fd > 3 { Sys.closeNumber(fd) }
    }

    /// Whether this process was started by `startDetached`.
    public static var isDetachedChild: Bool { Sys.environment(readyVariable) != nil }

    /// In a child `startDetached` started: tells the parent it is ready and sends later stderr lines to `logFile`
    /// (appended) or, without one, to /dev/null (the caller logs through `Syslog`). Nothing in a foreground run.
    public static func announceReady(logFile: String?) {
        guard let v = Sys.environment(readyVariable), let fd = Int32(v) else { return }
        Sys.unsetEnvironment(readyVariable)
        Sys.writeByte(fd, UInt8(ascii: "R"))
        Sys.closeNumber(fd)
        let target = logFile.map { try? Sys.descriptor($0, O_WRONLY | O_APPEND | O_CREAT) } ?? (try? Sys.descriptor("/dev/null", O_WRONLY))
        if let target { Sys.moveDescriptor(target.release(), to: 2) }
        Sys.leaveWorkingDirectory()  // a server does not keep a directory busy
    }

    /// Whether process `pid` exists.
    public static func isRunning(_ pid: Int32) -> Bool { Sys.isRunning(pid) }
}

/// Lines for the system log (the journal where there is one), as a background server's log.
public enum Syslog {
    nonisolated(unsafe) private static var opened = false  // openlog once: set by the server's first log line, on its one logging path

    public static func line(_ s: String) {
        if !opened {
            Sys.openSystemLog("strata")
            opened = true
        }
        Sys.systemLog(s)
    }
}
