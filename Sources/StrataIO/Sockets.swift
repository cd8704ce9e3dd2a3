// Stream sockets for the servers (`strata serve`): listening on a Unix socket or a TCP address, accepting, and
// reading and writing whole messages. Blocking descriptors, one thread a connection.
#if canImport(Glibc)
import Glibc
#endif

/// The socket file to remove when a signal stops the process (a C string: the handler may not allocate).
nonisolated(unsafe) private var socketToRemove: UnsafeMutablePointer<CChar>?  // set once before the handlers are installed, read only by them

public final class Listener {
    public let fd: Int32
    public let address: String
    /// The socket file of a Unix listener, removed when the listener is closed.
    public let socketPath: String?

    /// Listens on a Unix socket at `path`; a path where something exists already is refused (EADDRINUSE),
    /// whatever it is (a stale socket of a killed server is the user's to remove: it may be another's).
    public init(unixPath path: String) throws {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw IOError("listen on", path: path, errno: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw IOError("open a socket for", path: path, errno: errno) }
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard r == 0, listen(fd, 64) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw IOError("listen on", path: path, errno: e)
        }
        self.fd = fd
        address = path
        socketPath = path
    }

    /// Listens on TCP `host` (an IPv4 address) port `port`.
    public init(host: String, port: UInt16) throws {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else { throw IOError("listen on", path: host, errno: EINVAL) }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw IOError("open a socket for", path: host, errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0, listen(fd, 64) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw IOError("listen on", path: "\(host):\(port)", errno: e)
        }
        self.fd = fd
        address = "\(host):\(port)"
        socketPath = nil
    }

    /// The next connection; nil once the listener is closed.
    public func accept() -> Connection? {
        while true {
            let c = Glibc.accept(fd, nil, nil)
            if c >= 0 {
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                var one: Int32 = 1
                setsockopt(c, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                return Connection(fd: c)
            }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    /// Makes SIGINT and SIGTERM end the process with status 0, removing the socket file first (a server runs
    /// until one of them); SIGPIPE from a client gone mid-reply is ignored (the write fails instead).
    public func exitOnTerminationSignals() {
        if let socketPath { socketToRemove = strdup(socketPath) }
        let stop: @convention(c) (Int32) -> Void = { _ in
            if let p = socketToRemove { unlink(p) }
            _exit(0)
        }
        signal(SIGINT, stop)
        signal(SIGTERM, stop)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Stops accepting and removes the socket file.
    public func close() {
        shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
        if let socketPath { unlink(socketPath) }
    }
}

public final class Connection: @unchecked Sendable {  // one thread at a time: the session thread it is handed to
    public let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { Glibc.close(fd) }

    /// Reads exactly `count` bytes; false when the peer closed the connection or it failed first.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int) -> Bool {
        whole(count) { recv(fd, buffer + $0, count - $0, 0) }
    }

    public func read(_ count: Int) -> [UInt8]? {
        var b = [UInt8](repeating: 0, count: count)
        let ok = count == 0 || b.withUnsafeMutableBytes { read(into: $0.baseAddress!, count: count) }
        return ok ? b : nil
    }

    /// Writes all of `count` bytes; false when the connection failed.
    public func write(_ buffer: UnsafeRawPointer, count: Int) -> Bool {
        whole(count) { send(fd, buffer + $0, count - $0, Int32(MSG_NOSIGNAL)) }
    }

    /// Writes `head` and then each of `parts`, in order, gathered into as few messages as the socket takes (a
    /// reply's header and its data where it lies, without copying it together first); false when the
    /// connection failed.
    public func write(_ head: [UInt8], then parts: [UnsafeRawBufferPointer]) -> Bool {
        head.withUnsafeBytes { h in
            var iov: [iovec] = []
            iov.reserveCapacity(parts.count + 1)
            for p in [h] + parts where p.count > 0 {
                iov.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: p.baseAddress), iov_len: p.count))
            }
            return iov.withUnsafeMutableBufferPointer { v in
                var first = 0
                while first < v.count {
                    var m = msghdr()
                    m.msg_iov = v.baseAddress! + first
                    m.msg_iovlen = min(v.count - first, Self.maxParts)
                    let n = sendmsg(fd, &m, Int32(MSG_NOSIGNAL))
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { return false }
                    // Past what went: whole parts, then into the part it stopped in.
                    var left = n
                    while left > 0 {
                        if left >= v[first].iov_len {
                            left -= v[first].iov_len
                            first += 1
                        } else {
                            v[first].iov_base = v[first].iov_base! + left
                            v[first].iov_len -= left
                            left = 0
                        }
                    }
                }
                return true
            }
        }
    }

    /// The parts one sendmsg takes (Linux's UIO_MAXIOV).
    static let maxParts = 1024

    /// Repeats `transfer` (given the bytes done so far) until `count` bytes are through, retrying EINTR.
    private func whole(_ count: Int, _ transfer: (Int) -> Int) -> Bool {
        var done = 0
        while done < count {
            let n = transfer(done)
            if n > 0 {
                done += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return false
            }
        }
        return true
    }

    public func write(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { write($0.baseAddress!, count: $0.count) } }
}
