// Termination signals for servers whose work runs on threads of their own (`strata mount`): the signals are
// blocked in every thread (block them before starting any) and one thread waits for them with sigwait, so the
// stop runs as ordinary code (unmounting, joining, removing state), not in a signal handler.
#if canImport(Glibc)
import Glibc
#endif

public enum TerminationSignals {
    /// Blocks SIGINT, SIGTERM and SIGHUP in this thread and in the threads it starts from now on.
    public static func block() { Sys.blockTerminationSignals() }

    /// Starts a thread that waits for one of them and calls `body` with it, once.
    public static func onSignal(_ body: @escaping @Sendable (Int32) -> Void) {
        Threads.spawn("strata-signals", stackSize: 256 << 10) { body(Sys.waitForTerminationSignal()) }
    }
}
