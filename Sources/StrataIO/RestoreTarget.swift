// What a restore writes: a block device, written in place (zero ranges with BLKZEROOUT), a regular file,
// created anew and sparse (zero ranges are left as holes), an NBD export, or a stream (standard output: every
// byte written in order, zeros too, by `StreamQueue`). O_DIRECT where the filesystem allows it; a file's
// length is set by truncation at the end, so writes may round up to the alignment O_DIRECT needs.
#if canImport(Glibc)
import Glibc
#endif
internal import CURing

public final class RestoreTarget {
    public let path: String
    public let fd: Int32
    public let isBlockDevice: Bool
    public let direct: Bool
    public let alignment: Int
    /// For a block device, its size; for a file, 0 (it grows).
    public let deviceSize: UInt64

    /// Opens `path` for writing: a block device exclusively (O_EXCL: the kernel refuses one that is mounted,
    /// swap or held, and nothing can mount it while the restore runs); a file created (mode 0600 when new) and
    /// truncated, or with `keepingContent` (a restore that writes only what differs) kept as it is.
    public init(path: String, keepingContent: Bool = false) throws {
        self.path = path
        self.keepsContent = keepingContent
        export = nil
        stream = nil
        var isDevice = false
        var isSink = false
        let st = try? Sys.stat(path)
        let existed = st != nil
        if let st {
            if st.kind == .directory { throw IOError("open", path: path, errno: EISDIR) }
            isDevice = st.kind == .blockDevice
            isSink = st.kind == .characterDevice
        }
        isBlockDevice = isDevice
        isCharacterDevice = isSink
        func open(_ flags: Int32) throws -> Int32 {
            isDevice ? try Sys.openExclusive(path, O_WRONLY | flags) : try Sys.open(path, O_WRONLY | O_CREAT | (keepingContent ? 0 : O_TRUNC) | flags)
        }
        var direct = true
        var fd: Int32
        do {
            fd = try open(strata_O_DIRECT)
        } catch let e as IOError where e.errno == EINVAL {
            fd = try open(0)
            direct = false
        }
        self.fd = fd
        self.direct = direct
        if !existed {
            do { try Sys.fchmod(fd, 0o600, path: path) } catch {
                Sys.close(fd)
                throw error
            }
        }
        if isDevice {
            deviceSize = try Sys.blockDeviceSize(fd, path: path)
            alignment = max(512, (try? Sys.logicalBlockSize(fd, path: path)) ?? 4096)
        } else {
            deviceSize = 0
            alignment = 4096
        }
    }

    /// An NBD export opened for writing (`fd` is then -1: NBDQueue writes it): written as a device is (every
    /// window, zeros sent as write-zeroes), its size the export's.
    public init(export: NBDExport) {
        path = export.uri
        fd = -1
        isBlockDevice = false
        isCharacterDevice = false
        direct = true
        alignment = max(512, export.minimumBlockSize)
        deviceSize = export.size
        keepsContent = true
        self.export = export
        stream = nil
    }

    /// A stream (a pipe, a socket: standard output), written from the start to the end in order, zeros written
    /// out, with no O_DIRECT, no length set and no sync: written as a device is, through `StreamQueue`.
    public init(stream fd: Int32, name: String) {
        path = name
        self.fd = fd
        isBlockDevice = false
        isCharacterDevice = false
        direct = false
        alignment = 1
        deviceSize = .max
        keepsContent = true
        export = nil
        stream = StreamWriter(fd: fd, name: name)
    }

    /// The stream written in order, where the target is one.
    public let stream: StreamWriter?

    deinit { if fd >= 0 { Sys.close(fd) } }

    /// The NBD export written, where the target is one.
    public let export: NBDExport?

    /// Whether the target holds content before the restore that zeros must replace (a device or an export):
    /// every window is written whole and zero windows are cleared, where a new file leaves them as holes.
    public var isDeviceLike: Bool { isBlockDevice || export != nil || stream != nil }

    /// A character device (/dev/null: a restore that measures everything but the writes' cost): written as a
    /// file is, without its length set or synced.
    public let isCharacterDevice: Bool

    /// Sets a file's final length (its unwritten ranges read as zeros). No-op for a device.
    public func setLength(_ size: UInt64) throws {
        if !isDeviceLike && !isCharacterDevice { try Sys.ftruncate(fd, size, path: path) }
    }

