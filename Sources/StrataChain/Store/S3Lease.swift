// The writer's lease on a chain in a bucket: one object that only one writer can create or take over,
// renewed while held (docs/S3.md).
import StrataIO
import StrataS3

/// The writer's lease: an object only one writer can create or take over, renewed while held.
final class S3Lease: WriterLease, @unchecked Sendable {  // its mutable state is `State`, guarded by its lock; the client is Sendable
    static let seconds: UInt64 = 300
    private let client: S3Client
    private let bucket: String
    private let key: String
    /// Shared with the renewing thread, which holds the lease only weakly (so that dropping it releases it).
    private final class State: @unchecked Sendable {  // every field is guarded by `lock`
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
        Array("strata-lease 1\nholder \(Sys.hostName) pid \(Sys.processID)\nexpires \(expires)\n".utf8)
    }

    private static func now() -> UInt64 { Sys.wallClockSeconds }

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
        guard f.count == 4, f[1] == Sys.hostName, f[2] == "pid", let pid = Int32(f[3]), pid > 0 else { return false }
        return !Daemon.isRunning(pid)
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
