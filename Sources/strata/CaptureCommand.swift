import ArgumentParser
import StrataChain

extension IOEngineChoice: ExpressibleByArgument {}
extension SnapshotMethod: ExpressibleByArgument {}

/// The guardian of a frozen filesystem (`--freeze`): started by capture itself, never by a person.
struct FreezeGuardianCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: FreezeGuardian.command, shouldDisplay: false)
    @Argument var mountPoint: String
    func run() throws { FreezeGuardian.run(mountPoint: mountPoint) }
}

struct CaptureCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capture",
        abstract: "Capture a block device or image file into a chain.",
        discussion: """
            The first capture into CHAIN (a directory, created if missing) writes a full image; every later one an \
            incremental image of the blocks whose content changed since the previous capture. Holes of a sparse \
            image file are not read. A capture that is interrupted (Ctrl-C, kill, power cut, full disk) leaves the \
            chain as it was; the next run removes its temporary files. A missing or damaged hash map of the newest \
            point is rebuilt from its images (their hash tables, not their data), with one notice; blocks the \
            newest point takes from frames the last `strata verify` found damaged are stored anew (healed), so the \
            new point is whole. A new chain's directory is created 0700 and every chain file 0600, whatever the \
            umask; a chain readable by other users gets a warning line.

            SAFETY: a source that is part of CHAIN (one of its files, inside it, a loop device over one) or the \
            disk holding CHAIN's filesystem is refused (exit 77): the capture would image its own writes. So is a \
            source mounted read-write, unless --allow-mounted.

            CONSISTENCY: --freeze MOUNTPOINT freezes the filesystem mounted there (FIFREEZE) so that the image is \
            consistent, and thaws it on every exit path: a guardian process thaws it if strata dies, even by \
            SIGKILL. Without a snapshot the filesystem stays frozen while the source is read (writers wait); a \
            source mounted read-write at MOUNTPOINT is then allowed. --snapshot reflink captures an instant clone \
            of an image file (XFS with reflink, btrfs) instead of the file, and removes the clone afterwards (a \
            clone a killed run left is removed by the next run); with --freeze (naming the filesystem inside the \
            image, mounted from a loop device) it is frozen only while the clone is made: milliseconds. What \
            cannot be done (no freeze on that filesystem, no reflinks, the chain on the frozen filesystem) is \
            refused before anything is read (exit 69).

            CHANGES: an incremental reads the whole source and compares every block's hash with the chain's, \
            unless something can say what changed since the newest point. With --snapshot reflink it can: the \
            clone is kept as the next capture's baseline (in .strata-baselines/ beside the image, 0700, named by \
            the chain; it pins the blocks changed since, on the image's filesystem), and the next capture reads \
            only the ranges whose extents differ between the baseline and the new clone. A change source is \
            checked, not trusted: --check-unchanged PERCENT of what it calls unchanged (default 0.1, in runs of \
            4 MiB; 0 turns it off) is read too, and a block there that differs from the chain's means the source \
            missed writes: the capture says so and scans the whole source in the same run. Where nothing can \
            answer (a first capture, a baseline missing or changed since), the capture says why and scans; \
            --require-change-source makes that an error (exit 69, nothing written). --rescan reads and compares \
            everything this time; --rescan-after DAYS does so when the last capture that did is that old (the \
            weekly safety net: --rescan-after 7). `strata list` shows what found each point's changes.

            NBD: a source named by an NBD URI (nbd://HOST[:PORT]/EXPORT, nbds:// with TLS, \
            nbd+unix:///EXPORT?socket=PATH) is read through libnbd, many reads in flight on up to --connections \
            connections (where the server allows multi-conn); its holes and zeros are not read, but for \
            --check-unchanged of them, which must read as zeros (else every block is read). --dirty-bitmap \
            NAME reads only what QEMU's bitmap NAME marks, where the chain records NAME as started when its \
            newest point was captured (--next-dirty-bitmap names the bitmap started at this capture's instant, \
            for the next one). strata-qemu-capture(1) rotates the bitmaps for a QEMU image at rest or a disk in \
            use (docs/CHANGES.md). A server that cannot be reached, refuses the export or breaks the protocol: \
            exit 66; one that drops the connection mid-capture: exit 74; the chain as it was.

            A read error on the source stops the capture (exit 74) and leaves the chain unchanged, unless \
            --max-bad-blocks allows some: then a failed read is retried in smaller reads down to the device's \
            logical block size, and the blocks that still fail are recorded as unreadable (restored as zeros, \
            reported by capture, restore and verify). A block with any unreadable sector counts as unreadable. \
            The next capture reads them again.

            USED BLOCKS: --used-blocks, at a chain's first capture, makes a chain of used blocks: that capture and \
            every later one read only the blocks the source's filesystems use, and store the rest as zeros. The \
            promise: every block a filesystem on the source uses restores bit for bit; every block no filesystem \
            uses restores as zeros (holes in a file); and everything Strata cannot read a filesystem's map for is \
            captured whole: the partition tables and the gaps between partitions, an unknown or damaged \
            filesystem, LUKS, a filesystem whose map it does not trust. The partition table (GPT, MBR) and each \
            partition's type come from libblkid; ext2/3/4 maps from libext2fs's block bitmaps (read whole, with \
            a notice: one that needs journal recovery, such as a filesystem mounted read-write, or is not clean, \
            or whose bitmaps disagree with its group descriptors); NTFS maps from libntfs-3g's $Bitmap (read \
            whole, with a notice: a volume Windows left hibernated or by Fast Startup, marked dirty, with a \
            $LogFile not clean, or whose bitmap does not cover its own metadata); XFS maps from its free-space \
            B+trees (read whole, with a notice: a log not clean, such as a filesystem mounted or crashed, or on \
            another device, or a tree that fails its checks); swap keeps its header; btrfs, FAT and anything else \
            are read whole for now, each with a notice. A filesystem of the source \
            that is mounted and named by --freeze is frozen before its map is read, and its map is the kernel's \
            (FS_IOC_GETFSMAP; ext4 and XFS), of the same instant as the blocks read. An incremental reads only \
            used blocks: \
            a block turned free becomes zeros in the new point without being read. With --snapshot reflink it \
            reads only the used blocks that changed, and every block turned used (a filesystem may take one \
            without writing it). `strata list --json` shows \
            what each point read of each partition. A chain made without the flag reads every block, as before.

            SEEKABLE: --seekable stores each frame (1 MiB of blocks) as 32 zstd frames of 32 KiB that decode on \
            their own, so that a point read in place (`strata mount`, `strata serve`) at random decodes 32 KiB, not \
            1 MiB: random 4 KiB reads about 10x faster, images about 7% (full) to 18% (incremental) larger. A chain \
            stays as its newest image is: later captures and merges follow it without the flag; --no-seekable \
            turns it off from the next image on.

            --json prints one object: point, kind (full or incremental), sourceBytes, bytesRead, blocksChanged, \
            bytesStored, seconds, engine, image, blocksHealed, unreadableBlocks, unreadableRanges ([offset, length] in bytes, \
            the first 1000), frozenSeconds (with --freeze), snapshot (with --snapshot), changeSource (scan, rescan, \
            reflink, scan-after-missed-writes), bytesSampled (of bytesRead, read to check the change source), \
            missedChangeAt (the byte where the check found a missed write, else null), usedBlocks (a chain of used \
            blocks: usedBytes, and regions, each partition (its number, 0 for a disk without a table, null for \
            what lies outside the partitions), offset, size, content, method (bitmap, swap-header, whole), \
            usedBytes, reason (why it was read whole)); null for a chain that reads every block.

            EXAMPLES
              strata capture /dev/sdb /backup/sdb
              strata capture disk.img /backup/vm1 --block-size 65536 --json
              strata capture /dev/nvme0n1 /backup/nvme --io-engine pread --threads 8
              strata capture /dev/sdb /backup/sdb --max-bad-blocks 1000  # a dying disk
              strata capture /dev/vdb /backup/data --freeze /srv/data   # vdb at /srv/data
              strata capture /var/lib/vm/web.img /backup/web --snapshot reflink
              strata capture 'nbd+unix:///?socket=/run/vm1.sock' /backup/vm1
              strata capture nbd://10.0.0.5:10809/disk0 /backup/host5 --dirty-bitmap b7 \\
                  --next-dirty-bitmap b8    # a bitmap rotation: strata-qemu-capture(1)
              strata capture /dev/vdc /backup/vm2 --seekable    # to read at random later
              strata capture /dev/sda /backup/sda --used-blocks  # free space: zeros
            """)

    @Argument(help: "Block device, image file or NBD URI (nbd://, nbds://, nbd+unix://) to read.") var source: String
    @Argument(help: "Chain directory.") var chain: String
    @Option(help: "Block size for a new chain: a power of two from 512 to 1048576 (default 4096).") var blockSize: UInt32?
    @Option(help: "zstd compression level, 1-19.") var level: Int32 = 1
    @Option(help: "Hashing and compression threads (default: one per core).") var threads: Int?
    @Option(help: "Read requests in flight.") var queueDepth: Int = 32
    @Option(help: "I/O engine: auto (io_uring, else pread threads), uring, or pread.") var ioEngine: IOEngineChoice = .auto
    @Flag(help: "Capture even if the source is mounted read-write (the image may be inconsistent).") var allowMounted = false
    @Option(help: "Unreadable blocks to record before giving up (default 0: the first read error fails the capture).")
    var maxBadBlocks: Int = 0
    @Option(help: ArgumentHelp("Freeze the filesystem mounted here while the source (or, with --snapshot, the clone) is taken.", valueName: "mountpoint"))
    var freeze: String?
    @Option(help: ArgumentHelp("Capture a snapshot of the source instead: reflink (an image file on XFS or btrfs).", valueName: "method"))
    var snapshot: SnapshotMethod?
    @Option(help: ArgumentHelp("Read only what this dirty bitmap of the NBD source marks (started when the newest point was captured).", valueName: "name"))
    var dirtyBitmap: String?
    @Option(help: ArgumentHelp("The dirty bitmap started for the next capture, at this capture's snapshot (recorded with the point).", valueName: "name"))
    var nextDirtyBitmap: String?
    @Option(help: "Connections to an NBD server that allows several (multi-conn).") var connections: Int = 4
    @Flag(help: "Read and compare the whole source this time, whatever a change source could say.") var rescan = false
    @Option(help: ArgumentHelp("Rescan when the last capture that read the whole source is this many days old (a weekly net: 7).", valueName: "days"))
    var rescanAfter: UInt64?
    @Flag(help: "Fail (exit 69, nothing written) where nothing can say what changed, instead of scanning.")
    var requireChangeSource = false
    @Option(help: ArgumentHelp("Share of what a change source calls unchanged to read anyway, as a check (default 0.1).", valueName: "percent"))
    var checkUnchanged: Double = Capture.defaultCheckUnchanged
    @Option(help: .hidden) var createdAt: UInt64?
    @Flag(help: "Print one JSON object with the result on stdout.") var json = false
    @Flag(help: "No progress line.") var quiet = false
    @OptionGroup var metrics: MetricsFile
    @Flag(help: "Make the new chain a chain of used blocks: free space is not read and restores as zeros (chosen when a chain is made).")
    var usedBlocks = false
    @Flag(help: "Make the new chain encrypted with --key-file or STRATA_PASSPHRASE (chosen when a chain is made).") var encrypt = false
    @Flag(
        inversion: .prefixedNo,
        help: "Store frames in 32 KiB pieces that decode on their own: random reads of a mounted or served point 10x faster, images 7-18% larger (default: as the chain's newest image; a new chain: no).")
    var seekable: Bool?
    @OptionGroup var key: KeyOptions

    @OptionGroup var store: StoreArguments

    func run() throws {
        Output.warnIfExposed(chain)
        try metrics.check()
        let clock = RunMetrics.Stopwatch()
        var options = CaptureOptions()
        options.blockSize = blockSize
        options.level = level
        options.threads = threads ?? Machine.onlineCores
        options.queueDepth = queueDepth
        options.engine = ioEngine
        options.allowMounted = allowMounted
        options.maxBadBlocks = maxBadBlocks
        options.createdAt = createdAt
        options.freeze = freeze
        options.snapshot = snapshot
        options.encrypt = encrypt
        options.seekable = seekable
        options.secret = try key.secret()
        options.store = store.value
        options.rescan = rescan
        options.rescanAfter = rescanAfter.map { $0 * 86400 }
        options.dirtyBitmap = dirtyBitmap
        options.nextDirtyBitmap = nextDirtyBitmap
        options.nbdConnections = connections
        options.requireChangeSource = requireChangeSource
        options.checkUnchanged = checkUnchanged
        options.usedBlocks = usedBlocks
        let progress = ProgressLine(verb: "capture", quiet: quiet)
        do {
            let r = try Capture.run(source: source, chain: chain, options: options, progress: progress.update, notice: Output.notice)
            progress.finish()
            metrics.record("capture", chain: chain, clock: clock, seconds: r.seconds, read: r.bytesRead, stored: r.bytesStored, capture: r)
            if json {
                Output.json(Report(r))
            } else if !quiet {
                let rate = Double(r.bytesRead) / max(r.seconds, 0.001)
                if r.unreadableBlocks > 0 { Output.unreadable(r.unreadableBlocks, r.unreadableRanges, "recorded as unreadable") }
                if r.blocksHealed > 0 { Output.notice("healed \(r.blocksHealed) block\(r.blocksHealed == 1 ? "" : "s") the last verify found damaged: stored anew, so point \(r.point) is whole") }
                if let f = r.frozenSeconds { Output.notice("\(freeze ?? "the filesystem") was frozen for \(Output.fixed(f, 3)) s") }
                let found = r.bytesSampled > 0 || r.changeSource != ChangeSources.scan ? ", changes found by \(r.changeSource)\(r.bytesSampled > 0 ? " (checked \(Output.bytes(r.bytesSampled)) of the rest)" : "")" : ""
                print("point \(r.point) (\(r.kind == .full ? "full" : "incremental")): read \(Output.bytes(r.bytesRead))\(found), \(r.blocksChanged) blocks changed, stored \(Output.bytes(r.bytesStored)) in \(Output.fixed(r.seconds, 2)) s (\(Output.bytes(UInt64(rate)))/s)")
            }
        } catch {
            progress.finish()
            metrics.record("capture", chain: chain, clock: clock, failure: error)
            throw Output.fail(error)
        }
    }
}

