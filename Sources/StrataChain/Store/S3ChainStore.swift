// A chain in an S3-compatible bucket (`s3://BUCKET/PREFIX`; docs/S3.md): the same contract as the local directory,
// kept with what object storage offers instead of a file system.
// - Publish-or-nothing: a new object is a multipart upload, invisible until completed. Its first part (16 MiB)
//   stays in memory until `publish`, so the header rewritten at offset 0 when an image is finished goes in with
//   it; the other parts go up as they fill, a few at a time, so memory stays bounded however large the image.
// - The commit point: the manifest is replaced with a conditional PUT, `If-Match` on the ETag this run read
//   (`If-None-Match: *` for a new chain): of two writers, one commits, the other gets "changed".
// - One writer: a lease object (`.strata-lease`) created with `If-None-Match: *`, renewed before it expires, taken
//   over with `If-Match` on the ETag of an expired one (so two can never both take it), deleted when released.
//   A writer whose lease was taken over (it stalled past the expiry) refuses to commit.
// - Leftovers: multipart uploads a killed writer left are aborted by the next writer, and objects the manifest
//   does not name are deleted like a directory's.
// - Reads: ranged GETs, many at once through `readQueue` (a pool of threads, as the pread engine).
import StrataFormat
import StrataIO
import StrataS3

#if canImport(Glibc)
import Glibc
#endif

final class S3ChainStore: ChainStore {
    let location: String
    let place: S3Location
    let client: S3Client
    /// The manifest this run last read or wrote, and its ETag: what a commit is conditioned on.
    private var manifestSeen: (bytes: [UInt8], etag: String)?
    private let lock = Condition()
    /// Open objects by the handle their reads carry through `readQueue`.
    fileprivate var open: [Int32: String] = [:]
    private var nextHandle: Int32 = 1
    private weak var lease: S3Lease?
    /// Whether `makeContainer` was called (a prefix exists once an object is under it).
    private var made = false
    /// Names this store removed (open refuses them, as a directory would).
    private var removedHere: Set<String> = []
    static let leaseName = ".strata-lease"
    /// What `remove` removed, and when: deleted for good by a writer once `removedGrace` has passed, so that a
    /// reader that opened an object before a merge removed it reads it to the end, as from a directory.
    static let removedName = ".strata-removed"
    static let removedGrace: UInt64 = 6 * 3600

    /// Connects to the store the environment names and checks the bucket: wrong credentials, an unreachable
    /// store or a missing bucket fail here, before anything else.
    init(location: String) throws {
        guard let place = S3Location(location) else {
            throw ChainError.invalidOption("\(location) is not a chain in a bucket: write s3://BUCKET/PREFIX (a bucket name and a path in it)")
        }
        self.location = location
        self.place = place
        let config: S3Config
        do { config = try S3Config.fromEnvironment() } catch { throw Self.failure(error, location) }
        client = S3Client(config)
        do {
            guard try client.bucketExists(place.bucket) else {
                throw ChainError.storeRefused(location: location, reason: "bucket \(place.bucket) does not exist at \(config.endpoint)", todo: "create it first")
            }
        } catch { throw Self.failure(error, location) }
    }

