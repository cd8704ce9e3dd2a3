// The one place that turns engine completions into finished transfers: short reads and writes are resubmitted
// for their remainder (offset += done, never offset = done: QEMU's bug), EINTR/EAGAIN are resubmitted whole,
// end of file ends a read early, and any other error is thrown with its path and offset.
#if canImport(Glibc)
import Glibc
#endif

public final class IOPump {
    public let queue: IOQueue
    private struct Pending {
        var request: IORequest
        var done: Int
        var path: String
        var active: Bool
    }
    private var pending: [Pending]
    private var ready: [IOCompletion] = []
    private var cursor = 0
    public private(set) var inFlight = 0

    /// Tags are `0..<maxTags`; each may have one transfer in flight at a time.
    public init(queue: IOQueue, maxTags: Int) {
        self.queue = queue
        let blank = IORequest(op: .read, fd: -1, buffer: UnsafeMutableRawPointer(bitPattern: 64)!, length: 0, offset: 0, tag: 0)
        pending = Array(repeating: Pending(request: blank, done: 0, path: "", active: false), count: maxTags)
        ready.reserveCapacity(maxTags)
    }

    public func read(fd: Int32, path: String, into buffer: UnsafeMutableRawPointer, length: Int, at offset: UInt64, tag: Int) {
        start(IORequest(op: .read, fd: fd, buffer: buffer, length: length, offset: offset, tag: UInt64(tag)), path: path)
    }

    public func write(fd: Int32, path: String, from buffer: UnsafeMutableRawPointer, length: Int, at offset: UInt64, tag: Int) {
        start(IORequest(op: .write, fd: fd, buffer: buffer, length: length, offset: offset, tag: UInt64(tag)), path: path)
    }

    private func start(_ r: IORequest, path: String) {
        precondition(!pending[Int(r.tag)].active, "tag \(r.tag) already in flight")
        pending[Int(r.tag)] = Pending(request: r, done: 0, path: path, active: true)
        inFlight += 1
        queue.submit(r)
    }

    /// Waits for the next finished transfer and returns its tag and byte count (less than requested only for
    /// a read that reached end of file). Throws IOError for a failed transfer; that tag is then free again.
    public func next() throws -> (tag: Int, bytes: Int) {
        let outcome = nextOutcome()
        if let error = outcome.error { throw error }
        return (outcome.tag, outcome.bytes)
    }

    /// Like `next`, but a failed transfer comes back with its error (and the bytes done before it) instead of
    /// being thrown, so the caller knows which transfer failed: capture rescues a failed read this way.
    public func nextOutcome() -> (tag: Int, bytes: Int, error: IOError?) {
        precondition(inFlight > 0, "waiting with nothing in flight")
        while true {
            if cursor == ready.count {
                ready.removeAll(keepingCapacity: true)
                cursor = 0
                queue.wait(into: &ready)
            }
            let c = ready[cursor]
            cursor += 1
            let t = Int(c.tag)
            var p = pending[t]
            if c.result == -Int(EINTR) || c.result == -Int(EAGAIN) {
                resubmit(p)
                continue
            }
            if c.result < 0 {
                pending[t].active = false
                inFlight -= 1
                let what = p.request.op == .read ? "read" : "write"
                return (t, p.done, IOError("\(what) at byte \(p.request.offset + UInt64(p.done)) of", path: p.path, errno: Int32(-c.result)))
            }
            p.done += c.result
            if c.result == 0 && p.request.op == .write {
                pending[t].active = false
                inFlight -= 1
                return (t, p.done, IOError("write at byte \(p.request.offset + UInt64(p.done)) of", path: p.path, errno: ENOSPC))
            }
            if c.result > 0 && p.done < p.request.length {
                pending[t] = p
                resubmit(p)
                continue
            }
            pending[t].active = false
            inFlight -= 1
            return (t, p.done, nil)
        }
    }

    private func resubmit(_ p: Pending) {
        var r = p.request
        r.buffer += p.done
        r.offset += UInt64(p.done)
        r.length -= p.done
        queue.submit(r)
    }
}
