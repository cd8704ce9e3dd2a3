// What a front end needs to run a server (`strata mount`) as a process of its own: start it in the background
// and learn when it is ready or why it failed, let go of the terminal once ready, take the termination signals
// on one thread, and log to syslog once detached. The process machinery is StrataIO's (Daemon.swift,
// Signals.swift); this is its face for the CLI, which imports StrataChain alone.
import StrataIO

public enum ServerProcess {
    /// Whether this process is the background copy `startInBackground` started.
    public static var isBackgroundChild: Bool { Daemon.isDetachedChild }

    /// Runs this program again with `arguments` as a background server and waits until it is ready (0) or has
    /// failed (its exit status; its error line went to this terminal).
    public static func startInBackground(_ arguments: [String]) throws -> Int32 {
        let child: (pid: Int32, ready: Int32)
        do { child = try Daemon.startDetached(arguments) } catch let e as IOError {
            throw ChainError.machineLacks("cannot start the background server: \(e.description)")
        }
        return Daemon.waitReady(child.ready) ? 0 : Daemon.waitExit(child.pid)
    }

    /// Before any thread starts: closes descriptors inherited from the parent, and blocks SIGINT, SIGTERM and
    /// SIGHUP so that only the thread `onTermination` starts takes them.
    public static func prepare() {
        Daemon.closeInheritedDescriptors()
        TerminationSignals.block()
    }

    /// Runs `body` on a thread of its own when SIGINT, SIGTERM or SIGHUP arrives.
    public static func onTermination(_ body: @escaping @Sendable () -> Void) { TerminationSignals.onSignal { _ in body() } }

    /// Tells the parent waiting in `startInBackground` that the server is ready, and lets go of the terminal
    /// (standard output and error go to `logFile`, or nowhere).
    public static func announceReady(logFile: String?) { Daemon.announceReady(logFile: logFile) }

    /// One line to syslog.
    public static func syslog(_ line: String) { Syslog.line(line) }
}
