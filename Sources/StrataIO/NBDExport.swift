// NBD exports read through libnbd (the library nbdcopy and virt-v2v use): a connection (or several, where the
// server allows multi-conn) named by an NBD URI (nbd://, nbds:// with TLS, nbd+unix://), the export's size from
// the handshake, block status in a meta context (`base:allocation`: holes and zeros; `qemu:dirty-bitmap:NAME`:
// what was written since the bitmap started), and reads and writes many in flight on libnbd's asynchronous API
// (NBDQueue; a restore's target is written the same way, its zeros sent as write-zeroes).
// Everything a server sends is checked before it is used: extents past what was asked, zero-length or
// missing extents, a size that changed, a reply that never comes (no answer for `stallSeconds`).
#if canImport(Glibc)
import Glibc
#endif
internal import CNBD

/// What went wrong with an NBD server, in libnbd's words.
public struct NBDError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var uri: String
    public var message: String
    /// libnbd itself is missing or too old on this machine (not the server's fault).
    public var libraryMissing = false

    init(_ operation: String, _ uri: String, _ message: String? = nil) {
        self.operation = operation
        self.uri = uri
        self.message = message ?? ((try? LibNBD.shared.get())?.lastError ?? "unknown error")
    }

    init(loading message: String) {
        (operation, uri, self.message, libraryMissing) = ("load", "", message, true)
    }

    public var description: String { "\(operation) \(uri): \(message)" }
}

/// The meta context that says which blocks are holes or read as zeros.
public let nbdAllocationContext = "base:allocation"

/// An open NBD export: one connection, or `connections` where the server says several are safe (multi-conn).
public final class NBDExport: @unchecked Sendable {  // libnbd handles are thread-safe (each call locks its handle)
    public let uri: String
    public let size: UInt64
    /// The server's preferred and minimum block sizes (1 and 512 where it says none).
    public let minimumBlockSize: Int
    let handles: [OpaquePointer]
    let lib: LibNBD
    /// How long a read may wait for any answer before the connection counts as lost.
    public var stallSeconds: Int32 = 120

    public static func isURI(_ s: String) -> Bool {
        ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://", "nbds+vsock://"].contains { s.hasPrefix($0) }
    }

    /// Connects to `uri`, asking for `contexts` (meta contexts for block status).
    public init(uri: String, contexts: [String] = [nbdAllocationContext], connections: Int = 1) throws {
        self.uri = uri
        let lib = try LibNBD.get(for: uri)
        self.lib = lib
        func open() throws -> OpaquePointer {
            guard let h = lib.create() else { throw NBDError("connect to", uri) }
            _ = lib.setURIAllowLocalFile(h, true)  // the URI is the user's: its tls-certificates or tls-psk-file may name files
            for c in contexts where lib.addMetaContext(h, c) == -1 {
                lib.close(h)
                throw NBDError("connect to", uri)
            }
            guard lib.connectURI(h, uri) != -1 else {
                let e = NBDError("connect to", uri)
                lib.close(h)
                throw e
            }
            return h
        }
        let first = try open()
        let size = lib.getSize(first)
        guard size >= 0 else {
            let e = NBDError("read the size of", uri)
            lib.close(first)
            throw e
        }
        self.size = UInt64(size)
        let minimum = lib.getBlockSize(first, LibNBD.sizeMinimum)
        minimumBlockSize = minimum > 0 && minimum <= 65536 && minimum & (minimum - 1) == 0 ? Int(minimum) : 512
        var handles = [first]
        if connections > 1 && lib.canMultiConn(first) == 1 {
            do {
                for _ in 1..<connections { handles.append(try open()) }
            } catch {
                for h in handles { lib.close(h) }
                throw error
            }
        }
        self.handles = handles
        for h in handles.dropFirst() where lib.getSize(h) != size {
            for h in handles { lib.close(h) }
            throw NBDError("connect to", uri, "its connections report different sizes")
        }
    }

    deinit { for h in handles { lib.close(h) } }

    public var connections: Int { handles.count }

    /// Whether the server refuses writes; whether it takes write-zeroes and flush.
    public var isReadOnly: Bool { lib.isReadOnly(handles[0]) == 1 }
    public var canZero: Bool { lib.canZero(handles[0]) == 1 }
    public var canFlush: Bool { lib.canFlush(handles[0]) == 1 }

    /// Whether the server takes trim (discard) requests.
    public var canTrim: Bool { lib.canTrim(handles[0]) == 1 }

    /// Tells the server `length` bytes at `offset` are not needed (trim, in requests of at most 1 GiB); what they
    /// read as afterwards is the server's choice. Nothing where the server takes no trim.
    public func trim(offset: UInt64, length: UInt64) throws {
        guard canTrim else { return }
        var at: UInt64 = 0
        while at < length {
            let n = min(length - at, 1 << 30)
            guard lib.trim(handles[0], n, offset + at, 0) != -1 else {
                throw IOError("trim a range of", path: uri, errno: lib.getErrno() == 0 ? EIO : lib.getErrno())
            }
            at += n
        }
    }

