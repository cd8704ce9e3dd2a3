// What `strata mount --files` asks of the kernel, and `strata unmount` undoes: read-only loop devices over a
// file (LOOP_CONFIGURE, partitions scanned, cleared automatically when the last user lets go), filesystem
// mounts and unmounts, the mount table, and the filesystem a device holds, told by its signature.
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

    /// Attaches a free loop device to `file`, read-only, its partitions scanned; it detaches itself when the
    /// last holder lets go (the returned value, then any filesystem mounted from it).
    public static func attachReadOnly(_ file: String) throws -> AttachedLoop {
        let backing = try Sys.descriptor(file, O_RDONLY)
        let control = try Sys.descriptor("/dev/loop-control", O_RDWR)
        // Another program may take the device between asking and configuring it: ask again.
        for _ in 0..<16 {
            let n = try Sys.deviceControl(control.rawValue, ctlGetFree, nil, "find a free loop device through", path: "/dev/loop-control")
            let path = "/dev/loop\(n)"
            let device = try Sys.descriptor(path, O_RDONLY)
            // struct loop_config: fd, block_size, struct loop_info64 (232 bytes: lo_flags at 52), 64 reserved.
            var config = [UInt8](repeating: 0, count: 8 + 232 + 64)
            config.withUnsafeMutableBytes { c in
                c.storeBytes(of: UInt32(backing.rawValue), toByteOffset: 0, as: UInt32.self)
                c.storeBytes(of: flagsReadOnly | flagsAutoClear | flagsPartScan, toByteOffset: 8 + 52, as: UInt32.self)
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

/// The filesystem (or other content) a device or file holds, told by its signature.
public enum FilesystemSignature: Equatable, Sendable {
    /// A filesystem the kernel can mount read-only, its type for mount(2), and the options that keep a
    /// read-only mount from writing (a journal not replayed).
    case mountable(type: String, options: String)
    /// Something else: its name, for the message.
    case other(String)
    case none

    /// Reads the signature at the start of `path`.
    public static func of(_ path: String) -> FilesystemSignature {
        guard let file = try? Sys.descriptor(path, O_RDONLY) else { return .none }
        let fd = file.rawValue
        var b = [UInt8](repeating: 0, count: 70 << 10)
        let n = b.withUnsafeMutableBytes { Sys.preadOnce(fd, $0.baseAddress!, $0.count, 0) }
        guard n > 0 else { return .none }  // (past a short read the buffer stays zero)
        func at(_ offset: Int, _ s: String) -> Bool { Array(s.utf8) == Array(b[offset..<(offset + s.utf8.count)]) }
        if b[1080] == 0x53 && b[1081] == 0xEF { return .mountable(type: "ext4", options: "noload") }
        if at(0, "XFSB") { return .mountable(type: "xfs", options: "norecovery,nouuid") }
        if at(65600, "_BHRfS_M") { return .mountable(type: "btrfs", options: "rescue=nologreplay") }
        if at(3, "EXFAT   ") { return .mountable(type: "exfat", options: "") }
        if at(3, "NTFS    ") { return .mountable(type: "ntfs3", options: "") }
        if at(54, "FAT") || at(82, "FAT32") { return .mountable(type: "vfat", options: "") }
        if at(0, "LUKS") && b[4] == 0xBA && b[5] == 0xBE { return .other("LUKS") }
        if at(512 + 0, "LABELONE") { return .other("LVM2 physical volume") }
        if at(4086, "SWAPSPACE2") || at(4086, "SWAP-SPACE") { return .other("swap") }
        if at(512, "EFI PART") || (b[510] == 0x55 && b[511] == 0xAA) { return .other("a partition table") }
        return .none
    }
}
