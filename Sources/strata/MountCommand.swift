import ArgumentParser
import StrataChain

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount the points of a chain, read-only, as files or as the filesystem inside one.",
        usage: "strata mount [<options>] <chain> <dir>",
        discussion: """
            Without --files, DIR holds one read-only file per point, point-N.img (only point N with --point), \
            each the size of the captured source: copy from it, loop-mount it, hand it to a VM. With --files, \
            the filesystem inside the point (--point, or the newest) is mounted read-only at DIR, its journal \
            not replayed; on a partitioned disk (GPT or MBR, read with libblkid) each partition with a \
            filesystem goes at DIR/pN, or only partition N with --partition N. No partition scan is needed and \
            no /dev node is waited for: each partition gets a read-only loop device of its own at its offset \
            (or its driver reads the point at that offset). DIR must be an empty directory.

            DRIVERS: by default a filesystem is read by a userspace driver where Debian has one: fuse2fs for \
            ext2/3/4, ntfs-3g for NTFS, fusefat for FAT, exfat-fuse for exFAT. A backup of a compromised machine \
            can hold a filesystem crafted to attack the driver that parses it; a userspace driver is a process, \
            so such a filesystem attacks that process, where the kernel's driver would hand it the kernel. \
            --kernel-driver mounts with the kernel's instead (ext4 noload, xfs norecovery, btrfs \
            rescue=nologreplay, ntfs3, vfat, exfat: faster, and trusting the image as much as the kernel). XFS \
            and btrfs have no userspace driver and always use the kernel's. A partition that its driver refuses \
            (or that holds swap, LUKS, nothing known) is named in one line with its type and the driver's \
            words; the others still mount.

            Nothing is restored first: reads are served from the chain in place, every block checked against \
            its stored hash; a damaged frame fails the reads that need it with EIO, and one line on the log \
            names the image and frame. Captures, merges and prunes may run on the chain meanwhile: the mounted \
            points keep the images they opened. Reads of point files bypass the page cache (sequential readers \
            are read ahead by the server, in parallel); a program that maps a point file with MAP_SHARED needs \
            --page-cache. With --files and the userspace drivers, the point is read through the page cache, whose \
            read-ahead gathers a driver's small reads.

            mount returns once DIR is usable; the server carries on in the background (its log: --log FILE, or \
            syslog) until `strata unmount DIR`. With --foreground it stays in front and logs to stderr; Ctrl-C \
            unmounts. Needs root (or FUSE for the user) and, for --files, loop devices.

            Exit status 0 once mounted; 64 for a point that does not exist, 65 for a damaged chain or a point \
            with no filesystem to mount (the message says what was found), 64 for a partition --partition \
            names that the point's table does not list, 69 when the machine has no FUSE or \
            no loop devices, 73 when DIR does not exist, is not a directory, is not empty or is already a mount \
            point. Nothing is left mounted or attached when mount fails.

            EXAMPLES
              strata mount /backup/sdb /mnt/sdb
              strata mount /backup/sdb /mnt/tue --point 3 --files
              strata mount /backup/sda /mnt/sda --files --partition 2 --kernel-driver
              cp /mnt/tue/etc/nginx/nginx.conf /etc/nginx/
              strata unmount /mnt/tue
            """)

    @Argument(help: "Chain directory.") var chain: String
    @Argument(help: "An empty directory to mount at.") var dir: String
    @Option(help: "The point to mount (default: every point as files; with --files, the newest).") var point: UInt32?
    @Flag(help: "Mount the filesystem inside the point instead of the point files.") var files = false
    @Option(help: ArgumentHelp("With --files: mount only this partition of the point.", valueName: "n")) var partition: Int?
    @Flag(help: "With --files: mount with the kernel's filesystem drivers, not the userspace ones (fuse2fs, ntfs-3g).")
    var kernelDriver = false
    @Option(help: "Bytes of decoded frames to cache (default 64 MiB).") var cacheSize: Int = 64 << 20
    @Flag(help: "Serve the point files through the page cache (to map them with MAP_SHARED; costs CPU).") var pageCache = false
    @Flag(help: "Stay in the foreground and log to stderr; Ctrl-C unmounts.") var foreground = false
    @Option(help: "Append the background server's log lines to this file (default: syslog).") var log: String?
    @OptionGroup var key: KeyOptions

    func validate() throws {
        guard cacheSize >= 1 else { throw ValidationError("--cache-size must be at least 1") }
        if (partition != nil || kernelDriver) && !files { throw ValidationError("--partition and --kernel-driver go with --files") }
    }

    func run() throws {
        if !foreground && !ServerProcess.isBackgroundChild { try startInBackground() }
        // Before any thread starts: SIGINT, SIGTERM and SIGHUP are taken by one thread, which unmounts.
        ServerProcess.prepare()
        Output.warnIfExposed(chain)
        let detached = ServerProcess.isBackgroundChild
        let lines = LogLines(toSyslog: false)
        var options = MountOptions()
        options.point = point
        options.files = files
        options.cacheBytes = cacheSize
        options.pageCache = pageCache
        options.partition = partition
        options.kernelDriver = kernelDriver
        options.secret = try key.secret()
        let session: MountSession
        do {
            session = try MountSession(chain: chain, directory: dir, options: options)
            try session.mount(log: lines.write)
        } catch {
            throw Output.fail(error)
        }
        for line in session.notices { Output.notice("not mounted: \(line)") }
        ServerProcess.onTermination { session.stop(log: lines.write) }
        if foreground { Output.notice("mounted \(session.summary) at \(session.directory); strata unmount \(session.directory) or Ctrl-C stops") }
        if detached {
            ServerProcess.announceReady(logFile: log)
            lines.toSyslog = log == nil
        }
        session.wait(log: lines.write)
    }

    /// Runs this mount again as a background server and returns its outcome once DIR is usable or it failed
    /// (its error line went to this terminal).
    private func startInBackground() throws -> Never {
        var args = ["mount", chain, dir, "--cache-size", "\(cacheSize)"]
        if let point { args += ["--point", "\(point)"] }
        if files { args.append("--files") }
        if let partition { args += ["--partition", "\(partition)"] }
        if kernelDriver { args.append("--kernel-driver") }
        if pageCache { args.append("--page-cache") }
        if let log { args += ["--log", log] }
        if let keyFile = key.keyFile { args += ["--key-file", keyFile] }  // (STRATA_PASSPHRASE goes with the environment)
        let status: Int32
        do { status = try ServerProcess.startInBackground(args) } catch { throw Output.fail(error) }
        throw ExitCode(status)
    }
}

