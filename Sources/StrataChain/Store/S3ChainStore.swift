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
import NIOCore
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

    @discardableResult
    fileprivate func run<T>(_ body: () throws -> T) throws -> T {
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

    func create(_ name: String, expectedSize: UInt64) throws -> NewObject {
        S3NewObject(store: self, name: name, key: key(name), expectedSize: expectedSize)
    }

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
        // The lease exists now: a store that honours If-None-Match refuses to create it again. One that does not
        // cannot keep two writers from both committing: refused, unless the user accepts that risk.
        if !ChainStores.allowUnconditionalWrites, try !run({ try lease.storeHonoursConditions() }) {
            throw ChainError.storeRefused(
                location: location, reason: "it does not honour conditional writes (If-None-Match, If-Match), which keep two writers from both committing",
                todo: "use a store that does, or pass --allow-unconditional-writes if only one writer at a time ever writes this chain")
        }
        self.lease = lease
        // Uploads a killed writer left: only the lease holder writes, so every unfinished upload is a leftover.
        for u in (try? client.unfinishedUploads(bucket: place.bucket, prefix: place.prefix)) ?? [] {
            try? client.abortMultipart(bucket: place.bucket, key: u.key, uploadID: u.uploadID)
        }
        try? purgeRemoved()
        return lease
    }

    func freeSpace() -> UInt64? { nil }

    var copiesInStore: Bool { true }
    var bytesDownloaded: UInt64? { client.bytesReceived }

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
    fileprivate let key: String
    fileprivate let store: S3ChainStore

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

/// An object being written: a multipart upload whose parts are filled by writes at any offset and each uploaded
/// once full, a few at a time, from the buffer it was filled in (a ByteBuffer that async-http-client sends as it
/// is); part 1, which holds the header an image writes last, waits for `publish`; an object of one part is one PUT.
/// Parts are numbered from 1 in the order of their bytes: those below `tailNumber` have fixed places (`fixed`: a
/// range copied inside the store, or a buffered part cut short before one), and from `tailStart` on they lie on a
/// grid of `partSize`. A range `copyInStore` takes becomes parts of its own, UploadPartCopy from the source object.
final class S3NewObject: NewObject {
    let name: String
    private let key: String
    private let store: S3ChainStore
    /// The first part (which holds the header, written last) stays in memory until `publish`: small.
    static let firstPart = 8 << 20
    /// The other parts: 16 MiB, or larger for an object expected past 10,000 parts of that (S3's limit).
    let partSize: Int
    /// S3's smallest part (all but the last).
    static let minimumPart = 5 << 20
    /// A range copied in the store goes as parts of at most this, several at once.
    static let copyPartSize = 64 << 20
    /// Parts uploading at once: 3 of 16 MiB, fewer of larger parts (memory: about (2 + this) x `partSize`).
    let uploadsInFlight: Int
    static let copiesInFlight = 6
    /// S3's most parts in one upload.
    static let mostParts = 10_000
    private let lock = Condition()

    private struct Place {
        var start: UInt64
        var length: Int
        /// A part copied in the store: the source object's key and where its bytes start.
        var copy: (key: String, from: UInt64)?
    }
    /// Parts 1...fixed.count.
    private var fixed = [Place(start: 0, length: S3NewObject.firstPart)]
    private var tailStart = UInt64(S3NewObject.firstPart)
    private var tailNumber: Int { fixed.count + 1 }

    /// Buffered parts in memory, by number: their bytes and the ranges written so far (a header is written twice:
    /// counted once).
    private var parts: [Int: Part] = [:]
    private struct Part {
        var buffer: ByteBuffer
        var written: [Range<Int>] = []
        var filled: Int { written.reduce(0) { $0 + $1.count } }

        mutating func put(_ bytes: UnsafeRawPointer, count: Int, at within: Int) {
            buffer.withVeryUnsafeMutableBytes { ($0.baseAddress! + within).copyMemory(from: bytes, byteCount: count) }
            var merged = within..<(within + count)
            written.removeAll { w in
                guard w.overlaps(merged) || w.upperBound == merged.lowerBound || merged.upperBound == w.lowerBound else { return false }
                merged = min(w.lowerBound, merged.lowerBound)..<max(w.upperBound, merged.upperBound)
                return true
            }
            written.append(merged)
        }

