// Consistent images of filesystems in use: `--freeze MOUNTPOINT` (FIFREEZE, thawed by a guardian process
// whatever happens to strata: StrataIO's Freeze.swift) and `--snapshot reflink` (an instant clone of an image
// file: Reflink.swift). With a snapshot, the filesystem is frozen only while the clone is made (the freeze
// flushes it, the clone takes that state, the thaw follows at once), so writers wait milliseconds whatever the
// image's size; without one, it stays frozen while the source is read and is thawed before the image is
// finished. Everything that can be checked is checked before anything is frozen or read.
import StrataIO

public enum SnapshotMethod: String, Sendable, CaseIterable {
    case reflink
}

/// The filesystem --freeze names: frozen while the source is read (no snapshot) or while the clone is made.
final class FreezeWindow {
    let mountPoint: String
    private var frozen: FrozenFilesystem?
    private(set) var seconds: Double?

    init(mountPoint: String) { self.mountPoint = mountPoint }

    /// Freezes the filesystem; nothing where it is frozen already (a chain of used blocks freezes it before
    /// reading its map, and the pipeline's pass finds it frozen).
    func begin() throws {
        guard frozen == nil else { return }
        do { frozen = try FrozenFilesystem(mountPoint: mountPoint) } catch let e as IOError {
            let (reason, todo): (String, String)
            switch e.kind {
            case .unsupported: (reason, todo) = ("its filesystem type cannot be frozen", "capture without --freeze, from a snapshot, or with the filesystem unmounted")
            case .notPermitted: (reason, todo) = ("freezing a filesystem needs root (CAP_SYS_ADMIN)", "run strata as root")
            case .busy: (reason, todo) = ("it is frozen already (by another program)", "thaw it (fsfreeze -u) or wait for that program")
            default: (reason, todo) = ("\(e.operation) failed: \(e.reason)", "check the mount point")
            }
            throw ChainError.cannotFreeze(mountPoint: mountPoint, reason: reason, todo: todo)
        }
    }

    func end() {
        guard let f = frozen else { return }
        seconds = (try? f.thaw()) ?? f.frozenSeconds
        frozen = nil
    }

    deinit { end() }
}

extension Capture {
    /// Checks --freeze and --snapshot against the source and the chain before anything happens; returns the
    /// mount point to freeze (resolved), if any.
    static func checkConsistency(source: String, chain: String, options: CaptureOptions) throws -> String? {
        if options.snapshot == .reflink {
            let st = try? Sys.stat(source)
            guard let st, st.kind == .regular else {
                throw ChainError.cannotSnapshot(
                    path: source, reason: st == nil ? "it does not exist" : "--snapshot reflink clones an image file, and this is not a regular file",
                    todo: "name an image file on XFS (reflink=1) or btrfs, or capture without --snapshot")
            }
        }
        guard let asked = options.freeze else { return nil }
        guard let mountPoint = Sys.realPath(asked), let mounted = Mounts.mounted(at: mountPoint) else {
            throw ChainError.cannotFreeze(mountPoint: asked, reason: "it is not a mount point", todo: "name the directory the filesystem is mounted at")
        }
        guard mounted.readWrite else {
            throw ChainError.cannotFreeze(mountPoint: asked, reason: "it is mounted read-only, so it is consistent already", todo: "capture without --freeze")
        }
        let frozenDevice = try? Sys.stat(mountPoint).device
        if let dev = frozenDevice, ChainStores.isLocal(chain), BlockDevices.filesystemDevice(of: chain) == dev {
            throw ChainError.cannotFreeze(
                mountPoint: asked, reason: "the chain \(chain) is on that filesystem, and its writes would wait for the thaw",
                todo: "keep the chain on another filesystem")
        }
        if options.snapshot == .reflink, let dev = frozenDevice, let st = try? Sys.stat(source), st.device == dev {
            throw ChainError.cannotFreeze(
                mountPoint: asked, reason: "it holds \(source) itself, and the clone would wait for the thaw",
                todo: "name the filesystem inside the image (where it is mounted from a loop device), which the freeze makes consistent")
        }
        return mountPoint
    }

    /// Captures a reflink clone of the image file `sourcePath` (frozen, if `freeze`, only while it is cloned),
    /// reading only what changed since the last one where the chain's record and the kept baseline agree
    /// (ReflinkDeltas.swift); the clone becomes the next capture's baseline once the point is committed.
    static func captureSnapshot(
        of sourcePath: String, chain: String, options: CaptureOptions, freeze: FreezeWindow?, started: UInt64,
        progress: ProgressHandler?, notice: (String) -> Void
    ) throws -> CaptureResult {
        try freeze?.begin()
        let baseline: ReflinkBaseline
        do { baseline = try ReflinkBaseline(image: sourcePath) } catch let e as IOError {
            freeze?.end()
            let unsupported = [.unsupported, .invalid, .crossDevice].contains(e.kind)
            throw ChainError.cannotSnapshot(
                path: sourcePath, reason: unsupported ? "its filesystem cannot make reflink clones" : "the clone failed: \(e.reason)",
                todo: unsupported ? "keep the image on XFS (reflink=1) or btrfs, or capture without --snapshot" : "check the directory holding it has room and is writable")
        } catch {
            freeze?.end()
            throw error
        }
        freeze?.end()
        do {
            let source: BlockSource
            do { source = try BlockSource(path: baseline.clonePath) } catch let e as IOError {
                throw ChainError.sourceUnavailable(path: baseline.clonePath, reason: e.reason)
            }
            var r = try capture(source, chain: chain, options: options, started: started, progress: progress, notice: notice, reading: nil, changeSource: baseline)
            r.snapshot = .reflink
            return r
        } catch {
            baseline.abandon()
            throw error
        }
    }
}

/// The process that thaws a filesystem --freeze froze if strata cannot (StrataIO's FrozenFilesystem): the CLI
/// runs it as a hidden subcommand of this name.
public enum FreezeGuardian {
    public static let command = FrozenFilesystem.guardianCommand
    public static func run(mountPoint: String) -> Never { FrozenFilesystem.watch(mountPoint: mountPoint) }
}