    /// Makes `length` bytes at `offset` read as zeros: write-zeroes (the server may leave a hole), in requests of
    /// at most 1 GiB; where the server has no write-zeroes, zeros written.
    public func zero(offset: UInt64, length: UInt64) throws {
        var at: UInt64 = 0
        if canZero {
            while at < length {
                let n = min(length - at, 1 << 30)
                guard lib.zero(handles[0], n, offset + at, 0) != -1 else {
                    throw IOError("zero a range of", path: uri, errno: lib.getErrno() == 0 ? EIO : lib.getErrno())
                }
                at += n
            }
            return
        }
        let chunk = 1 << 20
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: chunk)
        while at < length {
            let n = Int(min(UInt64(chunk), length - at))
            try write(zeros, count: n, at: offset + at)
            at += UInt64(n)
        }
    }

    /// Writes `count` bytes at `offset` on the first connection, waiting for the server's answer.
    public func write(_ buffer: UnsafeRawPointer, count: Int, at offset: UInt64) throws {
        guard lib.pwrite(handles[0], buffer, count, offset, 0) != -1 else {
            throw IOError("write", path: uri, errno: lib.getErrno() == 0 ? EIO : lib.getErrno())
        }
    }

    /// Makes what was written durable on the server (NBD flush on every connection), where it has flush.
    public func flush() throws {
        guard canFlush else { return }
        for h in handles where lib.flush(h, 0) == -1 {
            throw IOError("flush", path: uri, errno: lib.getErrno() == 0 ? EIO : lib.getErrno())
        }
    }

    /// Whether the server agreed to `context` in the handshake.
    public func has(_ context: String) -> Bool { lib.canMetaContext(handles[0], context) == 1 }

    /// The extents of `context` from `offset`, as the server describes them for up to `length` bytes: each a
    /// length and the context's flags, together covering `offset..<offset + their total` (at least one byte,
    /// never more than asked). A reply that breaks that is refused.
    public func blockStatus(_ context: String, offset: UInt64, length: UInt64) throws -> [(length: UInt64, flags: UInt32)] {
        final class Box {
            let context: String
            var extents: [(length: UInt64, flags: UInt32)] = []
            var bad: String?
            init(_ c: String) { context = c }
        }
        let box = Box(context)
        let asked = min(length, UInt64(UInt32.max) & ~UInt64(65535), size - min(offset, size))
        guard asked > 0 else { return [] }
        let cb: @convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UInt64, UnsafeMutablePointer<UInt32>?, Int, UnsafeMutablePointer<Int32>?) -> Int32 = {
            user, name, _, entries, count, _ in
            let box = Unmanaged<Box>.fromOpaque(user!).takeUnretainedValue()
            guard let name, String(cString: name) == box.context, let entries else { return 0 }
            guard count % 2 == 0 else { box.bad = "an odd number of extent words"; return 0 }
            for i in stride(from: 0, to: count, by: 2) { box.extents.append((UInt64(entries[i]), entries[i + 1])) }
            return 0
        }
        let user = Unmanaged.passUnretained(box).toOpaque()
        let r = withExtendedLifetime(box) {
            lib.blockStatus(handles[0], asked, offset, nbd_extent_callback(callback: cb, user_data: user, free: nil), 0)
        }
        guard r != -1 else { throw NBDError("read block status of", uri) }
        if let bad = box.bad { throw NBDError("read block status of", uri, "the server sent \(bad)") }
        guard !box.extents.isEmpty else { throw NBDError("read block status of", uri, "the server sent no extents for \(context) at byte \(offset)") }
        var total: UInt64 = 0
        for e in box.extents {
            guard e.length > 0 else { throw NBDError("read block status of", uri, "the server sent an empty extent at byte \(offset + total)") }
            total += e.length
        }
        // The last extent may go past the request (and so past the export): it is cut to what was asked. One
        // before it that does is a server describing what it was not asked.
        if total > asked {
            guard total - box.extents.last!.length < asked else {
                throw NBDError("read block status of", uri, "the server described more than was asked (\(total) bytes from \(offset), past \(offset + asked))")
            }
            box.extents[box.extents.count - 1].length -= total - asked
        }
        return box.extents
    }

    /// Reads `count` bytes at `offset` on the first connection, waiting for them (the bad-sector rescue's reads).
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws {
        guard lib.pread(handles[0], buffer, count, offset, 0) != -1 else {
            throw IOError("read", path: uri, errno: lib.getErrno() == 0 ? EIO : lib.getErrno())
        }
    }
}

