// Crash-safe file publishing and the chain lock. A file becomes visible under its final name only after its
// bytes are on stable storage (write temp, fsync, rename, fsync directory), so a power cut at any instant
// leaves either the old file or the new one, never a torn one.
#if canImport(Glibc)
import Glibc
#endif

public enum DurableFiles {
    /// Temporary files start with this prefix; a later run removes any it finds (left by a killed run).
    public static let temporaryPrefix = ".strata-tmp-"

    public static func temporaryName(for name: String) -> String { "\(temporaryPrefix)\(Sys.processID)-\(name)" }

    public static func fsyncDirectory(_ dir: String) throws {
        let directory = try Sys.descriptor(dir, O_RDONLY | O_DIRECTORY)
        try Sys.fsync(directory.rawValue, path: dir)
    }

    /// Makes a private directory (0700) and fsyncs the directory holding it, so that the new name survives a
    /// power cut once anything inside it is made durable.
    public static func makeDirectory(_ path: String) throws {
        try Sys.mkdir(path, mode: 0o700)
        try fsyncDirectory(BlockDevices.parent(of: path))
    }

    /// Atomically replaces `dir/name` with `bytes` (the file made with `mode`).
    public static func publish(_ bytes: [UInt8], dir: String, name: String, mode: mode_t = 0o600) throws {
        let tmp = "\(dir)/\(temporaryName(for: name))"
        do {
            let file = try Sys.newDescriptor(tmp, O_WRONLY | O_TRUNC, mode: mode)
            try bytes.withUnsafeBytes { try Sys.pwriteAll(file.rawValue, $0.baseAddress!, $0.count, 0, path: tmp) }
            try Sys.fsync(file.rawValue, path: tmp)
        } catch {
            try? Sys.unlink(tmp)
            throw error
        }
        try Sys.rename(tmp, "\(dir)/\(name)")
        try fsyncDirectory(dir)
    }

    /// Reads a whole small file (manifest, header); refuses files larger than `limit`.
    public static func readAll(_ path: String, limit: Int) throws -> [UInt8] {
        let file = try Sys.descriptor(path, O_RDONLY)
        let fd = file.rawValue
        let size = Int(try Sys.fstat(fd, path: path).size)
        guard size <= limit else { throw IOError("read", path: path, errno: EFBIG) }
        var bytes = [UInt8](repeating: 0, count: size)
        let n = try bytes.withUnsafeMutableBytes { try Sys.preadFully(fd, $0.baseAddress!, size, 0, path: path) }
        return Array(bytes[0..<n])
    }
}

/// The writer's lock on a chain directory, held for the life of the value: a process that changes the chain
/// (capture, merge, prune) takes it exclusively; a second one fails to take it at once instead of waiting or
/// interleaving writes. Readers take no lock (see StrataChain's Chain.swift).
public final class DirectoryLock {
    private let fd: Int32

    /// Returns nil when another process holds it.
    public init?(directory: String) throws {
        let path = "\(directory)/.lock"
        let fd: Int32
        do { fd = try Sys.open(path, O_RDWR) } catch let e as IOError where e.isMissing { fd = try Sys.create(path, O_RDWR) }
        guard try Sys.tryLock(fd, path: directory) else {
            Sys.close(fd)
            return nil
        }
        self.fd = fd
    }

    deinit { Sys.close(fd) }  // closing releases the flock
}