    /// A store's answer as a chain error: credentials refused, the store down, or what it said.
    static func failure(_ error: Error, _ location: String) -> Error {
        guard let e = error as? S3Error else { return error }
        switch e {
        case .configuration(let m): return ChainError.storeRefused(location: location, reason: m, todo: "set the AWS variables (strata --help lists them)")
        case .unreachable(let m): return ChainError.storeUnreachable(location: location, reason: m)
        case .status(let s, let code, _, _) where s == 403 || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch":
            return ChainError.storeRefused(location: location, reason: "the store refused these credentials (\(code.isEmpty ? "HTTP \(s)" : code))", todo: "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        case .status(let s, _, _, _) where s >= 500: return ChainError.storeUnreachable(location: location, reason: e.description)
        case .status:
            if e.isNotFound { return IOError("read", path: location, errno: ENOENT) }
            return ChainError.storeRefused(location: location, reason: e.description, todo: "check the bucket's permissions")
        }
    }

    private func key(_ name: String) -> String { place.prefix + name }

    private func run<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw Self.failure(error, location) }
    }

    func containerExists() -> Bool { made || ((try? run { try !client.list(bucket: place.bucket, prefix: place.prefix).isEmpty }) ?? false) }

    /// Nothing to make in the bucket: a prefix exists once an object is under it.
    func makeContainer() throws { made = true }

    func list() throws -> [String] {
        let gone = Set(try removed().map(\.name))
        return try run { try client.list(bucket: place.bucket, prefix: place.prefix) }.map { String($0.key.dropFirst(place.prefix.count)) }
            .filter { $0 != Self.leaseName && $0 != Self.removedName && !$0.contains("/") && !gone.contains($0) }
    }

    /// The objects `remove` removed and not yet deleted, with when.
    private func removed() throws -> [(name: String, at: UInt64)] {
        let bytes: [UInt8]
        do { bytes = try client.get(bucket: place.bucket, key: key(Self.removedName)).bytes } catch let e as S3Error where e.isNotFound {
            return []
        } catch { throw Self.failure(error, location) }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count == 2, let at = UInt64(f[0]) else { return nil }
            return (String(f[1]), at)
        }
    }

    private func writeRemoved(_ list: [(name: String, at: UInt64)]) throws {
        if list.isEmpty {
            try run { try client.delete(bucket: place.bucket, key: key(Self.removedName)) }
            return
        }
        let bytes = Array(list.map { "\($0.at) \($0.name)\n" }.joined().utf8)
        try run { try bytes.withUnsafeBytes { try client.put(bucket: place.bucket, key: key(Self.removedName), $0) } }
    }

    /// Unfinished objects are multipart uploads, which no listing shows: none is a name.
    func isTemporary(_ name: String) -> Bool { false }

    func open(_ name: String) throws -> StoredObject {
        guard let head = try run({ try client.head(bucket: place.bucket, key: key(name)) }), lock.withLock({ !removedHere.contains(name) }) else {
            throw IOError("open", path: "\(location)/\(name)", errno: ENOENT)
        }
        let handle = lock.withLock { () -> Int32 in
            let h = nextHandle
            nextHandle += 1
            open[h] = key(name)
            return h
        }
        return S3Object(store: self, name: name, key: key(name), size: head.size, handle: handle)
    }

    fileprivate func close(_ handle: Int32) { lock.withLock { _ = open.removeValue(forKey: handle) } }
    fileprivate func key(ofHandle h: Int32) -> String? { lock.withLock { open[h] } }

    func readSmall(_ name: String, limit: Int) throws -> [UInt8] {
        let got: (bytes: [UInt8], etag: String)
        do { got = try client.get(bucket: place.bucket, key: key(name)) } catch let e as S3Error where e.isNotFound {
            throw IOError("read", path: "\(location)/\(name)", errno: ENOENT)
        } catch { throw Self.failure(error, location) }
        guard got.bytes.count <= limit else { throw IOError("read", path: "\(location)/\(name)", errno: EFBIG) }
        if name == ChainManifest.fileName { lock.withLock { manifestSeen = got } }
        return got.bytes
    }

    func create(_ name: String) throws -> NewObject { S3NewObject(store: self, name: name, key: key(name)) }

    /// Every completed upload and PUT is durable when it answers.
    func syncPublished() throws {}

    func commitManifest(_ bytes: [UInt8], expected: [UInt8]?) throws {
        if let lease, lease.lost { throw ChainError.chainChanged(location) }
        let condition: S3Client.Condition
        if let expected {
            guard let seen = lock.withLock({ manifestSeen }), seen.bytes == expected else { throw ChainError.chainChanged(location) }
            condition = .etag(seen.etag)
        } else {
            condition = .absent
        }
        do {
            let etag = try bytes.withUnsafeBytes { try client.put(bucket: place.bucket, key: key(ChainManifest.fileName), $0, condition: condition) }
            lock.withLock { manifestSeen = (bytes, etag) }
        } catch let e as S3Error where e.isPreconditionFailed {
            throw ChainError.chainChanged(location)
        } catch { throw Self.failure(error, location) }
    }

    /// Removes an object from the chain's view at once and from the bucket after `removedGrace` (only writers
    /// remove, under the lease, so the record needs no condition).
    func remove(_ name: String) throws {
        var list = try removed()
        guard lock.withLock({ !removedHere.contains(name) }), !list.contains(where: { $0.name == name }),
            try run({ try client.head(bucket: place.bucket, key: key(name)) }) != nil
        else { throw IOError("remove", path: "\(location)/\(name)", errno: ENOENT) }
        list.append((name, UInt64(time(nil))))
        try writeRemoved(list)
        lock.withLock { _ = removedHere.insert(name) }
    }

    /// A name published anew is no longer removed (a point number `repair --drop-damaged` gave back, say).
    fileprivate func published(_ name: String) throws {
        lock.withLock { _ = removedHere.remove(name) }
        let list = try removed()
        if list.contains(where: { $0.name == name }) { try writeRemoved(list.filter { $0.name != name }) }
    }

    /// Deletes for good what was removed more than `removedGrace` ago.
    private func purgeRemoved() throws {
        let list = try removed()
        let now = UInt64(time(nil))
        let due = list.filter { $0.at + Self.removedGrace <= now }
        guard !due.isEmpty else { return }
        for r in due { try run { try client.delete(bucket: place.bucket, key: key(r.name)) } }
        try writeRemoved(list.filter { $0.at + Self.removedGrace > now })
    }

    func lockWriter() throws -> WriterLease? {
        guard let lease = try run({ try S3Lease.take(client, bucket: place.bucket, key: key(Self.leaseName)) }) else { return nil }
        self.lease = lease
        // Uploads a killed writer left: only the lease holder writes, so every unfinished upload is a leftover.
        for u in (try? client.unfinishedUploads(bucket: place.bucket, prefix: place.prefix)) ?? [] {
            try? client.abortMultipart(bucket: place.bucket, key: u.key, uploadID: u.uploadID)
        }
        try? purgeRemoved()
        return lease
    }

    func freeSpace() -> UInt64? { nil }

    func readQueue(engine: IOEngineChoice, depth: Int) throws -> (queue: IOQueue, note: String?) {
        (S3ReadQueue(store: self, threads: max(2, min(depth, 32))), nil)
    }

    /// A read for `readQueue` and `S3Object.read`: bytes of an object by key, errors as negated errno.
    fileprivate func read(key: String, into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        do { return try client.get(bucket: place.bucket, key: key, into: buffer, count: count, at: offset) } catch let e as S3Error where e.isNotFound {
            throw IOError("read", path: "s3://\(place.bucket)/\(key)", errno: ENOENT)
        } catch { throw Self.failure(error, location) }
    }
}

