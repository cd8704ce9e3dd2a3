// What `strata mount --files` asks of the kernel, and `strata unmount` undoes: read-only loop devices over a
// file or one partition of it (LOOP_CONFIGURE, cleared automatically when the last user lets go), filesystem
// mounts and unmounts, the mount table, and the drivers (kernel or userspace) that mount each filesystem.
#if canImport(Glibc)
import Glibc
#endif

/// One line of /proc/self/mountinfo.
public struct MountedFilesystem: Sendable, Equatable {
    public var mountPoint: String
    public var type: String
    public var source: String
    /// The device number of the mount (st_dev of files in it).
    public var device: UInt64
    /// The mount's own options say rw (what the block-device checks ask).
    public var optionsReadWrite: Bool
    /// The filesystem itself is read-only (its superblock options say ro), whatever the mount's options say.
    public var superblockReadOnly: Bool
    /// Writable through this mount: its options say rw and the filesystem is not read-only.
    public var readWrite: Bool { optionsReadWrite && !superblockReadOnly }
}

public enum Mounts {
    /// The mounts of this process's namespace, in the order they were made: the one parser of
    /// /proc/self/mountinfo (the block-device checks read it through `BlockDevices.mountTable`).
    public static func table() -> [MountedFilesystem] {
        guard let text = Sys.readSmallFile("/proc/self/mountinfo") else { return [] }
        var out: [MountedFilesystem] = []
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: false)
            guard f.count > 5, let dev = BlockDevices.parseNumbers(String(f[2])), let dash = f.firstIndex(of: "-"), dash + 2 < f.count
            else { continue }
            let superOptions = dash + 3 < f.count ? f[dash + 3].split(separator: ",") : []
            out.append(MountedFilesystem(
                mountPoint: BlockDevices.unescape(f[4]), type: String(f[dash + 1]), source: BlockDevices.unescape(f[dash + 2]), device: dev,
                optionsReadWrite: f[5].split(separator: ",").contains("rw"), superblockReadOnly: superOptions.contains("ro")))
        }
        return out
    }

    /// The mount whose mount point is `path` (the last made, when several are stacked), or nil.
    public static func mounted(at path: String) -> MountedFilesystem? { table().last { $0.mountPoint == path } }

    /// Mounts `source` (a block device, or a name for a virtual filesystem) of `type` at `target`, read-only.
    public static func mountReadOnly(_ source: String, at target: String, type: String, options: String) throws {
        try Sys.mount(source, at: target, type: type, flags: UInt(MS_RDONLY | MS_NODEV | MS_NOSUID), options: options)
    }

    /// Makes the mount at `path` read-only in the kernel too (a FUSE driver told `ro` may refuse writes itself and
    /// leave its mount writable).
    public static func remountReadOnly(_ path: String) throws {
        try Sys.mount("none", at: path, type: "", flags: UInt(MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NODEV | MS_NOSUID), options: "")
    }

    /// Unmounts `path`; `lazy` detaches it now and lets it go when its last user does (MNT_DETACH).
    public static func unmount(_ path: String, lazy: Bool = false) throws {
        try Sys.unmount(path, flags: lazy ? Int32(MNT_DETACH) : 0)
    }
}

/// A loop device attached by `LoopDevices.attachReadOnly`, held open: it clears itself once this value and every
/// filesystem mounted from it are gone.
public struct AttachedLoop: ~Copyable {
    public let path: String
    let descriptor: FileDescriptor
}

/// A read-only loop device over a file.
public enum LoopDevices {
    private static let ctlGetFree: UInt = 0x4C82
    private static let configure: UInt = 0x4C0A
    private static let clearFD: UInt = 0x4C01
    private static let flagsReadOnly: UInt32 = 1, flagsAutoClear: UInt32 = 4, flagsPartScan: UInt32 = 8

