// Stream sockets for the servers (`strata serve`): listening on a Unix socket or a TCP address, accepting, and
// reading and writing whole messages. Blocking descriptors, one thread a connection. The system calls, with
// their EINTR retries, are Syscalls.swift's; here are the addresses and the loops that finish a transfer.
#if canImport(Glibc)
import Glibc
#endif

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
        let socket = try Sys.streamSocket(AF_UNIX, path: path)
        try withUnsafeBytes(of: &addr) { try Sys.bindAndListen(socket.rawValue, $0.baseAddress!, length: $0.count, backlog: 64, path: path) }
        fd = socket.release()
        address = path
        socketPath = path
    }

    /// Listens on TCP `host` (an IPv4 address) port `port`.
    public init(host: String, port: UInt16) throws {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else { throw IOError("listen on", path: host, errno: EINVAL) }
        let socket = try Sys.streamSocket(AF_INET, path: host)
        Sys.setSocketOption(socket.rawValue, SOL_SOCKET, SO_REUSEADDR, 1)
        try withUnsafeBytes(of: &addr) { try Sys.bindAndListen(socket.rawValue, $0.baseAddress!, length: $0.count, backlog: 64, path: "\(host):\(port)") }
        fd = socket.release()
        address = "\(host):\(port)"
        socketPath = nil
    }

    /// The next connection; nil once the listener is closed.
    public func accept() -> Connection? {
        guard let c = Sys.accept(fd) else { return nil }
        Sys.setSocketOption(c, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        return Connection(fd: c)
    }

    /// Makes SIGINT and SIGTERM end the process with status 0, removing the socket file first (a server runs
    /// until one of them); SIGPIPE from a client gone mid-reply is ignored (the write fails instead).
    public func exitOnTerminationSignals() { Sys.exitOnTermination(unlinking: socketPath) }

    /// Stops accepting and removes the socket file.
    public func close() {
        Sys.shutdownSocket(fd)
        Sys.close(fd)
        if let socketPath { try? Sys.unlink(socketPath) }
    }
}

public final class Connection: @unchecked Sendable {  // one thread at a time: the session thread it is handed to
    public let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { Sys.close(fd) }

    /// Reads exactly `count` bytes; false when the peer closed the connection or it failed first.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int) -> Bool {
        whole(count) { Sys.receive(fd, buffer + $0, count - $0) }
    }

    public func read(_ count: Int) -> [UInt8]? {
        var b = [UInt8](repeating: 0, count: count)
        let ok = count == 0 || b.withUnsafeMutableBytes { read(into: $0.baseAddress!, count: count) }
        return ok ? b : nil
    }

    /// Writes all of `count` bytes; false when the connection failed.
    public func write(_ buffer: UnsafeRawPointer, count: Int) -> Bool {
        whole(count) { Sys.send(fd, buffer + $0, count - $0) }
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
                    guard let n = Sys.sendGathered(fd, v.baseAddress! + first, count: min(v.count - first, Self.maxParts)), n > 0 else {
                        return false
                    }
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

    /// Repeats `transfer` (given the bytes done so far) until `count` bytes are through; false when one moved
    /// nothing (the peer gone) or failed.
    private func whole(_ count: Int, _ transfer: (Int) -> Int?) -> Bool {
        var done = 0
        while done < count {
            guard let n = transfer(done), n > 0 else { return false }
            done += n
        }
        return true
    }

    public func write(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { write($0.baseAddress!, count: $0.count) } }
}
