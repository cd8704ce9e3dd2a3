// A bucket's published objects and their reads: each read a ranged GET, many at once on a pool of threads
// (the pread engine's shape over HTTP), failures as the store's errors.
import StrataIO

/// A published object: reads are ranged GETs. (A removed object stays in the bucket for `removedGrace`, so a
/// reader that opened it before a merge removed it reads it to the end.)
final class S3Object: StoredObject {
    let name: String
    let size: UInt64
    let key: String
    let store: S3ChainStore

    init(store: S3ChainStore, name: String, key: String, size: UInt64) {
        (self.store, self.name, self.key, self.size) = (store, name, key, size)
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        guard offset < size else { return 0 }
        return try store.read(key: key, into: buffer, count: min(count, Int(size - offset)), at: offset)
    }
}

/// A bucket's reads: ranged GETs on a pool of threads, never direct.
final class S3ObjectReads: ObjectReads {
    private let pool: BlockingReads

    init(store: S3ChainStore, threads: Int) {
        pool = BlockingReads(name: "s3", threads: threads) { object, buffer, count, offset in
            guard let object = object as? S3Object, object === object.store.lookup(object) else {
                preconditionFailure("a bucket's reads take its own objects")
            }
            return try object.read(into: buffer, count: count, at: offset)
        }
    }

    var engineName: String { "s3" }
    var inFlight: Int { pool.inFlight }

    func start(_ object: StoredObject, into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64, tag: Int, direct: Bool) -> Int? {
        pool.start(object, into: buffer, count: count, at: offset, tag: tag)
        return nil
    }

    func next() -> (tag: Int, bytes: Int, error: Error?) { pool.next() }
}

extension S3ChainStore {
    /// `object` itself, for the check that a read is of this store's objects.
    func lookup(_ object: S3Object) -> S3Object? { object.store === self ? object : nil }
}

/// Reads carried out by blocking calls on a pool of threads, completed in any order: a store whose reads are
/// requests over a network. The workers wait on one channel (a request wakes one of them) and the reader on
/// the other (a completion wakes it alone). The threads hold only the pool's shared state, not the pool, so
/// dropping the pool stops them (each ends once its request in hand is done).
final class BlockingReads {
    typealias Perform = @Sendable (StoredObject, UnsafeMutableRawPointer, Int, UInt64) throws -> Int

    private final class State: @unchecked Sendable {  // every field is guarded by `lock`
        let lock = Condition(channels: 2)
        static let workers = 0, reader = 1
        var requests: [(tag: Int, object: StoredObject, buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64)] = []
        var head = 0
        var done: [(tag: Int, bytes: Int, error: Error?)] = []
        var doneHead = 0
        var stopping = false
    }

    private let state = State()
    private(set) var inFlight = 0

    init(name: String, threads: Int, perform: @escaping Perform) {
        let state = self.state
        for i in 0..<max(1, min(threads, 64)) {
            Threads.spawn("strata-\(name)-\(i)", stackSize: 512 << 10) {
                while true {
                    state.lock.lock()
                    while state.head == state.requests.count && !state.stopping { state.lock.wait(on: State.workers) }
                    if state.stopping {  // requests still queued are dropped: their buffers may be gone with the owner
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
                    let outcome: (tag: Int, bytes: Int, error: Error?)
                    do { outcome = (r.tag, try perform(r.object, r.buffer, r.count, r.offset), nil) } catch { outcome = (r.tag, 0, error) }
                    state.lock.update(waking: State.reader) { state.done.append(outcome) }
                }
            }
        }
    }

    deinit { state.lock.publish { state.stopping = true } }

    func start(_ object: StoredObject, into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64, tag: Int) {
        inFlight += 1
        state.lock.update(waking: State.workers) { state.requests.append((tag, object, buffer, count, offset)) }
    }

    func next() -> (tag: Int, bytes: Int, error: Error?) {
        precondition(inFlight > 0, "waiting with nothing in flight")
        inFlight -= 1
        let state = self.state
        return state.lock.withLock {
            while state.doneHead == state.done.count { state.lock.wait(on: State.reader) }
            let outcome = state.done[state.doneHead]
            state.doneHead += 1
            if state.doneHead == state.done.count {
                state.done.removeAll(keepingCapacity: true)
                state.doneHead = 0
            }
            return outcome
        }
    }
}
