// State the pipelines' threads share beside their run (PipelineRun.swift): a work queue with a condition of its
// own, and per-slot values handed from one stage to the next. The threads and the lock primitive are StrataIO's
// Threads.swift.
import StrataIO

/// The jobs of a pool of worker threads, first in first out, under a condition of its own: posting a job wakes
/// one worker, and workers are not woken by every change of their pipeline's other shared state (measured: with
/// one condition for everything, 16 capture workers ran slower than 8 on a 16-core machine).
final class WorkQueue<Job>: @unchecked Sendable {  // every field is guarded by `condition`
    private let condition = Condition()
    private var items: [Job] = []
    private var head = 0
    private var closed = false

    func post(_ job: Job) {
        condition.lock()
        items.append(job)
        condition.signal()
        condition.unlock()
    }

    /// No more jobs: workers finish what is queued, then `next` returns nil.
    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    /// The next job, waiting for one; nil once the queue is closed and empty.
    func next() -> Job? {
        condition.lock()
        defer { condition.unlock() }
        while head == items.count && !closed { condition.wait() }
        guard head < items.count else { return nil }
        let job = items[head]
        head += 1
        if head > 4096 && head * 2 > items.count {  // keep the array from growing with the run
            items.removeFirst(head)
            head = 0
        }
        return job
    }
}

/// Fixed-size state indexed by a pipeline's slot or buffer number (which chunk a read slot holds, how many blocks
/// a frame buffer has...), written by one stage and read by another after a hand-off through the pipeline's
/// condition. A plain buffer rather than an Array: writing one element of an Array property checks and may touch
/// the array as a whole, which races with other threads reading other elements.
final class PerSlot<Element> {
    private let storage: UnsafeMutablePointer<Element>
    let count: Int

    init(repeating value: Element, count: Int) {
        self.count = count
        storage = .allocate(capacity: max(count, 1))
        storage.initialize(repeating: value, count: count)
    }

    deinit {
        storage.deinitialize(count: count)
        storage.deallocate()
    }

    subscript(i: Int) -> Element {
        get { storage[i] }
        set { storage[i] = newValue }
    }
}