extension CaptureCommand {
    /// What --json prints (the help's JSON paragraph names each field).
    struct Report: Encodable {
        var point: UInt32, kind: String, sourceBytes, bytesRead, blocksChanged, bytesStored: UInt64
        var seconds: Seconds, engine, image: String
        var blocksHealed, unreadableBlocks: UInt64, unreadableRanges: [[UInt64]]
        var frozenSeconds: Seconds?, snapshot: String?
        var changeSource: String, bytesSampled: UInt64, missedChangeAt: OrNull<UInt64>
        var usedBlocks: OrNull<UsedReport>

        init(_ r: CaptureResult) {
            (point, kind, sourceBytes, bytesRead) = (r.point, r.kind == .full ? "full" : "incremental", r.sourceBytes, r.bytesRead)
            (blocksChanged, bytesStored, seconds, engine, image) = (r.blocksChanged, r.bytesStored, Seconds(r.seconds), r.engine, r.image)
            (blocksHealed, unreadableBlocks, unreadableRanges) = (r.blocksHealed, r.unreadableBlocks, Output.ranges(r.unreadableRanges))
            (frozenSeconds, snapshot) = (r.frozenSeconds.map(Seconds.init), r.snapshot?.rawValue)
            (changeSource, bytesSampled, missedChangeAt) = (r.changeSource, r.bytesSampled, OrNull(r.missedChangeAt))
            usedBlocks = OrNull(r.usedRegions.map { UsedReport($0, offsets: true) })
        }
    }
}

/// A chain of used blocks' regions, as capture --json and list --json print them.
struct UsedReport: Encodable {
    struct Region: Encodable {
        var partition: OrNull<Int>, offset: UInt64?, size: UInt64, content: OrNull<String>, method: String, usedBytes: UInt64
        var reason: OrNull<String>?
    }
    var usedBytes: UInt64, regions: [Region]

    /// `offsets`: the regions' offsets and reasons are known (a capture's; the manifest keeps neither).
    init(_ regions: [UsedRegion], offsets: Bool) {
        usedBytes = regions.reduce(0) { $0 + $1.usedBytes }
        self.regions = regions.map { r in
            Region(
                partition: OrNull(r.partition), offset: offsets ? r.offset : nil, size: r.size, content: OrNull(r.content), method: r.method,
                usedBytes: r.usedBytes, reason: offsets ? OrNull(r.reason) : nil)
        }
    }
}