/// A published object: reads are ranged GETs. (S3 deletes at once: a reader whose object a merge removed gets
/// "missing", and the chain's readers re-read the manifest then.)
final class S3Object: StoredObject {
    let name: String
    let size: UInt64
    let handle: Int32
    private let key: String
    private let store: S3ChainStore

    fileprivate init(store: S3ChainStore, name: String, key: String, size: UInt64, handle: Int32) {
        (self.store, self.name, self.key, self.size, self.handle) = (store, name, key, size, handle)
    }

    deinit { store.close(handle) }

    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        guard offset < size else { return 0 }
        return try store.read(key: key, into: buffer, count: min(count, Int(size - offset)), at: offset)
    }
}

/// Reads by handle on a pool of threads, each a ranged GET: the pread engine's shape over HTTP.
final class S3ReadQueue: ThreadPoolQueue {
    init(store: S3ChainStore, threads: Int) {
        super.init(engineName: "s3", threads: threads) { r in
            guard r.op == .read, let key = store.key(ofHandle: r.fd) else { return -Int(EBADF) }
            do { return try store.read(key: key, into: r.buffer, count: r.length, at: r.offset) } catch let e as IOError {
                return -Int(e.errno)
            } catch { return -Int(EIO) }
        }
    }
}

/// An object being written: parts of `partSize` bytes filled by writes at any offset, each uploaded once full
/// (part 1 kept until `publish`), a few uploads in flight; a small object is one PUT.
final class S3NewObject: NewObject {
    let name: String
    private let key: String
    private let store: S3ChainStore
    static let partSize = 16 << 20
    static let uploadsInFlight = 3
    private let lock = Condition()
    /// Parts in memory: their bytes, and the ranges written so far (a header is written twice: counted once).
    private var parts: [Int: Part] = [:]
    private struct Part {
        var buffer: UnsafeMutableRawPointer
        var written: [Range<Int>] = []
        var filled: Int { written.reduce(0) { $0 + $1.count } }

        mutating func add(_ r: Range<Int>) {
            var merged = r
            written.removeAll { w in
                guard w.overlaps(merged) || w.upperBound == merged.lowerBound || merged.upperBound == w.lowerBound else { return false }
                merged = min(w.lowerBound, merged.lowerBound)..<max(w.upperBound, merged.upperBound)
                return true
            }
            written.append(merged)
        }
    }
    private var etags: [Int: String] = [:]
    private var uploading = 0
    private var end: UInt64 = 0
    private var uploadID: String?
    private var failure: Error?
    private var finished = false

