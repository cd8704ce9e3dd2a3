// A chain in an S3-compatible bucket (`s3://BUCKET/PREFIX`; docs/S3.md): the same contract as the local directory,
// kept with what object storage offers instead of a file system.
// - Publish-or-nothing: a new object is a multipart upload, invisible until completed. Its first part (8 MiB)
//   stays in memory until `publish`, so the header rewritten at offset 0 when an image is finished goes in with
//   it; the other parts go up as they fill, a few at a time, so memory stays bounded however large the image.
// - The commit point: the manifest is replaced with a conditional PUT, `If-Match` on the ETag this run read
//   (`If-None-Match: *` for a new chain): of two writers, one commits, the other gets "changed".
// - One writer: a lease object (`.strata-lease`) created with `If-None-Match: *`, renewed before it expires, taken
//   over with `If-Match` on the ETag of an expired one (so two can never both take it), deleted when released.
//   A writer whose lease was taken over (it stalled past the expiry) refuses to commit.
// - Leftovers: multipart uploads a killed writer left are aborted by the next writer, and objects the manifest
//   does not name are deleted like a directory's.
// - Reads: ranged GETs, many at once through `reads` (a pool of threads, as the pread engine).
// - Removal: an object `remove`s is gone from the chain's view at once and deleted from the bucket by a writer
//   once `removedGrace` (6 hours) has passed, so a reader that opened it before reads it to the end.
// The objects (S3Objects.swift), the part layout of a new one (S3NewObject.swift) and the lease (S3Lease.swift)
// each have a file of their own.
import NIOCore
import StrataFormat
import StrataIO
import StrataS3


final class S3ChainStore: ChainStore {
    let location: String
    let place: S3Location
    let client: S3Client
    /// The manifest this run last read or wrote, and its ETag: what a commit is conditioned on.
    private var manifestSeen: (bytes: [UInt8], etag: String)?
    private let options: StoreOptions
    private let lock = Condition()
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
    init(location: String, options: StoreOptions) throws {
        guard let place = S3Location(location) else {
            throw ChainError.invalidOption("\(location) is not a chain in a bucket: write s3://BUCKET/PREFIX (a bucket name and a path in it)")
        }
        self.location = location
        self.place = place
        self.options = options
        let config: S3Config
        do { config = try S3Config.fromEnvironment() } catch { throw Self.failure(error, location) }
        client = S3Client(config)
        do {
            guard try client.bucketExists(place.bucket) else {
                throw StoreError(.refused(todo: "create it first"), "open", location, reason: "bucket \(place.bucket) does not exist at \(config.endpoint)")
            }
        } catch { throw Self.failure(error, location) }
    }

    /// A store's answer as a store error: credentials refused, the store down, nothing there, or what it said.
    static func failure(_ error: Error, _ location: String, _ operation: String = "read") -> Error {
        guard let e = error as? S3Error else { return error }
        switch e {
        case .configuration(let m): return StoreError(.refused(todo: "set the AWS variables (strata --help lists them)"), operation, location, reason: m)
        case .unreachable(let m): return StoreError(.unreachable, operation, location, reason: m)
        case .status(let s, let code, _, _) where s == 403 || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch":
            return StoreError(
                .refused(todo: "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"), operation, location,
                reason: "the store refused these credentials (\(code.isEmpty ? "HTTP \(s)" : code))")
        case .status(let s, _, _, _) where s >= 500: return StoreError(.unreachable, operation, location, reason: e.description)
        case .status:
            if e.isNotFound { return StoreError.missing(operation, location) }
            return StoreError(.refused(todo: "check the bucket's permissions"), operation, location, reason: e.description)
        }
    }

    private func key(_ name: String) -> String { place.prefix + name }

