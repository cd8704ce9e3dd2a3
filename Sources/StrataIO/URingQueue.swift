// io_uring through liburing: the engine for reads and writes on every capture and restore. The ring is owned by
// exactly one thread (the pipeline's I/O thread). SQPOLL and IOPOLL stay off (SQPOLL spins one of few cores;
// IOPOLL hangs on loop and dm devices). A buffer region is registered where the kernel allows, so reads into
// it skip per-request page pinning; ENOMEM there (RLIMIT_MEMLOCK) just means plain reads.
#if canImport(Glibc)
import Glibc
#endif
internal import CURing

public final class URingQueue: IOQueue {
    public let engineName = "io_uring"
    private var ring = io_uring()
    private var registered: (base: UnsafeMutableRawPointer, length: Int)? = nil
    private var unsubmitted = 0
    private var cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    private let depth: Int

    public init(depth: Int) throws {
        self.depth = max(2, min(depth, 4096))
        // No SINGLE_ISSUER/DEFER_TASKRUN: the ring is made on the calling thread and driven by the pipeline's
        // I/O thread, and SINGLE_ISSUER binds it to its creator (submits then fail with EEXIST).
        var params = io_uring_params()
        let r = io_uring_queue_init_params(UInt32(self.depth), &ring, &params)
        guard r == 0 else { throw IOError("set up io_uring", path: "", errno: -r) }
        cqes = .allocate(capacity: self.depth)
    }

    /// Why io_uring cannot be used on this machine (the kernel or a sandbox refuses a ring: EPERM, ENOSYS,
    /// ENOMEM), or nil when it can. Tests named for io_uring skip only for such a reason and fail otherwise.
    public static func unavailableReason() -> String? {
        do { _ = try URingQueue(depth: 2) } catch let e as IOError { return "io_uring is unavailable here (\(e.reason))" } catch {
            return "io_uring is unavailable here (\(error))"
        }
        return nil
    }

    deinit {
        if registered != nil { io_uring_unregister_buffers(&ring) }
        io_uring_queue_exit(&ring)
        cqes.deallocate()
    }

    /// Registers one buffer region for fixed reads/writes. Returns false (and changes nothing) if refused.
    @discardableResult
    public func register(base: UnsafeMutableRawPointer, length: Int) -> Bool {
        guard registered == nil, length <= 1 << 30 else { return false }
        var iov = iovec(iov_base: base, iov_len: length)
        guard io_uring_register_buffers(&ring, &iov, 1) == 0 else { return false }
        registered = (base, length)
        return true
    }

    /// Drops the registration of the region at `base` (nothing happens for any other region). Call it before that
    /// memory is freed: while registered, a later buffer that happens to lie at the same address would be read
    /// and written as the old region's pinned pages, not its own (found when a restore's read-back reused the
    /// queue its target windows had registered).
    public func unregister(base: UnsafeMutableRawPointer) {
        guard let r = registered, r.base == base else { return }
        io_uring_unregister_buffers(&ring)
        registered = nil
    }

    public func submit(_ request: IORequest) {
        var sqe = io_uring_get_sqe(&ring)
        if sqe == nil {
            flush()
            sqe = io_uring_get_sqe(&ring)
        }
        guard let sqe else { preconditionFailure("io_uring submission queue stays full") }
        let fixed = registered.map { request.buffer >= $0.base && request.buffer + request.length <= $0.base + $0.length } ?? false
        switch (request.op, fixed) {
        case (.read, true): io_uring_prep_read_fixed(sqe, request.fd, request.buffer, UInt32(request.length), request.offset, 0)
        case (.read, false): io_uring_prep_read(sqe, request.fd, request.buffer, UInt32(request.length), request.offset)
        case (.write, true): io_uring_prep_write_fixed(sqe, request.fd, request.buffer, UInt32(request.length), request.offset, 0)
        case (.write, false): io_uring_prep_write(sqe, request.fd, request.buffer, UInt32(request.length), request.offset)
        }
        io_uring_sqe_set_data64(sqe, request.tag)
        unsubmitted += 1
    }

    private func flush() {
        guard unsubmitted > 0 else { return }
        var r: Int32
        repeat { r = io_uring_submit(&ring) } while r == -EINTR || r == -EAGAIN
        precondition(r >= 0, "io_uring_submit failed: \(String(cString: strerror(-r)))")
        unsubmitted = 0
    }

    public func wait(into completions: inout [IOCompletion]) {
        var r: Int32
        repeat { r = io_uring_submit_and_wait(&ring, 1) } while r == -EINTR || r == -EAGAIN || r == -EBUSY
        precondition(r >= 0, "io_uring_submit_and_wait failed: \(String(cString: strerror(-r)))")
        unsubmitted = 0
        let n = Int(io_uring_peek_batch_cqe(&ring, cqes, UInt32(depth)))
        for i in 0..<n {
            let c = cqes[i]!.pointee
            completions.append(IOCompletion(tag: c.user_data, result: Int(c.res)))
        }
        io_uring_cq_advance(&ring, UInt32(n))
    }
}
