// Who holds a block device, and which file is which: what the safety checks of restore and capture ask the
// kernel before a byte is written. A device is in use when it or one of its partitions is mounted
// (/proc/self/mountinfo, by device number and by mount source, since btrfs reports anonymous numbers), is active
// swap (/proc/swaps), or has holders (/sys/dev/block/M:m/holders: an MD array, a device-mapper volume). A loop
// device names its backing file in sysfs. Files are compared by identity (device and inode), never by path, so
// a symbolic link, a bind mount or `..` in a path changes nothing.
#if canImport(Glibc)
import Glibc
#endif

/// A file's identity: the device holding it and its inode.
public struct FileIdentity: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64

    public init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }

    /// The identity of what `path` names (following symbolic links), or nil when it does not exist.
    public init?(path: String) {
        guard let st = try? Sys.stat(path) else { return nil }
        device = st.device
        inode = st.inode
    }
}

/// Why a block device cannot be written.
public enum DeviceUse: Equatable, Sendable {
    /// `device` (the device itself or one of its partitions) is mounted at `mountPoint`.
    case mounted(device: String, mountPoint: String)
    /// `device` is active swap.
    case swap(device: String)
    /// `device` is held by `holder` (a member of an MD array, a device-mapper volume...).
    case held(device: String, holder: String)
    /// The kernel refused to open `device` exclusively (EBUSY), for a reason the tables above do not show.
    case exclusive(device: String)
    /// A regular file is the backing file of `loop`, which is in use.
    indirect case backing(loop: String, use: DeviceUse)

    /// The use, said of `path` (the device asked about): "it is mounted at /mnt", "its partition /dev/sdb1 is
    /// mounted at /mnt".
    public func explanation(for path: String) -> String {
        func subject(_ d: String) -> String { d == path ? "it" : "its partition \(d)" }
        switch self {
        case .mounted(let d, let m): return "\(subject(d)) is mounted at \(m)"
        case .swap(let d): return "\(subject(d)) is active swap"
        case .held(let d, let h): return "\(subject(d)) is held by \(h) (a RAID array or a device-mapper/LVM volume)"
        case .exclusive(let d): return "\(subject(d)) is open exclusively by another program"
        case .backing(let l, let u): return "it is the backing file of \(l), and \(u.explanation(for: l).replacingFirstIt(with: l))"
        }
    }
}

extension String {
    fileprivate func replacingFirstIt(with name: String) -> String { hasPrefix("it ") ? name + dropFirst(2) : self }
}

/// Questions about block devices, answered from /proc and /sys.
public enum BlockDevices {
    public static func major(_ dev: UInt64) -> UInt64 { ((dev >> 32) & 0xFFFF_F000) | ((dev >> 8) & 0xFFF) }
    public static func minor(_ dev: UInt64) -> UInt64 { ((dev >> 12) & 0xFFFF_FF00) | (dev & 0xFF) }
    static func numbers(_ dev: UInt64) -> String { "\(major(dev)):\(minor(dev))" }

    /// The device number of the block device at `path`, or nil when `path` is not one.
    public static func deviceNumber(_ path: String) -> UInt64? {
        guard let st = try? Sys.stat(path), st.kind == .blockDevice else { return nil }
        return st.deviceNumber
    }

    /// The device itself and its partitions, each as a name under /dev and its device number.
    public static func family(_ rdev: UInt64, path: String) -> [(name: String, rdev: UInt64)] {
        var out = [(name: path, rdev: rdev)]
        let sys = "/sys/dev/block/\(numbers(rdev))"
        guard let names = try? Sys.listDirectory(sys) else { return out }
        for name in names.sorted() where Sys.readSmallFile("\(sys)/\(name)/partition") != nil {
            guard let dev = Sys.readSmallFile("\(sys)/\(name)/dev").flatMap(parseNumbers) else { continue }
            out.append((name: "/dev/\(name)", rdev: dev))
        }
        return out
    }

    /// Everything that holds the device at `path` or one of its partitions; empty when it is free.
    public static func uses(of rdev: UInt64, path: String) -> [DeviceUse] {
        let members = family(rdev, path: path)
        var uses: [DeviceUse] = []
        let mounts = mountTable()
        for m in members {
            for entry in mounts where entry.device == m.rdev || entry.sourceDevice == m.rdev {
                let use = DeviceUse.mounted(device: m.name, mountPoint: entry.mountPoint)
                if !uses.contains(use) { uses.append(use) }
            }
        }
        let swaps = swapDevices()
        for m in members where swaps.contains(m.rdev) { uses.append(.swap(device: m.name)) }
        for m in members {
            let dir = "/sys/dev/block/\(numbers(m.rdev))/holders"
            for holder in ((try? Sys.listDirectory(dir)) ?? []).sorted() { uses.append(.held(device: m.name, holder: holder)) }
        }
        return uses
    }

    /// Where the partition with device number `rdev` starts on its disk, in bytes, and the disk's device number;
    /// nil when `rdev` is not a partition (/sys/dev/block/M:m/partition, its start in 512-byte sectors, and the
    /// disk's dev beside it).
    public static func partitionPlace(_ rdev: UInt64) -> (disk: UInt64, offset: UInt64)? {
        let sys = "/sys/dev/block/\(numbers(rdev))"
        guard Sys.readSmallFile("\(sys)/partition") != nil,
            let start = Sys.readSmallFile("\(sys)/start")?.split(separator: "\n").first.flatMap({ UInt64($0) }),
            let disk = Sys.readSmallFile("\(sys)/../dev").flatMap(parseNumbers)
        else { return nil }
        return (disk, start * 512)
    }

