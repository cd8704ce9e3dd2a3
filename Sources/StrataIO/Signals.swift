// Termination signals for servers whose work runs on threads of their own (`strata mount`): the signals are
// blocked in every thread (block them before starting any) and one thread waits for them with sigwait, so the
// stop runs as ordinary code (unmounting, joining, removing state), not in a signal handler.
#if canImport(Glibc)
import Glibc
#endif

public enum TerminationSignals {
    private static var set: sigset_t {
        var s = sigset_t()
        sigemptyset(&s)
        for sig in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&s, sig) }
        return s
    }

    /// Blocks SIGINT, SIGTERM and SIGHUP in this thread and in the threads it starts from now on.
    public static func block() {
        var s = set
        pthread_sigmask(SIG_BLOCK, &s, nil)
    }

    /// Starts a thread that waits for one of them and calls `body` with it, once.
    public static func onSignal(_ body: @escaping @Sendable (Int32) -> Void) {
        Threads.spawn("strata-signals", stackSize: 256 << 10) {
            var s = set
            var sig: Int32 = 0
            while sigwait(&s, &sig) != 0 {}
            body(sig)
        }
    }
}
