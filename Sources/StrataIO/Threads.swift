// Threads and the one lock primitive Strata's pipelines use, straight on pthreads. Foundation's Thread and
// NSCondition would do the same, but linking Foundation for them pulls in ICU: a cold start of the binary read
// 75 MB of libraries from disk (0.11 s, a third of a merge). Pipeline threads are dedicated (blocking io_uring
// waits and CPU-bound compression do not belong in Swift concurrency's cooperative pool).
#if canImport(Glibc)
import Glibc
#endif
internal import CURing

/// A mutex with condition variables, used as NSCondition is: lock, check state, wait, unlock. A condition may
/// have several channels (condition variables on the one mutex) so that each stage of a pipeline waits on its
/// own and is woken only by changes that concern it, not by every change to the shared state. (On 2 cores this
/// made no measurable difference to a capture's CPU time; it is the exact protocol, and costs nothing.)
public final class Condition: @unchecked Sendable {  // a pthread mutex and its condition variables: made for threads
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let conds: UnsafeMutablePointer<pthread_cond_t>
    private let channels: Int

    public init(channels: Int = 1) {
        self.channels = max(1, channels)
        conds = .allocate(capacity: self.channels)
        pthread_mutex_init(mutex, nil)
        for c in 0..<self.channels { pthread_cond_init(conds + c, nil) }
    }

    deinit {
        for c in 0..<channels { pthread_cond_destroy(conds + c) }
        pthread_mutex_destroy(mutex)
        conds.deallocate()
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }
    /// Waits for a signal on `channel`; the lock must be held, and is held again on return.
    public func wait(on channel: Int = 0) { pthread_cond_wait(conds + channel, mutex) }

    /// Waits at most `seconds` (with the lock held, like `wait`); false when the time ran out.
    @discardableResult
    public func wait(seconds: Double, on channel: Int = 0) -> Bool {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let ns = Int(ts.tv_nsec) + Int((seconds - seconds.rounded(.down)) * 1e9)
        ts.tv_sec += Int(seconds) + ns / 1_000_000_000
        ts.tv_nsec = ns % 1_000_000_000
        return pthread_cond_timedwait(conds + channel, mutex, &ts) == 0
    }
    /// Wakes one waiter on `channel`.
    public func signal(_ channel: Int = 0) { pthread_cond_signal(conds + channel) }
    /// Wakes every waiter on every channel.
    public func broadcast() { for c in 0..<channels { pthread_cond_broadcast(conds + c) } }

    /// Runs `body` holding the lock, then wakes the waiter on each of `channels`.
    @discardableResult
    public func update<T>(waking channels: Int..., then body: () throws -> T) rethrows -> T {
        lock()
        defer {
            for c in channels { signal(c) }
            unlock()
        }
        return try body()
    }

    /// Runs `body` holding the lock, then wakes every waiter: the one way pipeline stages publish state.
    @discardableResult
    public func publish<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer {
            broadcast()
            unlock()
        }
        return try body()
    }

    /// Runs `body` holding the lock.
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

public enum Threads {
    private final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(_ name: String, _ body: @escaping @Sendable () -> Void) {
            self.name = String(decoding: name.utf8.prefix(15), as: UTF8.self)  // the kernel keeps 15 bytes
            self.body = body
        }
    }

    /// Starts a detached thread named `name` (as `top -H` shows it) running `body`.
    public static func spawn(_ name: String, stackSize: Int = 1 << 20, _ body: @escaping @Sendable () -> Void) {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, max(stackSize, Int(PTHREAD_STACK_MIN)))
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        let start = Unmanaged.passRetained(Start(name, body)).toOpaque()
        var thread = pthread_t()
        let r = pthread_create(&thread, &attributes, { raw in
            let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
            strata_name_thread(start.name)
            start.body()
            return nil
        }, start)
        precondition(r == 0, "cannot start a thread: \(String(cString: strerror(r)))")
    }
}

/// Threads started for one run and joined before the buffers they share are freed: blocking io_uring waits and
/// CPU-bound compression do not belong in Swift concurrency's cooperative pool (they would starve it).
public final class ThreadGroup: @unchecked Sendable {  // `running` is guarded by `condition`
    public init() {}

    private let condition = Condition()
    private var running = 0

    /// Starts `body` on a thread of the group. The thread lets go of `body`, and so of all it captured, before it
    /// counts itself ended: what a run's stages held (a chain and its writer's lock) is gone when `join` returns.
    public func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) {
        condition.lock()
        running += 1
        condition.unlock()
        let once = RunOnce(body)
        Threads.spawn(name) { [self] in
            once.run()
            ThreadTimes.threadEnded(name)
            condition.publish { running -= 1 }
        }
    }

    /// A body run once and let go as it ends.
    private final class RunOnce: @unchecked Sendable {  // `body` is touched by the one thread that runs it
        private var body: (@Sendable () -> Void)?
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        func run() {
            guard let body = body.take() else { return }
            body()
        }
    }

    public func join() {
        condition.lock()
        while running > 0 { condition.wait() }
        condition.unlock()
    }
}