    /// The file a loop device reads and writes, or nil when the device is not a loop device (or is detached).
    public static func loopBackingFile(_ rdev: UInt64) -> String? {
        guard var text = Sys.readSmallFile("/sys/dev/block/\(numbers(rdev))/loop/backing_file") else { return nil }
        while text.hasSuffix("\n") { text.removeLast() }
        return text.isEmpty ? nil : text
    }

    /// The loop devices whose backing file is `file`, as /dev paths with their device numbers.
    public static func loopDevices(backedBy file: FileIdentity) -> [(path: String, rdev: UInt64)] {
        guard let names = try? Sys.listDirectory("/sys/block") else { return [] }
        var out: [(path: String, rdev: UInt64)] = []
        for name in names.sorted() where name.hasPrefix("loop") {
            guard let dev = Sys.readSmallFile("/sys/block/\(name)/dev").flatMap(parseNumbers),
                let backing = loopBackingFile(dev), FileIdentity(path: backing) == file
            else { continue }
            out.append((path: "/dev/\(name)", rdev: dev))
        }
        return out
    }

    /// The block devices that hold the filesystem `path` lives on (the nearest existing directory above it
    /// when `path` does not exist yet), with the mount point: its device number, and the mount source's too.
    public static func devicesHolding(_ path: String) -> (devices: Set<UInt64>, mountPoint: String?) {
        guard let dev = filesystemDevice(of: path) else { return ([], nil) }
        var devices: Set<UInt64> = [dev]
        var mountPoint: String?
        for entry in mountTable() where entry.device == dev {
            if let source = entry.sourceDevice { devices.insert(source) }
            mountPoint = entry.mountPoint
        }
        return (devices, mountPoint)
    }

    /// Whether `path` is `directory`, lies anywhere below it, or is (a link to) one of the files directly in it,
    /// compared by identity along the path's own parents (`path` need not exist; its nearest existing parent is
    /// where the walk starts).
    public static func isInside(_ path: String, directory: FileIdentity, directoryPath: String) -> Bool {
        if let id = FileIdentity(path: path), id != directory {
            let st = try? Sys.stat(path)
            if let st, st.kind != .directory {
                let members = (try? Sys.listDirectory(directoryPath)) ?? []
                if members.contains(where: { FileIdentity(path: "\(directoryPath)/\($0)") == id }) { return true }
            }
        }
        var at = path
        for _ in 0..<4096 {
            guard let st = try? Sys.stat(at) else {
                at = parent(of: at)
                continue
            }
            let id = st.identity
            if id == directory { return true }
            guard st.kind == .directory else {
                at = parent(of: at)
                continue
            }
            let up = at.hasSuffix("/") ? "\(at).." : "\(at)/.."
            if FileIdentity(path: up) == id { return false }  // the root is its own parent
            at = up
        }
        return false
    }

    /// The device number of the filesystem `path` lives on, or would live on when made (its nearest existing
    /// directory's); nil when not even "/" answers.
    public static func filesystemDevice(of path: String) -> UInt64? {
        var at = path
        var st = try? Sys.stat(at)
        for _ in 0..<256 where st == nil {
            at = parent(of: at)
            st = try? Sys.stat(at)
        }
        return st.map(\.device)
    }

    /// The last component of `path` (what follows its last slash).
    public static func lastComponent(of path: String) -> String {
        let trimmed = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
        return trimmed.lastIndex(of: "/").map { String(trimmed[trimmed.index(after: $0)...]) } ?? trimmed
    }

    /// The directory above `path`, lexically ("/" for "/x", "." for a bare name).
    public static func parentDirectory(of path: String) -> String { parent(of: path) }

    static func parent(of path: String) -> String {
        let trimmed = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        return slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
    }

    struct MountEntry {
        var device: UInt64
        var sourceDevice: UInt64?
        var mountPoint: String
        var readWrite: Bool
    }

    /// /proc/self/mountinfo (parsed by `Mounts.table`) as these checks need it: each mount's device number, its
    /// source's device number where the source is a block device, its mount point, and whether its options say rw.
    static func mountTable() -> [MountEntry] {
        Mounts.table().map {
            MountEntry(device: $0.device, sourceDevice: deviceNumber($0.source), mountPoint: $0.mountPoint, readWrite: $0.optionsReadWrite)
        }
    }

    /// Device numbers of the block devices in /proc/swaps (swap files are covered by the mount check).
    static func swapDevices() -> Set<UInt64> {
        guard let text = Sys.readSmallFile("/proc/swaps") else { return [] }
        var out: Set<UInt64> = []
        for line in text.split(separator: "\n").dropFirst() {
            guard let name = line.split(separator: " ").first, let dev = deviceNumber(unescape(name)) else { continue }
            out.insert(dev)
        }
        return out
    }

    /// "M:m" as a device number.
    static func parseNumbers(_ text: String) -> UInt64? {
        guard let line = text.split(separator: "\n").first else { return nil }
        let parts = line.split(separator: ":")
        guard parts.count == 2, let ma = UInt64(parts[0]), let mi = UInt64(parts[1]) else { return nil }
        return ((ma & 0xFFF) << 8) | ((ma & ~0xFFF) << 32) | (mi & 0xFF) | ((mi & ~0xFF) << 12)
    }

    /// Undoes the kernel's octal escapes in /proc tables (`\040` for a space).
    static func unescape<S: StringProtocol>(_ s: S) -> String {
        let bytes = Array(s.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
                let v = UInt8(String(decoding: bytes[(i + 1)...(i + 3)], as: UTF8.self), radix: 8)
            {
                out.append(v)
                i += 4
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