    fileprivate init(store: S3ChainStore, name: String, key: String) { (self.store, self.name, self.key) = (store, name, key) }

    deinit { for p in parts.values { p.buffer.deallocate() } }

    func appender(start: UInt64, engine: IOEngineChoice) throws -> ObjectAppender { S3Appender(object: self, start: start) }

    func write(_ bytes: UnsafeRawPointer, count: Int, at offset: UInt64) throws {
        var done = 0
        while done < count {
            let at = offset + UInt64(done)
            let part = Int(at / UInt64(Self.partSize)), within = Int(at % UInt64(Self.partSize))
            let n = min(count - done, Self.partSize - within)
            let full: Bool = try lock.withLock {
                if let failure { throw failure }
                guard etags[part] == nil else { preconditionFailure("a write into a part already uploaded") }
                var p = parts[part] ?? Part(buffer: UnsafeMutableRawPointer.allocate(byteCount: Self.partSize, alignment: 64))
                (p.buffer + within).copyMemory(from: bytes + done, byteCount: n)
                p.add(within..<(within + n))
                parts[part] = p
                end = max(end, at + UInt64(n))
                return p.filled == Self.partSize && part > 0
            }
            if full { try upload(part) }
            done += n
        }
    }

    /// Uploads a full part on a thread of its own, waiting while too many are in flight.
    private func upload(_ part: Int) throws {
        let id = try uploadIDStarting()
        let p: Part = try lock.withLock {
            while uploading >= Self.uploadsInFlight && failure == nil { lock.wait() }
            if let failure { throw failure }
            uploading += 1
            return parts[part]!
        }
        Threads.spawn("strata-s3-upload") { [self] in
            var result: Result<String, Error>
            do {
                result = .success(try store.client.uploadPart(
                    bucket: store.place.bucket, key: key, uploadID: id, number: part + 1, UnsafeRawBufferPointer(start: p.buffer, count: Self.partSize)))
            } catch { result = .failure(S3ChainStore.failure(error, store.location)) }
            lock.withLock {
                switch result {
                case .success(let etag):
                    etags[part] = etag
                    parts.removeValue(forKey: part)?.buffer.deallocate()
                case .failure(let e): if failure == nil { failure = e }
                }
                uploading -= 1
                lock.broadcast()
            }
        }
    }

    private func uploadIDStarting() throws -> String {
        if let id = lock.withLock({ uploadID }) { return id }
        let id = try store.client.startMultipart(bucket: store.place.bucket, key: key)
        lock.withLock { uploadID = id }
        return id
    }

    /// Waits for every upload in flight; throws the first failure.
    fileprivate func drain() throws {
        try lock.withLock {
            while uploading > 0 { lock.wait() }
            if let failure { throw failure }
        }
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        try lock.withLock {
            let part = Int(offset / UInt64(Self.partSize)), within = Int(offset % UInt64(Self.partSize))
            guard let p = parts[part], within + count <= Self.partSize else {
                throw IOError("read back", path: "\(store.location)/\(name)", errno: EINVAL)
            }
            let n = Int(min(UInt64(count), end - offset))
            buffer.copyMemory(from: p.buffer + within, byteCount: n)
            return n
        }
    }

    func publish() throws {
        try drain()
        let (last, size) = lock.withLock { (Int((end + UInt64(Self.partSize) - 1) / UInt64(Self.partSize)) - 1, end) }
        if lock.withLock({ uploadID == nil }) && last <= 0 {
            // One part: a plain PUT of its bytes.
            let p = lock.withLock { parts[0] }
            try store.client.put(bucket: store.place.bucket, key: key, UnsafeRawBufferPointer(start: p?.buffer, count: Int(size)))
        } else {
            let id = try uploadIDStarting()
            for part in 0...last where lock.withLock({ etags[part] == nil }) {
                let (p, length) = try lock.withLock { () -> (Part, Int) in
                    let length = part == last ? Int(end - UInt64(part) * UInt64(Self.partSize)) : Self.partSize
                    guard let p = parts[part], p.filled == length else {
                        throw IOError("write", path: "\(store.location)/\(name)", errno: EIO)  // a hole never written: a bug
                    }
                    return (p, length)
                }
                let etag = try store.client.uploadPart(
                    bucket: store.place.bucket, key: key, uploadID: id, number: part + 1, UnsafeRawBufferPointer(start: p.buffer, count: length))
                lock.withLock { etags[part] = etag }
            }
            try store.client.completeMultipart(bucket: store.place.bucket, key: key, uploadID: id, parts: (0...last).map { part in lock.withLock { etags[part]! } })
        }
        lock.withLock {
            finished = true
            for p in parts.values { p.buffer.deallocate() }
            parts = [:]
        }
        try store.published(name)
    }

