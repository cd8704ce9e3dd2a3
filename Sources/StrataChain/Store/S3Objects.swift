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
    private struct Read: @unchecked Sendable {  // the buffer is the caller's until the read's result is taken
        var tag: Int, object: S3Object, buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64
    }
    private let pool: BlockingPool<Read, (tag: Int, bytes: Int, error: Error?)>
    private var ready: [(tag: Int, bytes: Int, error: Error?)] = []
    private var readyHead = 0
    private(set) var inFlight = 0

    init(store: S3ChainStore, threads: Int) {
        pool = BlockingPool(name: "s3", threads: threads) { r in
            do { return (r.tag, try r.object.read(into: r.buffer, count: r.count, at: r.offset), nil) } catch { return (r.tag, 0, error) }
        }
    }

    var engineName: String { "s3" }

    func start(_ object: StoredObject, into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64, tag: Int, direct: Bool) -> Int? {
        guard let object = object as? S3Object else { preconditionFailure("a bucket's reads take its own objects") }
        inFlight += 1
        pool.submit(Read(tag: tag, object: object, buffer: buffer, count: count, offset: offset))
        return nil
    }

    func next() -> (tag: Int, bytes: Int, error: Error?) {
        precondition(inFlight > 0, "waiting with nothing in flight")
        if readyHead == ready.count {
            ready.removeAll(keepingCapacity: true)
            readyHead = 0
            pool.wait(into: &ready)
        }
        inFlight -= 1
        readyHead += 1
        return ready[readyHead - 1]
    }
}
