// Reflink clones (FICLONE) of an image file, for a crash-consistent capture of a file in use: the clone shares
// the original's blocks (instant, whatever the size, on XFS with reflink and on btrfs) and no longer changes
// when the original does. A clone lives beside its original as `.strata-snapshot-PID-NAME`, so a run killed
// before removing it leaves a name the next run recognises: a clone whose process is gone is removed.
#if canImport(Glibc)
import Glibc
#endif

public enum ReflinkClone {
    public static let prefix = ".strata-snapshot-"
    static let ficlone: UInt = 0x4004_9409  // _IOW(0x94, 9, int)

    /// Clones `file` beside itself and returns the clone's path. Throws `IOError` ("clone"): EOPNOTSUPP or
    /// EINVAL where the filesystem cannot share blocks, EXDEV across filesystems.
    public static func clone(_ file: String) throws -> String {
        let (dir, name) = split(file)
        let target = "\(dir)/\(prefix)\(Sys.processID)-\(name)"
        try? Sys.unlink(target)
        try clone(file, to: target)
        return target
    }

    /// Clones `file` as the new file `target` (on the same filesystem), 0600. A btrfs NOCOW file (`chattr +C`,
    /// common for VM images) can only be cloned into a NOCOW file: the clone is made NOCOW first.
    public static func clone(_ file: String, to target: String) throws {
        let source = try Sys.descriptor(file, O_RDONLY)
        let clone = try Sys.newDescriptor(target, O_WRONLY | O_EXCL)
        do {
            var flags: Int32 = 0
            if (try? Sys.deviceControl(source.rawValue, getFlags, &flags, "read attributes of", path: file)) != nil, flags & noCopyOnWrite != 0 {
                var set = noCopyOnWrite
                _ = try Sys.deviceControl(clone.rawValue, setFlags, &set, "set the NOCOW attribute of", path: target)
            }
            _ = try Sys.deviceControl(clone.rawValue, ficlone, value: source.rawValue, "clone", path: file)
        } catch {
            try? Sys.unlink(target)
            throw error
        }
    }

    static let getFlags: UInt = 0x8008_6601  // FS_IOC_GETFLAGS
    static let setFlags: UInt = 0x4008_6602  // FS_IOC_SETFLAGS
    static let noCopyOnWrite: Int32 = 0x0080_0000  // FS_NOCOW_FL

    /// Removes the clones of `file` that runs no longer alive left behind. Returns their paths.
    @discardableResult
    public static func removeStale(besides file: String) -> [String] {
        let (dir, name) = split(file)
        return removeStale(in: dir, prefix: prefix, name: name, keepingOwn: false)  // called before this run clones
    }

    /// Removes the entries `PREFIXPID-NAME` of `directory` whose process is gone; returns their paths. What a run
    /// names after its process id, so that the next run can tell a killed run's leftovers. `keepingOwn`: this
    /// process's entry is its own (else it is a leftover of an earlier process that had the same id).
    @discardableResult
    public static func removeStale(in directory: String, prefix: String, name: String, keepingOwn: Bool) -> [String] {
        var removed: [String] = []
        for entry in (try? Sys.listDirectory(directory)) ?? [] where entry.hasPrefix(prefix) && entry.hasSuffix("-\(name)") {
            let rest = entry.dropFirst(prefix.count)
            guard let dash = rest.firstIndex(of: "-"), let pid = pid_t(rest[..<dash]), String(rest[rest.index(after: dash)...]) == name else { continue }
            if pid == Sys.processID ? keepingOwn : Daemon.isRunning(pid) { continue }
            if (try? Sys.unlink("\(directory)/\(entry)")) != nil { removed.append("\(directory)/\(entry)") }
        }
        return removed
    }

    static func split(_ path: String) -> (dir: String, name: String) {
        (BlockDevices.parentDirectory(of: path), BlockDevices.lastComponent(of: path))
    }
}