    func abandon() {
        try? drain()
        if let id = lock.withLock({ uploadID }), !lock.withLock({ finished }) {
            try? store.client.abortMultipart(bucket: store.place.bucket, key: key, uploadID: id)
        }
    }
}

/// Appends to an `S3NewObject` at a moving offset; `skip` leaves room that `write(at:)` fills later.
final class S3Appender: ObjectAppender {
    private let object: S3NewObject
    private(set) var offset: UInt64

    fileprivate init(object: S3NewObject, start: UInt64) { (self.object, offset) = (object, start) }

    func append(_ bytes: UnsafeRawPointer, count: Int) throws {
        try object.write(bytes, count: count, at: offset)
        offset += UInt64(count)
    }

    func skip(_ count: UInt64) throws { offset += count }

    func finish() throws { try object.drain() }
}

/// The writer's lease: an object only one writer can create or take over, renewed while held.
final class S3Lease: WriterLease {
    static let seconds: UInt64 = 300
    private let client: S3Client
    private let bucket: String
    private let key: String
    /// Shared with the renewing thread, which holds the lease only weakly (so that dropping it releases it).
    private final class State {
        let lock = Condition()
        var etag: String
        var released = false
        var lost = false
        init(etag: String) { self.etag = etag }
    }
    private let state: State
    var lost: Bool { state.lock.withLock { state.lost } }

    private init(client: S3Client, bucket: String, key: String, etag: String) {
        (self.client, self.bucket, self.key) = (client, bucket, key)
        let state = State(etag: etag)
        self.state = state
        Threads.spawn("strata-s3-lease") { [weak self] in
            while true {
                let stop = state.lock.withLock { () -> Bool in
                    if !state.released { state.lock.wait(seconds: Double(Self.seconds / 5)) }
                    return state.released
                }
                guard !stop, let lease = self else { return }
                lease.renew()
            }
        }
    }

    deinit { release() }

    private static func body(expires: UInt64) -> [UInt8] {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, 255)
        return Array("strata-lease 1\nholder \(String(cString: host)) pid \(getpid())\nexpires \(expires)\n".utf8)
    }

    private static func now() -> UInt64 { UInt64(time(nil)) }

    /// The lease, or nil when another writer holds one that has not expired.
    static func take(_ client: S3Client, bucket: String, key: String) throws -> S3Lease? {
        let mine = body(expires: now() + seconds)
        for _ in 0..<3 {
            do {
                let etag = try mine.withUnsafeBytes { try client.put(bucket: bucket, key: key, $0, condition: .absent) }
                return S3Lease(client: client, bucket: bucket, key: key, etag: etag)
            } catch let e as S3Error where e.isPreconditionFailed {}
            // Held: take it over only if it expired, and only if it is still that one (If-Match on its ETag).
            guard let (bytes, etag) = try? client.get(bucket: bucket, key: key) else { continue }
            let text = String(decoding: bytes, as: UTF8.self)
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("expires ") }),
                let expires = UInt64(line.dropFirst(8)), expires < now()
            else { return nil }
            do {
                let newTag = try mine.withUnsafeBytes { try client.put(bucket: bucket, key: key, $0, condition: .etag(etag)) }
                return S3Lease(client: client, bucket: bucket, key: key, etag: newTag)
            } catch let e as S3Error where e.isPreconditionFailed {}
        }
        return nil
    }

    private func renew() {
        let current = state.lock.withLock { state.etag }
        let mine = Self.body(expires: Self.now() + Self.seconds)
        do {
            let newTag = try mine.withUnsafeBytes { try client.put(bucket: bucket, key: key, $0, condition: .etag(current)) }
            state.lock.withLock { state.etag = newTag }
        } catch let e as S3Error where e.isPreconditionFailed {
            state.lock.withLock { state.lost = true }
        } catch {}  // the store is down for a moment: the next renewal tries again
    }

    private func release() {
        let wasHeld = state.lock.withLock { () -> Bool in
            defer {
                state.released = true
                state.lock.broadcast()
            }
            return !state.released && !state.lost
        }
        if wasHeld { try? client.delete(bucket: bucket, key: key) }
    }
}