/// Reads and writes an NBD export on libnbd's asynchronous API, many in flight, spread over its connections: the
/// IOQueue a pipeline's I/O thread drives (a request's `fd` is ignored). A failed request completes with its errno.
/// Two queues may drive one connection from two threads (a restore --delta reads the target while it writes
/// it): each retires only its own commands, and a reply read by the other thread wakes this one through the
/// command's completion callback (an eventfd it polls beside the sockets).
public final class NBDQueue: IOQueue {
    public let engineName = "nbd"
    private let export: NBDExport
    private var inFlight: [[Int64: (tag: UInt64, length: Int)]]
    private var ready: [IOCompletion] = []
    private var next = 0
    private let wake: Int32

    public init(_ export: NBDExport) {
        self.export = export
        inFlight = Array(repeating: [:], count: export.handles.count)
        wake = strata_nbd_eventfd()
    }

    deinit { if wake >= 0 { Glibc.close(wake) } }

    public func submit(_ request: IORequest) {
        let k = next
        next = (next + 1) % export.handles.count
        let h = export.handles[k], done = wake >= 0 ? LibNBD.waking(wake) : LibNBD.noCompletion
        let cookie =
            request.op == .read
            ? export.lib.aioPread(h, request.buffer, request.length, request.offset, done, 0)
            : export.lib.aioPwrite(h, request.buffer, request.length, request.offset, done, 0)
        if cookie == -1 {
            ready.append(IOCompletion(tag: request.tag, result: -Int(errnoOr(EIO))))
        } else {
            inFlight[k][cookie] = (request.tag, request.length)
        }
    }

    public func wait(into completions: inout [IOCompletion]) {
        while true {
            retire()
            if !ready.isEmpty {
                completions += ready
                ready.removeAll(keepingCapacity: true)
                return
            }
            guard inFlight.contains(where: { !$0.isEmpty }) else { return }
            poll()
        }
    }

    /// Moves this queue's commands that libnbd has finished into `ready`.
    private func retire() {
        for k in export.handles.indices where !inFlight[k].isEmpty {
            let h = export.handles[k]
            for (cookie, r) in inFlight[k] {
                let state = export.lib.aioCommandCompleted(h, UInt64(cookie))
                guard state != 0 else { continue }  // still in flight
                inFlight[k][cookie] = nil
                ready.append(IOCompletion(tag: r.tag, result: state == 1 ? r.length : -Int(errnoOr(EIO))))
            }
            if !inFlight[k].isEmpty && (export.lib.aioIsDead(h) != 0 || export.lib.aioIsClosed(h) != 0) {
                fail(k, ENOTCONN)
            }
        }
    }

    /// Waits until a connection with commands in flight can move (or another thread finished one of ours), then
    /// lets libnbd move it; a wait of `stallSeconds` without any answer fails every command in flight.
    private func poll() {
        var fds: [pollfd] = []
        var which: [Int] = []
        for k in export.handles.indices where !inFlight[k].isEmpty {
            let h = export.handles[k]
            let fd = export.lib.aioGetFd(h)
            guard fd >= 0 else {
                fail(k, ENOTCONN)
                continue
            }
            let dir = export.lib.aioGetDirection(h)
            var events: Int16 = 0
            if dir & LibNBD.directionRead != 0 { events |= Int16(POLLIN) }
            if dir & LibNBD.directionWrite != 0 { events |= Int16(POLLOUT) }
            fds.append(pollfd(fd: fd, events: events, revents: 0))
            which.append(k)
        }
        guard !fds.isEmpty else { return }
        if wake >= 0 { fds.append(pollfd(fd: wake, events: Int16(POLLIN), revents: 0)) }
        let n = Glibc.poll(&fds, nfds_t(fds.count), export.stallSeconds * 1000)
        if n == 0 {
            for k in which { fail(k, ETIMEDOUT) }
            return
        }
        guard n > 0 else { return }  // EINTR: the caller polls again
        if wake >= 0 && fds[which.count].revents != 0 {
            var count: UInt64 = 0
            _ = Glibc.read(wake, &count, 8)
        }
        for (i, k) in which.enumerated() {
            let h = export.handles[k], r = fds[i].revents
            if r & Int16(POLLIN | POLLHUP | POLLERR) != 0 { _ = export.lib.aioNotifyRead(h) }
            if r & Int16(POLLOUT) != 0 { _ = export.lib.aioNotifyWrite(h) }
        }
    }

    /// Every command in flight on connection `k` fails with `error` (the connection is gone or silent).
    private func fail(_ k: Int, _ error: Int32) {
        for (_, r) in inFlight[k] { ready.append(IOCompletion(tag: r.tag, result: -Int(error))) }
        inFlight[k].removeAll()
    }

    private func errnoOr(_ fallback: Int32) -> Int32 {
        let e = export.lib.getErrno()
        return e == 0 ? fallback : e
    }
}