    /// Attaches a free loop device to `file` (or to its `size` bytes at `offset`: one partition of a disk, with no
    /// partition scan and so no /dev nodes to wait for), read-only; it detaches itself when the last holder lets
    /// go (the returned value, then any filesystem mounted from it).
    public static func attachReadOnly(_ file: String, offset: UInt64 = 0, size: UInt64 = 0, scanPartitions: Bool = true) throws -> AttachedLoop {
        let backing = try Sys.descriptor(file, O_RDONLY)
        let control = try Sys.descriptor("/dev/loop-control", O_RDWR)
        // Another program may take the device between asking and configuring it: ask again.
        for _ in 0..<16 {
            let n = try Sys.deviceControl(control.rawValue, ctlGetFree, nil, "find a free loop device through", path: "/dev/loop-control")
            let path = "/dev/loop\(n)"
            let device = try Sys.descriptor(path, O_RDONLY)
            // struct loop_config: fd, block_size, struct loop_info64 (232 bytes: lo_offset at 24, lo_sizelimit at 32,
            // lo_flags at 52), 64 reserved.
            var config = [UInt8](repeating: 0, count: 8 + 232 + 64)
            config.withUnsafeMutableBytes { c in
                c.storeBytes(of: UInt32(backing.rawValue), toByteOffset: 0, as: UInt32.self)
                c.storeBytes(of: offset, toByteOffset: 8 + 24, as: UInt64.self)
                c.storeBytes(of: size, toByteOffset: 8 + 32, as: UInt64.self)
                c.storeBytes(of: flagsReadOnly | flagsAutoClear | (scanPartitions ? flagsPartScan : 0), toByteOffset: 8 + 52, as: UInt32.self)
            }
            do {
                try config.withUnsafeMutableBytes { _ = try Sys.deviceControl(device.rawValue, configure, $0.baseAddress!, "attach a loop device to", path: file) }
                return AttachedLoop(path: path, descriptor: device)
            } catch let e as IOError where e.isBusy {}
        }
        throw IOError("attach a loop device to", path: file, errno: EBUSY)
    }

    /// Detaches a loop device (one set to clear itself may already be gone: not an error).
    public static func detach(_ path: String) {
        guard let device = try? Sys.descriptor(path, O_RDONLY) else { return }
        _ = try? Sys.deviceControl(device.rawValue, clearFD, value: 0, "detach", path: path)
    }

    /// The partitions the kernel found on a block device, as /dev paths, in order (empty for none).
    public static func partitions(of path: String) -> [String] {
        guard let rdev = BlockDevices.deviceNumber(path) else { return [] }
        return BlockDevices.family(rdev, path: path).dropFirst().map(\.name)
    }

    /// Whether `path` is an attached loop device.
    public static func isAttached(_ path: String) -> Bool {
        BlockDevices.deviceNumber(path).flatMap(BlockDevices.loopBackingFile) != nil
    }
}

/// How a filesystem libblkid names (its TYPE) is mounted read-only, without replaying a journal: by the kernel
/// (mount(2) with the options that keep a read-only mount from writing), or by a userspace driver (a FUSE
/// program: a filesystem crafted to attack a driver attacks a process, not the kernel).
public enum FilesystemDrivers {
    /// The kernel's filesystem type and options for libblkid's `type`, or nil where it has none.
    public static func kernel(_ type: String) -> (type: String, options: String)? {
        switch type {
        case "ext2", "ext3", "ext4": ("ext4", "noload")
        case "xfs": ("xfs", "norecovery,nouuid")
        case "btrfs": ("btrfs", "rescue=nologreplay")
        case "exfat": ("exfat", "")
        case "ntfs": ("ntfs3", "")
        case "vfat": ("vfat", "")
        default: nil
        }
    }

    /// Whether this kernel has the filesystem `kernelType` (/proc/filesystems).
    public static func kernelHas(_ kernelType: String) -> Bool {
        (Sys.readSmallFile("/proc/filesystems") ?? "").split(separator: "\n").contains { $0.split(separator: "\t").last.map(String.init) == kernelType }
    }

    /// A userspace driver for libblkid's `type`: the program's name, the Debian package that has it, its arguments
    /// (read-only, no journal replayed) for `source` at `mountPoint`, and whether it reads the source at an offset
    /// itself (fuse2fs) or needs a loop device over the partition.
    public struct Userspace: Sendable {
        public var program: String
        public var package: String
        public var takesOffset: Bool
        public func arguments(source: String, offset: UInt64, at mountPoint: String) -> [String] {
            switch program {
            case "fuse2fs": [source, mountPoint, "-o", "ro,norecovery,allow_other" + (offset > 0 ? ",offset=\(offset)" : "")]
            case "ntfs-3g": ["-o", "ro,allow_other", source, mountPoint]
            default: ["-o", "ro,allow_other", source, mountPoint]
            }
        }
    }

    public static func userspace(_ type: String) -> Userspace? {
        switch type {
        case "ext2", "ext3", "ext4": Userspace(program: "fuse2fs", package: "fuse2fs", takesOffset: true)
        case "ntfs": Userspace(program: "ntfs-3g", package: "ntfs-3g", takesOffset: false)
        case "vfat": Userspace(program: "fusefat", package: "fusefat", takesOffset: false)
        case "exfat": Userspace(program: "mount.exfat-fuse", package: "exfat-fuse", takesOffset: false)
        default: nil
        }
    }
}
