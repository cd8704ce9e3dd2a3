// The I/O engine's contract: submit reads and writes into caller-owned buffers, then wait for completions.
// Two engines implement it: io_uring (URingQueue.swift) and a pool of pread/pwrite threads for machines where
// io_uring is refused. Neither finishes short transfers: IOPump does that, in one place, for both.
#if canImport(Glibc)
import Glibc
#endif

public struct IORequest {
    public enum Op { case read, write }
    public var op: Op
    public var fd: Int32
    public var buffer: UnsafeMutableRawPointer
    public var length: Int
    public var offset: UInt64
    public var tag: UInt64
}

/// `result` is the byte count transferred, or a negated errno.
public struct IOCompletion {
    public var tag: UInt64
    public var result: Int

    public init(tag: UInt64, result: Int) { (self.tag, self.result) = (tag, result) }
}

public protocol IOQueue: AnyObject {
    /// "io_uring" or "pread", for messages and --json.
    var engineName: String { get }
    func submit(_ request: IORequest)
    /// Blocks until at least one submitted request completes; appends every completion available.
    func wait(into completions: inout [IOCompletion])
}

public enum IOEngineChoice: String, Sendable, CaseIterable {
    case auto, uring, pread
}

public enum IOEngine {
    /// Builds the requested engine. `auto` prefers io_uring and falls back to threads, returning a one-line
    /// note saying so; `uring` fails if the kernel refuses it.
    public static func make(_ choice: IOEngineChoice, depth: Int) throws -> (queue: IOQueue, note: String?) {
        switch choice {
        case .pread:
            return (PreadQueue(threads: depth), nil)
        case .uring:
            return (try URingQueue(depth: depth), nil)
        case .auto:
            do {
                return (try URingQueue(depth: depth), nil)
            } catch let e as IOError {
                return (PreadQueue(threads: depth), "io_uring unavailable (\(e.reason)); using a pool of pread threads")
            }
        }
    }
}

/// Blocking pread/pwrite on a pool of threads: QEMU's `aio=threads`, for kernels or sandboxes without io_uring.
public final class PreadQueue: ThreadPoolQueue {
    public init(threads count: Int) {
        super.init(engineName: "pread", threads: count) { r in
            switch r.op {
            case .read: return Sys.preadOnce(r.fd, r.buffer, r.length, r.offset)
            case .write: return Sys.pwriteOnce(r.fd, r.buffer, r.length, r.offset)
            }
        }
    }
}

/// Requests carried out by blocking calls on a pool of threads (the pread engine). `perform` returns what
/// `IOCompletion.result` says.
open class ThreadPoolQueue: IOQueue {
    public let engineName: String
    private let pool: BlockingPool<IORequest, IOCompletion>

    public init(engineName: String, threads count: Int, perform: @escaping @Sendable (IORequest) -> Int) {
        self.engineName = engineName
        pool = BlockingPool(name: engineName, threads: count) { r in IOCompletion(tag: r.tag, result: perform(r)) }
    }

    public func submit(_ request: IORequest) { pool.submit(request) }

    public func wait(into completions: inout [IOCompletion]) { pool.wait(into: &completions) }
}

/// Blocking calls on a pool of threads, their results taken in the order they finish: the pread engine, and a
/// store whose reads are requests over a network. The workers wait on one channel (a request wakes one of them)
/// and the taker on the other (a result wakes it alone). The threads hold only the pool's shared state, never
/// the pool, so dropping the pool stops them (each ends once its request in hand is done; requests still queued
/// are dropped, their buffers may be gone with the owner). They held the pool itself once, which kept every
/// pool and its threads alive for the life of the process.
public final class BlockingPool<Request, Result>: @unchecked Sendable {  // the queues are guarded by `state.lock`
    private final class State: @unchecked Sendable {  // every field is guarded by `lock`
        let lock = Condition(channels: 2)
        static var workers: Int { 0 }
        static var taker: Int { 1 }
        var requests: [Request] = []
        var head = 0
        var done: [Result] = []
        var stopping = false
    }
    private let state = State()

    public init(name: String, threads count: Int, perform: @escaping @Sendable (Request) -> Result) {
        let state = self.state
        for i in 0..<max(1, min(count, 64)) {
            Threads.spawn("strata-\(name)-\(i)", stackSize: 512 << 10) { BlockingPool.serve(state, perform) }
        }
    }

    deinit { state.lock.publish { state.stopping = true } }

    public func submit(_ request: Request) {
        state.lock.update(waking: State.workers) { state.requests.append(request) }
    }

    /// Waits for at least one result; appends every result there is.
    public func wait(into results: inout [Result]) {
        state.lock.lock()
        while state.done.isEmpty { state.lock.wait(on: State.taker) }
        results.append(contentsOf: state.done)
        state.done.removeAll(keepingCapacity: true)
        state.lock.unlock()
    }

    private static func serve(_ state: State, _ perform: (Request) -> Result) {
        while true {
            state.lock.lock()
            while state.head == state.requests.count && !state.stopping { state.lock.wait(on: State.workers) }
            if state.stopping {
                state.lock.unlock()
                return
            }
            let r = state.requests[state.head]
            state.head += 1
            if state.head == state.requests.count {
                state.requests.removeAll(keepingCapacity: true)
                state.head = 0
            }
            state.lock.unlock()
            let result = perform(r)
            state.lock.update(waking: State.taker) { state.done.append(result) }
        }
    }
}
