// What a restore writes: a block device, written in place (zero ranges with BLKZEROOUT), or a regular file,
// created anew and sparse (zero ranges are left as holes). O_DIRECT where the filesystem allows it; a file's
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
    }

    deinit { if fd >= 0 { Sys.close(fd) } }

    /// The NBD export written, where the target is one.
    public let export: NBDExport?

    /// Whether the target holds content before the restore that zeros must replace (a device or an export):
    /// every window is written whole and zero windows are cleared, where a new file leaves them as holes.
    public var isDeviceLike: Bool { isBlockDevice || export != nil }

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
        } else if isBlockDevice {
            try Sys.zeroOut(fd, offset: offset, length: length, path: path)
        } else if keepsContent && !isCharacterDevice {
            try Sys.punchHole(fd, offset: offset, length: length, path: path)
        }
    }

    public func sync() throws {
        if let export { return try export.flush() }
        if !isCharacterDevice { try Sys.fdatasync(fd, path: path) }
    }
}