    /// Whether the file was opened with its content kept (its zero ranges must then be made, not assumed).
    public let keepsContent: Bool

    /// Makes a range read back as zeros: BLKZEROOUT on a device; in a file kept with its content, a hole punched;
    /// in a truncated one nothing (it is a hole already).
    public func zero(offset: UInt64, length: UInt64) throws {
        if let export {
            try export.zero(offset: offset, length: length)
        } else if let stream {
            try stream.writeZeros(at: offset, length: length)
        } else if isBlockDevice {
            try Sys.zeroOut(fd, offset: offset, length: length, path: path)
        } else if keepsContent && !isCharacterDevice {
            try Sys.punchHole(fd, offset: offset, length: length, path: path)
        }
    }

    /// Gives a range back as not needed (`restore --delta --discard` of free blocks): trim on an NBD export that
    /// takes it, BLKDISCARD on a device that does, a hole punched in a file.
    public func discard(offset: UInt64, length: UInt64) throws {
        if let export {
            try export.trim(offset: offset, length: length)
        } else if isBlockDevice {
            try Sys.discard(fd, offset: offset, length: length, path: path)
        } else if stream == nil && !isCharacterDevice {
            try Sys.punchHole(fd, offset: offset, length: length, path: path)
        }
    }

    public func sync() throws {
        if let export { return try export.flush() }
        if !isCharacterDevice && stream == nil { try Sys.fdatasync(fd, path: path) }
    }
}

/// A stream written in order from its start: every write must begin where the one before ended (a restore's
/// windows and zero ranges come in order), and returns once all of it is written.
public final class StreamWriter {
    public let fd: Int32
    public let name: String
    /// Bytes written so far: where the next write must begin.
    public private(set) var position: UInt64 = 0

    /// SIGPIPE is ignored from here on: a reader that goes makes the next write fail (EPIPE), and the restore
    /// stops with a message, where the signal would end the process without a word.
    init(fd: Int32, name: String) {
        (self.fd, self.name) = (fd, name)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Writes `count` bytes that belong at `offset`; a reader that has gone (EPIPE) is a failure like any other.
    public func write(_ buffer: UnsafeRawPointer, count: Int, at offset: UInt64) throws {
        // Once a write has failed, the stream is broken: every later one fails the same way (those already
        // submitted behind it are not out of order, only too late).
        if let failed { throw IOError("write", path: name, errno: failed) }
        precondition(offset == position, "strata bug: a stream written out of order (at \(offset), after \(position))")
        var done = 0
        while done < count {
            let n = Glibc.write(fd, buffer + done, count - done)
            if n < 0 {
                if errno == EINTR { continue }
                failed = errno
                throw IOError("write", path: name, errno: errno)
            }
            done += n
            position += UInt64(n)
        }
    }

    private var failed: Int32?

    /// Writes `length` zeros at `offset`.
    public func writeZeros(at offset: UInt64, length: UInt64) throws {
        let chunk = 1 << 20
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: chunk)
        var left = length
        while left > 0 {
            let n = Int(min(UInt64(chunk), left))
            try write(zeros, count: n, at: offset + (length - left))
            left -= UInt64(n)
        }
    }
}

/// The write queue of a stream target: each write is done, in order, when it is submitted (a pipe takes its
/// bytes in the order they come; io_uring or a pool of threads would reorder them).
public final class StreamQueue: IOQueue {
    public var engineName: String { "stream" }
    private let stream: StreamWriter
    private var done: [IOCompletion] = []

    public init(_ stream: StreamWriter) { self.stream = stream }

    public func submit(_ request: IORequest) {
        precondition(request.op == .write, "strata bug: a stream read")
        do {
            try stream.write(request.buffer, count: request.length, at: request.offset)
            done.append(IOCompletion(tag: request.tag, result: request.length))
        } catch let e as IOError {
            done.append(IOCompletion(tag: request.tag, result: -Int(e.errno)))
        } catch {
            done.append(IOCompletion(tag: request.tag, result: -Int(EIO)))
        }
    }

    public func wait(into completions: inout [IOCompletion]) {
        completions.append(contentsOf: done)
        done.removeAll(keepingCapacity: true)
    }
}