    @discardableResult
    func run<T>(_ body: () throws -> T) throws -> T {
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
            throw StoreError.missing("open", "\(location)/\(name)")
        }
        return S3Object(store: self, name: name, key: key(name), size: head.size)
    }

    func readSmall(_ name: String, limit: Int) throws -> [UInt8] {
        let got: (bytes: [UInt8], etag: String)
        do { got = try client.get(bucket: place.bucket, key: key(name)) } catch let e as S3Error where e.isNotFound {
            throw StoreError.missing("read", "\(location)/\(name)")
        } catch { throw Self.failure(error, location) }
        guard got.bytes.count <= limit else {
            throw StoreError(.tooLarge, "read", "\(location)/\(name)", reason: "\(got.bytes.count) bytes, more than the \(limit) it may have")
        }
        if name == ChainManifest.fileName { lock.withLock { manifestSeen = got } }
        return got.bytes
    }

    func create(_ name: String, expectedSize: UInt64) throws -> NewObject {
        S3NewObject(store: self, name: name, key: key(name), expectedSize: expectedSize)
    }

    /// Every completed upload and PUT is durable when it answers.
    func syncPublished() throws {}

    func commitManifest(_ bytes: [UInt8], expected: [UInt8]?) throws {
        let changed = StoreError(.changed, "commit", location, reason: "another writer committed first")
        if let lease, lease.lost { throw changed }
        let condition: S3Client.Condition
        if let expected {
            guard let seen = lock.withLock({ manifestSeen }), seen.bytes == expected else { throw changed }
            condition = .etag(seen.etag)
        } else {
            condition = .absent
        }
        do {
            let etag = try bytes.withUnsafeBytes { try client.put(bucket: place.bucket, key: key(ChainManifest.fileName), $0, condition: condition) }
            lock.withLock { manifestSeen = (bytes, etag) }
        } catch let e as S3Error where e.isPreconditionFailed {
            throw changed
        } catch { throw Self.failure(error, location, "commit") }
    }

    /// Removes an object from the chain's view at once and from the bucket after `removedGrace` (only writers
    /// remove, under the lease, so the record needs no condition).
    func remove(_ name: String) throws {
        var list = try removed()
        guard lock.withLock({ !removedHere.contains(name) }), !list.contains(where: { $0.name == name }),
            try run({ try client.head(bucket: place.bucket, key: key(name)) }) != nil
        else { throw StoreError.missing("remove", "\(location)/\(name)") }
        list.append((name, Sys.wallClockSeconds))
        try writeRemoved(list)
        lock.withLock { _ = removedHere.insert(name) }
    }

    /// A name published anew is no longer removed (a point number `repair --drop-damaged` gave back, say).
    func published(_ name: String) throws {
        lock.withLock { _ = removedHere.remove(name) }
        let list = try removed()
        if list.contains(where: { $0.name == name }) { try writeRemoved(list.filter { $0.name != name }) }
    }

    /// Deletes for good what was removed more than `removedGrace` ago.
    private func purgeRemoved() throws {
        let list = try removed()
        let now = Sys.wallClockSeconds
        let due = list.filter { $0.at + Self.removedGrace <= now }
        guard !due.isEmpty else { return }
        for r in due { try run { try client.delete(bucket: place.bucket, key: key(r.name)) } }
        try writeRemoved(list.filter { $0.at + Self.removedGrace > now })
    }

    func lockWriter() throws -> WriterLease? {
        guard let lease = try run({ try S3Lease.take(client, bucket: place.bucket, key: key(Self.leaseName)) }) else { return nil }
        // The lease exists now: a store that honours If-None-Match refuses to create it again. One that does not
        // cannot keep two writers from both committing: refused, unless the user accepts that risk.
        if !options.allowUnconditionalWrites, try !run({ try lease.storeHonoursConditions() }) {
            throw StoreError(
                .refused(todo: "use a store that does, or pass --allow-unconditional-writes if only one writer at a time ever writes this chain"),
                "lock", location, reason: "it does not honour conditional writes (If-None-Match, If-Match), which keep two writers from both committing")
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

    func reads(engine: IOEngineChoice, depth: Int, tags: Int) throws -> (reads: ObjectReads, note: String?) {
        (S3ObjectReads(store: self, threads: max(2, min(depth, 32))), nil)
    }

    /// A read for `reads` and `S3Object.read`: bytes of an object by key.
    func read(key: String, into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        do { return try client.get(bucket: place.bucket, key: key, into: buffer, count: count, at: offset) } catch let e as S3Error where e.isNotFound {
            throw StoreError.missing("read", "s3://\(place.bucket)/\(key)")
        } catch { throw Self.failure(error, location) }
    }
}