        /// The first `length` bytes, to send.
        func bytes(_ length: Int) -> ByteBuffer {
            var b = buffer
            b.moveWriterIndex(to: length)
            return b
        }
    }
    private var etags: [Int: String] = [:]
    private var uploading = 0
    private var copying = 0
    private var end: UInt64 = 0
    private var uploadID: String?
    private var failure: Error?
    private var finished = false

    /// `expectedSize`: the most the object may grow to (0: unknown, small), which sets the part size.
    fileprivate init(store: S3ChainStore, name: String, key: String, expectedSize: UInt64) {
        (self.store, self.name, self.key) = (store, name, key)
        let needed = ((expectedSize / UInt64(Self.mostParts - 500) + UInt64(1 << 20) - 1) >> 20) << 20  // in MiB
        partSize = Int(min(max(UInt64(16 << 20), needed), UInt64(5 << 30)))
        uploadsInFlight = max(1, min(3, (48 << 20) / partSize))
    }

    func appender(start: UInt64, engine: IOEngineChoice) throws -> ObjectAppender { S3Appender(object: self, start: start) }

    /// The part holding byte `at` (lock held): its number and place (a tail part's length is `partSize`).
    private func place(of at: UInt64) -> (number: Int, place: Place) {
        if at >= tailStart {
            let k = Int((at - tailStart) / UInt64(partSize))
            return (tailNumber + k, Place(start: tailStart + UInt64(k) * UInt64(partSize), length: partSize))
        }
        var lo = 0, hi = fixed.count - 1  // the last fixed part starting at or before `at`
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if fixed[mid].start <= at { lo = mid } else { hi = mid - 1 }
        }
        return (lo + 1, fixed[lo])
    }

    /// Part `number`'s place (lock held); the last tail part ends where the object does.
    private func place(number: Int) -> Place {
        if number < tailNumber { return fixed[number - 1] }
        let start = tailStart + UInt64(number - tailNumber) * UInt64(partSize)
        return Place(start: start, length: Int(min(UInt64(partSize), end - start)))
    }

    /// How many parts the object has now (lock held).
    private var partCount: Int {
        fixed.count + (end > tailStart ? Int((end - tailStart + UInt64(partSize) - 1) / UInt64(partSize)) : 0)
    }

    func write(_ bytes: UnsafeRawPointer, count: Int, at offset: UInt64) throws {
        var done = 0
        while done < count {
            let at = offset + UInt64(done)
            let (full, n): (Int?, Int) = try lock.withLock {
                if let failure { throw failure }
                let (number, p) = place(of: at)
                precondition(p.copy == nil && etags[number] == nil, "a write into a part already sent")
                guard number <= Self.mostParts else {
                    throw IOError("write", path: "\(store.location)/\(name)", errno: EFBIG)  // past S3's 10,000 parts of 16 MiB
                }
                let within = Int(at - p.start), n = min(count - done, p.length - within)
                if parts[number] == nil { parts[number] = Part(buffer: ByteBufferAllocator().buffer(capacity: p.length)) }
                parts[number]!.put(bytes + done, count: n, at: within)
                end = max(end, at + UInt64(n))
                return (parts[number]!.filled == p.length && number > 1 ? number : nil, n)
            }
            if let full { try send(full) }
            done += n
        }
    }

    /// Uploads a full part on a thread of its own, waiting while too many are in flight.
    private func send(_ number: Int) throws {
        let id = try uploadIDStarting()
        let bytes: ByteBuffer = try lock.withLock {
            while uploading >= uploadsInFlight && failure == nil { lock.wait() }
            if let failure { throw failure }
            uploading += 1
            return parts[number]!.bytes(place(number: number).length)
        }
        Threads.spawn("strata-s3-upload") { [self] in
            let result = Result { try store.client.uploadPart(bucket: store.place.bucket, key: key, uploadID: id, number: number, bytes) }
            sent(number, result) { uploading -= 1 }
        }
    }

    /// Copies a part inside the store on a thread of its own, waiting while too many copies are in flight.
    private func copy(_ number: Int, _ p: Place) throws {
        let id = try uploadIDStarting()
        try lock.withLock {
            while copying >= Self.copiesInFlight && failure == nil { lock.wait() }
            if let failure { throw failure }
            copying += 1
        }
        let source = p.copy!
        Threads.spawn("strata-s3-copy") { [self] in
            let result = Result {
                try store.client.uploadPartCopy(
                    bucket: store.place.bucket, key: key, uploadID: id, number: number, source: source.key,
                    range: source.from..<(source.from + UInt64(p.length)))
            }
            sent(number, result) { copying -= 1 }
        }
    }

    private func sent(_ number: Int, _ result: Result<String, Error>, _ done: () -> Void) {
        lock.withLock {
            switch result {
            case .success(let etag):
                etags[number] = etag
                parts.removeValue(forKey: number)
            case .failure(let e): if failure == nil { failure = S3ChainStore.failure(e, store.location) }
            }
            done()
            lock.broadcast()
        }
    }

    /// The upload's id, starting the upload at the first call (one at a time: two writers filling parts at once
    /// must not start two uploads).
    private func uploadIDStarting() throws -> String {
        try starting.withLock {
            if let id = lock.withLock({ uploadID }) { return id }
            let id = try store.run { try store.client.startMultipart(bucket: store.place.bucket, key: key) }
            lock.withLock { uploadID = id }
            return id
        }
    }
    private let starting = Condition()

    var smallestCopy: Int? { Self.minimumPart }

    /// A copy can start where the part it would follow is empty or at least `minimumPart` long.
    func bytesBeforeCopy(at offset: UInt64) -> UInt64 { lock.withLock { bytesBeforeCopyLocked(offset) } }

    func copyInStore(from source: StoredObject, at sourceOffset: UInt64, count: Int, to offset: UInt64) throws -> Bool {
        guard let source = source as? S3Object, source.store === store, count >= Self.minimumPart else { return false }
        let (first, pieces, completed): (Int, [Place], Int?) = try lock.withLock {
            if let failure { throw failure }
            guard end <= offset, bytesBeforeCopyLocked(offset) == 0 else { return (0, [], nil) }
            if offset < tailStart {
                // The first part, still held, ends where the copy starts (at least `minimumPart` in).
                fixed[0].length = Int(offset)
                tailStart = offset
            }
            // The tail's parts up to `offset` take their places (the last one cut short there).
            var s = tailStart
            while s < offset {
                let length = Int(min(UInt64(partSize), offset - s))
                fixed.append(Place(start: s, length: length))
                s += UInt64(length)
            }
            let before = fixed.count
            let n = (count + Self.copyPartSize - 1) / Self.copyPartSize
            var at = offset, from = sourceOffset
            var pieces: [Place] = []
            for k in 0..<n {
                let length = count / n + (k < count % n ? 1 : 0)
                pieces.append(Place(start: at, length: length, copy: (source.key, from)))
                at += UInt64(length)
                from += UInt64(length)
            }
            guard before + pieces.count < Self.mostParts else { throw IOError("write", path: "\(store.location)/\(name)", errno: EFBIG) }
            fixed += pieces
            tailStart = at
            end = at
            // The part cut short may be whole now.
            let completed = before > 1 && parts[before].map { $0.filled == fixed[before - 1].length } == true ? before : nil
            return (before + 1, pieces, completed)
        }
        guard !pieces.isEmpty else { return false }
        if let completed { try send(completed) }
        for (k, p) in pieces.enumerated() { try copy(first + k, p) }
        return true
    }

    /// Where a copy could start: after a part of at least `minimumPart`, the first part cut short there if need be.
    private func bytesBeforeCopyLocked(_ offset: UInt64) -> UInt64 {
        let least = UInt64(Self.minimumPart)
        if offset < tailStart {
            guard fixed.count == 1 else { return UInt64.max }  // inside a part already placed: never
            return offset >= least ? 0 : least - offset
        }
        let r = (offset - tailStart) % UInt64(partSize)
        return r == 0 || r >= least ? 0 : least - r
    }

    /// Waits for every upload and copy in flight; throws the first failure.
    fileprivate func drain() throws {
        try lock.withLock {
            while uploading > 0 || copying > 0 { lock.wait() }
            if let failure { throw failure }
        }
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        try lock.withLock {
            let (number, p) = place(of: offset)
            let within = Int(offset - p.start)
            guard let part = parts[number], within + count <= p.length else {
                throw IOError("read back", path: "\(store.location)/\(name)", errno: EINVAL)
            }
            let n = Int(min(UInt64(count), end - offset))
            part.buffer.withVeryUnsafeBytes { buffer.copyMemory(from: $0.baseAddress! + within, byteCount: n) }
            return n
        }
    }

    func publish() throws {
        try drain()
        let (count, single) = lock.withLock { (partCount, uploadID == nil && end <= UInt64(Self.firstPart) ? parts[1] : nil) }
        if let single {
            // One part: a plain PUT of its bytes.
            let length = lock.withLock { Int(end) }
            guard single.filled == length else { throw IOError("write", path: "\(store.location)/\(name)", errno: EIO) }
            try store.run { try store.client.put(bucket: store.place.bucket, key: key, single.bytes(length)) }
        } else {
            let id = try uploadIDStarting()
            for number in 1...max(count, 1) where lock.withLock({ etags[number] == nil }) {
                let bytes = try lock.withLock { () -> ByteBuffer in
                    let p = place(number: number)
                    guard p.copy == nil, let part = parts[number], part.filled == p.length else {
                        throw IOError("write", path: "\(store.location)/\(name)", errno: EIO)  // a hole never written: a bug
                    }
                    return part.bytes(p.length)
                }
                let etag = try store.run { try store.client.uploadPart(bucket: store.place.bucket, key: key, uploadID: id, number: number, bytes) }
                lock.withLock { etags[number] = etag }
            }
            let list = lock.withLock { (1...max(count, 1)).map { etags[$0]! } }
            try store.run { try store.client.completeMultipart(bucket: store.place.bucket, key: key, uploadID: id, parts: list) }
        }
        lock.withLock {
            finished = true
            parts = [:]
        }
        try store.published(name)
    }

    func abandon() {
        try? drain()
        if let id = lock.withLock({ uploadID }), !lock.withLock({ finished }) {
            try? store.client.abortMultipart(bucket: store.place.bucket, key: key, uploadID: id)
        }
        lock.withLock { parts = [:] }
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
        Array("strata-lease 1\nholder \(hostName()) pid \(getpid())\nexpires \(expires)\n".utf8)
    }

    private static func hostName() -> String {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, 255)
        return String(cString: host)
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
                let expires = UInt64(line.dropFirst(8)), expires < now() || heldByADeadProcessHere(text)
            else { return nil }
            do {
                let newTag = try mine.withUnsafeBytes { try client.put(bucket: bucket, key: key, $0, condition: .etag(etag)) }
                return S3Lease(client: client, bucket: bucket, key: key, etag: newTag)
            } catch let e as S3Error where e.isPreconditionFailed {}
        }
        return nil
    }

    /// Whether a lease names a process of this host that no longer runs (a writer killed, or failed while the
    /// store was down and could not delete its lease): taken over at once rather than after it expires. A pid
    /// reused since only makes this wait for the expiry.
    private static func heldByADeadProcessHere(_ text: String) -> Bool {
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("holder ") }) else { return false }
        let f = line.split(separator: " ")
        guard f.count == 4, f[1] == hostName(), f[2] == "pid", let pid = Int32(f[3]), pid > 0 else { return false }
        return kill(pid, 0) != 0 && errno == ESRCH
    }

    /// Whether the store refused to create the lease a second time (If-None-Match: a 412); a store that ignores
    /// the condition replaces it with the same bytes (the same ETag), and one that rejects the header says so.
    func storeHonoursConditions() throws -> Bool {
        let bytes = try client.get(bucket: bucket, key: key).bytes
        do {
            _ = try bytes.withUnsafeBytes { try client.put(bucket: bucket, key: key, $0, condition: .absent) }
            return false
        } catch let e as S3Error where e.isPreconditionFailed {
            return true
        } catch let e as S3Error {
            if case .status(let s, _, _, _) = e, s == 400 || s == 501 { return false }
            throw e
        }
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
