// Freezing a filesystem (FIFREEZE) for a consistent image, and the guardian that makes sure it is thawed.
// A filesystem left frozen is the worst outcome a backup tool can have (every writer on the machine hangs), and
// a process cannot thaw anything after SIGKILL, so the freeze is watched from outside: before freezing, strata
// starts itself again as a guardian (in a session of its own, so a Ctrl-C on the terminal does not reach it)
// holding the read end of a pipe whose write end only strata holds. When strata thaws it says so on the pipe
// and the guardian leaves; when the pipe closes without that word (strata killed, crashed, or exited on an
// error path that missed the thaw) or the guardian itself is told to stop (systemd stopping the unit signals
// every process of it), the guardian thaws at once. Thawing a filesystem that is not frozen fails with EINVAL
// and is harmless, so the two sides never need to agree on who thawed.
#if canImport(Glibc)
import Glibc
#endif

extension Result {
    var isSuccess: Bool { if case .success = self { true } else { false } }
}

/// A filesystem frozen for as long as the value lives (or until `thaw`), watched by a guardian process.
public final class FrozenFilesystem {
    public let mountPoint: String
    private let fd: Int32
    private let guardian: pid_t
    private var control: Int32
    private let frozenAt: UInt64
    /// How long the filesystem stayed frozen, once thawed.
    public private(set) var frozenSeconds: Double = 0

    /// The hidden subcommand the guardian runs as (`strata <commandName> MOUNTPOINT`).
    public static let guardianCommand = "__freeze-guardian"

    static let fifreeze: UInt = 0xC004_5877  // _IOWR('X', 119, int)
    static let fithaw: UInt = 0xC004_5878  // _IOWR('X', 120, int)

    /// Freezes the filesystem mounted at `mountPoint` once its guardian is watching. Throws `IOError` when the
    /// mount point cannot be opened, the guardian cannot start, or the filesystem cannot be frozen (EOPNOTSUPP:
    /// it has no freeze; EPERM: not root; EBUSY: frozen already).
    public init(mountPoint: String) throws {
        self.mountPoint = mountPoint
        let directory = try Sys.descriptor(mountPoint, O_RDONLY | O_DIRECTORY)
        let controlEnds = try Sys.pipe(for: "the freeze guardian of \(mountPoint)")
        let controlWrite = FileDescriptor(owning: controlEnds.write)
        let readyEnds: (read: Int32, write: Int32)
        do { readyEnds = try Sys.pipe(for: "the freeze guardian of \(mountPoint)") } catch {
            Sys.close(controlEnds.read)
            throw error
        }
        let readyRead = FileDescriptor(owning: readyEnds.read)
        let spawned: Result<Int32, IOError>
        do {
            // The guardian's ends, closed here once it holds its copies: its stdin and stdout.
            let controlRead = FileDescriptor(owning: controlEnds.read), readyWrite = FileDescriptor(owning: readyEnds.write)
            spawned = Daemon.spawnSelf(
                [Self.guardianCommand, mountPoint],
                descriptors: ChildDescriptors(nullError: true, dups: [(controlRead.rawValue, 0), (readyWrite.rawValue, 1)]))
        }
        let word = spawned.isSuccess ? Sys.readByte(readyRead.rawValue) : nil
        guard case .success(let pid) = spawned, word == UInt8(ascii: "R") else {
            if case .success(let pid) = spawned { _ = Sys.waitExit(pid) }
            if case .failure(let e) = spawned { throw e }
            throw IOError("start the freeze guardian of", path: mountPoint, errno: ECHILD)
        }
        guardian = pid
        control = controlWrite.release()
        fd = directory.release()
        frozenAt = Sys.monotonicNanos()
        do { try Sys.deviceControl(fd, Self.fifreeze, value: 0, "freeze", path: mountPoint) } catch {
            release()
            throw error
        }
    }

    /// Thaws the filesystem and lets the guardian go. Returns how long it was frozen.
    @discardableResult
    public func thaw() throws -> Double {
        guard control >= 0 else { return frozenSeconds }
        var failure: IOError?
        do { try Sys.deviceControl(fd, Self.fithaw, value: 0, "thaw", path: mountPoint) } catch let e as IOError { failure = e }
        frozenSeconds = Double(Sys.monotonicNanos() - frozenAt) / 1e9
        release()
        if let failure, failure.kind != .invalid { throw failure }  // EINVAL: not frozen (the guardian thawed it)
        return frozenSeconds
    }

    /// Tells the guardian the filesystem is thawed and waits for it to leave.
    private func release() {
        Sys.writeByte(control, UInt8(ascii: "T"))
        Sys.close(control)
        control = -1
        _ = Sys.waitExit(guardian)
        Sys.close(fd)
    }

    deinit { try? thaw() }

    /// The guardian's whole life (the hidden subcommand): says it is ready on stdout, then waits on stdin. "T"
    /// means strata thawed: leave. End of file, an error, or SIGTERM/SIGINT/SIGHUP: thaw, then leave.
    public static func watch(mountPoint: String) -> Never {
        guard let directory = try? Sys.descriptor(mountPoint, O_RDONLY | O_DIRECTORY) else { Sys.exitNow(1) }
        let fd = directory.release()  // held until the process ends
        Sys.thawOnTermination(fd, request: fithaw)
        Sys.writeByte(1, UInt8(ascii: "R"))
        Sys.closeNumber(1)
        Sys.leaveWorkingDirectory()
        if Sys.readByte(0) != UInt8(ascii: "T") { _ = try? Sys.deviceControl(fd, fithaw, value: 0, "thaw", path: mountPoint) }
        Sys.exitNow(0)
    }
}
