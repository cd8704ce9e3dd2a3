// CPU time by thread and for the whole process (getrusage): what `strata bench` uses to say which stage of a real
// run was busy (the I/O thread, the workers, the coordinator, the writer) and how much the kernel worked for
// the process (system time; io_uring's own workers, `iou-wrk-*`, are threads of the process and count there).
// Threads of a ThreadGroup add their time, by name, when they end, while recording is on.
#if canImport(Glibc)
import Glibc
#endif

public struct ThreadTime: Sendable, Equatable {
    public var name: String
    /// Seconds in user space and in the kernel.
    public var user: Double
    public var system: Double

    public init(name: String, user: Double, system: Double) {
        self.name = name
        self.user = user
        self.system = system
    }
}

public enum ThreadTimes {
    private final class Recorder: @unchecked Sendable {  // every field is guarded by `lock`
        let lock = Condition()
        var recording = false
        var ended: [ThreadTime] = []
    }
    private static let recorder = Recorder()

    /// Starts collecting the CPU time of every ThreadGroup thread that ends from now on.
    public static func startRecording() {
        recorder.lock.withLock {
            recorder.recording = true
            recorder.ended = []
        }
    }

    /// Stops collecting; returns what the threads that ended meanwhile used.
    public static func stopRecording() -> [ThreadTime] {
        recorder.lock.withLock {
            recorder.recording = false
            return recorder.ended
        }
    }

    /// Called by a ThreadGroup thread as it ends.
    static func threadEnded(_ name: String) {
        let t = usage(1)  // RUSAGE_THREAD (a _GNU_SOURCE name Swift does not see)
        recorder.lock.withLock { if recorder.recording { recorder.ended.append(ThreadTime(name: name, user: t.user, system: t.system)) } }
    }

    /// CPU seconds of the calling thread so far.
    public static func thisThread() -> ThreadTime {
        let t = usage(1)
        return ThreadTime(name: "", user: t.user, system: t.system)
    }

    /// CPU seconds of the whole process so far, threads that ended included.
    public static func process() -> ThreadTime { let t = usage(0); return ThreadTime(name: "", user: t.user, system: t.system) }

    /// 0: the process (RUSAGE_SELF); 1: the calling thread (RUSAGE_THREAD).
    private static func usage(_ who: Int32) -> (user: Double, system: Double) { Sys.cpuSeconds(who) }
}
