// One run of a pipeline, written once for every pipeline (capture, restore, merge, verify's frame scan, sync):
// its threads, the first error any stage hit, the stop that error brings, and the waits of its stages on the
// state they share. A stage waits for what it needs or for the run to stop, whichever comes first, and an I/O
// stage can go on finishing its transfers while it waits (what it waits for may be one of them). The lock is
// taken and given back here and nowhere else: a stage says what it waits for, not how to wait.
//
// Each stage waits on a channel of its own (a condition variable on the one mutex), so that it is woken only by
// changes that concern it (measured: with one condition for everything, 16 capture workers ran slower than 8 on
// a 16-core machine). The threads are dedicated (blocking io_uring waits and CPU-bound compression do not
// belong in Swift concurrency's cooperative pool).
import StrataIO

final class PipelineRun: @unchecked Sendable {  // `failure` is guarded by `state`; the group is its own
    /// The lock of the pipeline's shared state, with one channel per waiting stage.
    let state: Condition
    private var failure: Error?
    private let group = ThreadGroup()

    init(channels: Int = 1) { state = Condition(channels: channels) }

    /// The first error any stage hit; nil while all goes well.
    var error: Error? { state.withLock { failure } }

    /// Whether a stage has failed: every stage stops at its next wait.
    var failed: Bool { error != nil }

    /// Records `error` if it is the first, and wakes every stage to see it.
    func fail(_ error: Error) { state.publish { if failure == nil { failure = error } } }

    /// Starts a stage on a thread of its own (named as `top -H` shows it); an error it throws stops the run.
    func spawn(_ name: String, _ body: @escaping @Sendable () throws -> Void) {
        group.spawn(name) { [self] in
            do { try body() } catch { fail(error) }
        }
    }

    /// Waits for every stage started so far to end.
    func join() { group.join() }

    /// Runs `coordinator` on the calling thread, then `finish` (close the work queues, so workers drain and end),
    /// waits for every stage, and throws the first error any of them hit.
    func run(_ coordinator: () throws -> Void, finish: () -> Void = {}) throws {
        do { try coordinator() } catch { fail(error) }
        finish()
        group.join()
        if let failure = error { throw failure }
    }

    /// Waits on `channel` until `ready` (run holding the lock) gives a value, and returns it; throws the run's
    /// error if a stage fails first. While `pending` (also under the lock) says there is work to do meanwhile,
    /// the waiter does it without the lock instead of sleeping (`work`: an I/O stage finishing a transfer in
    /// flight, which may be what it waits for), then looks again.
    func wait<T>(
        on channel: Int = 0, for ready: () throws -> T?, pending: () -> Bool = { false }, work: () throws -> Void = {}
    ) throws -> T {
        state.lock()
        defer { state.unlock() }
        while true {
            if let failure { throw failure }
            if let value = try ready() { return value }
            if pending() {
                state.unlock()
                defer { state.lock() }
                try work()
            } else {
                state.wait(on: channel)
            }
        }
    }

    /// Waits on `channel` until `ready` holds (see `wait(on:for:)`).
    func wait(on channel: Int = 0, until ready: () throws -> Bool, pending: () -> Bool = { false }, work: () throws -> Void = {}) throws {
        try wait(on: channel, for: { try ready() ? () : nil }, pending: pending, work: work)
    }

    /// Changes shared state holding the lock, then wakes the stage waiting on each of `channels`.
    @discardableResult
    func update<T>(waking channels: Int..., then body: () throws -> T) rethrows -> T {
        state.lock()
        defer {
            for c in channels { state.signal(c) }
            state.unlock()
        }
        return try body()
    }

    /// Changes shared state holding the lock, then wakes every stage.
    @discardableResult
    func publish<T>(_ body: () throws -> T) rethrows -> T { try state.publish(body) }

    /// Reads or changes shared state holding the lock, waking nobody.
    @discardableResult
    func withLock<T>(_ body: () throws -> T) rethrows -> T { try state.withLock(body) }
}