/// Where a mount's log lines go: stderr, or syslog once a background server has let go of the terminal.
final class LogLines: @unchecked Sendable {  // `toSyslog` is set once, before the server's threads log
    var toSyslog: Bool
    init(toSyslog: Bool) { self.toSyslog = toSyslog }
    func write(_ line: String) { toSyslog ? ServerProcess.syslog(line) : Output.notice(line) }
}

struct UnmountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unmount",
        abstract: "Undo a strata mount: unmount, detach, stop the server.",
        discussion: """
            Unmounts the filesystem strata mount --files mounted at DIR (and its partitions), detaches the loop \
            device, unmounts the point files and waits for the server to stop; or, for a mount of point files, \
            unmounts them. Also cleans up after a server that was killed (a stale FUSE mount). Prints one line \
            per thing done.

            Exit status 0 when everything is undone; 64 when strata mounted nothing at DIR; 75 when DIR is in use \
            (a process has a file open there): nothing more is unmounted, close it and run unmount again.

            EXAMPLES
              strata unmount /mnt/tue
            """)

    @Argument(help: "The directory given to strata mount.") var dir: String
    @Flag(help: "Print nothing on success.") var quiet = false

    func run() throws {
        do {
            let lines = try MountSession.unmount(dir)
            if !quiet { for line in lines { print(line) } }
        } catch {
            throw Output.fail(error)
        }
    }
}
