// `strata capture`: the first capture of a chain writes a full image, every later one an incremental holding
// the blocks whose hash differs from the chain's hash map. This file decides what to capture and commits the
// result; CapturePipeline.swift moves the bytes.
import StrataCodec
import StrataFormat
import StrataIO

public struct CaptureOptions: Sendable {
    /// Block size for a new chain; nil takes the chain's (or 4 KiB for a new one).
    public var blockSize: UInt32? = nil
    /// What the writer accepts of the chain's store.
    public var store = StoreOptions()
    /// The pipeline's and the image's sizes (tests shrink them).
    var tuning = Tuning()
    public var level: Int32 = 1
    public var threads: Int = Sys.onlineCores
    public var queueDepth: Int = 32
    public var requestSize: Int = 1 << 20
    public var engine: IOEngineChoice = .auto
    public var allowMounted = false
    /// How many unreadable blocks (media errors that persist when re-read) the capture records before it
    /// gives up. 0: the first read error fails the capture, as a healthy disk should.
    public var maxBadBlocks = 0
    /// The point's time, seconds since the epoch; nil: now. For tests of calendar retention, which need chains
    /// whose points were made at chosen times.
    public var createdAt: UInt64? = nil
    /// A mount point to freeze (FIFREEZE) for a consistent image: while the source is read, or with `snapshot`
    /// only while the snapshot is made.
    public var freeze: String? = nil
    /// Capture a snapshot of the source instead of the source itself.
    public var snapshot: SnapshotMethod? = nil
    /// Blocks stored anew even where their hash matches the chain's (`strata bench`: an incremental capture
    /// with a night's share of changed blocks, compressed and written as a real night's are). Nil: none.
    public var treatAsChanged: (@Sendable (UInt64) -> Bool)? = nil
    /// Make the new chain encrypted (with `secret`); a chain's encryption is chosen when it is made.
    public var encrypt = false
    /// The key file's bytes or the passphrase of an encrypted chain (or of the one `encrypt` makes).
    public var secret: UserSecret? = nil
    /// Store frames in independent 32 KiB sub-frames, so that a point read in place at random decodes 32 KiB,
    /// not 1 MiB (images grow: docs/DESIGN.md, "Random reads"). Nil: as the chain's newest image (a new chain: no).
    public var seekable: Bool? = nil
    /// Read and compare the whole source this time, whatever a change source could say (the weekly safety net).
    public var rescan = false
    /// Rescan when the newest point that scanned the whole source is at least this many seconds old (the shipped
    /// timer's weekly safety net: `--rescan-after 7`, in days, on the command line). Nil: never by age.
    public var rescanAfter: UInt64? = nil
    /// Fail (exit 69, nothing written) where no change source can say what changed, instead of scanning.
    public var requireChangeSource = false
    /// The share of the blocks a change source calls unchanged that is read anyway to check it, in percent.
    public var checkUnchanged: Double = Capture.defaultCheckUnchanged
    /// An NBD source's dirty bitmap to read (the one started when the newest point was captured), and the one
    /// started for the next capture (recorded with this point).
    public var dirtyBitmap: String? = nil
    public var nextDirtyBitmap: String? = nil
    /// Connections to an NBD server that allows several (multi-conn).
    public var nbdConnections = 4
    /// Make the new chain a chain of used blocks: every capture (this and every later one) reads only what the
    /// source's filesystems use, and the rest is zeros in the point. Chosen when the chain is made.
    public var usedBlocks = false
    /// The sample's seed (tests); nil: a new random one each capture.
    var sampleSeed: UInt64? = nil

    public init() {}
}

public struct CaptureResult: Sendable, Equatable {
    public var point: UInt32
    public var kind: ImageKind
    public var sourceBytes: UInt64
    public var bytesRead: UInt64
    public var blocksChanged: UInt64
    public var bytesStored: UInt64
    public var seconds: Double
    public var engine: String
    public var image: String
    /// Blocks the source could not deliver (recorded as unreadable; restored as zeros), and where, in bytes.
    public var unreadableBlocks: UInt64 = 0
    public var unreadableRanges: [Range<UInt64>] = []
    /// Blocks whose stored copy (in a frame the last verify found damaged) this capture stored anew.
    public var blocksHealed: UInt64 = 0
    /// How long --freeze kept the filesystem frozen, measured in this process; nil without --freeze.
    public var frozenSeconds: Double? = nil
    /// The snapshot the capture read instead of the source, if any.
    public var snapshot: SnapshotMethod? = nil
    /// What found the changes (`scan`, `rescan`, `reflink`, `scan-after-missed-writes`).
    public var changeSource: String = ChangeSources.scan
    /// Of `bytesRead`, the bytes read to check the change source's answer.
    public var bytesSampled: UInt64 = 0
    /// Where the sample found a block the change source had called unchanged (the capture then scanned).
    public var missedChangeAt: UInt64? = nil
    /// A chain of used blocks: what each region of the source gave (nil for a chain that reads every block).
    public var usedRegions: [UsedRegion]? = nil
}

/// Called with bytes done and bytes total, from the pipeline's coordinating thread.
public typealias ProgressHandler = (_ done: UInt64, _ total: UInt64) -> Void

public enum Capture {
    /// --check-unchanged's default: 0.1% of what a change source calls unchanged, in runs of 4 MiB (4 GB of a
    /// 4 TB disk: about 25 s on a hard disk, 2 s on NVMe; docs/CHANGES.md).
    public static let defaultCheckUnchanged = 0.1

    /// Captures `sourcePath` into the chain at `chainPath`. `notice` receives one-line remarks (engine fallback).
    public static func run(
        source sourcePath: String, chain chainPath: String, options: CaptureOptions,
        progress: ProgressHandler? = nil, notice: (String) -> Void = { _ in }
    ) throws -> CaptureResult {
        let started = Sys.monotonicNanos()
        if let bs = options.blockSize, !isValidBlockSize(bs) {
            throw ChainError.invalidOption("block size \(bs) is not a power of two between 512 and 1048576")
        }
        guard options.level >= 1 && options.level <= 19 else { throw ChainError.invalidOption("level \(options.level) is not between 1 and 19") }
        guard options.threads >= 1 && options.threads <= 1024 else { throw ChainError.invalidOption("threads must be between 1 and 1024") }
        guard options.queueDepth >= 1 && options.queueDepth <= 1024 else { throw ChainError.invalidOption("queue depth must be between 1 and 1024") }
        guard options.checkUnchanged >= 0 && options.checkUnchanged <= 100 else { throw ChainError.invalidOption("--check-unchanged must be a percentage between 0 and 100") }
        guard options.maxBadBlocks >= 0 else { throw ChainError.invalidOption("--max-bad-blocks must not be negative") }
        if options.encrypt && options.secret == nil { throw Chain.encryptWithoutKey }

        for name in [options.dirtyBitmap, options.nextDirtyBitmap].compactMap({ $0 }) where !DirtyBitmapChanges.isValidName(name) {
            throw ChainError.invalidOption("dirty bitmap name \(name) has characters other than letters, digits and . _ + -")
        }
        guard options.nbdConnections >= 1 && options.nbdConnections <= 64 else { throw ChainError.invalidOption("--connections must be between 1 and 64") }
        if NBDExport.isURI(sourcePath) { return try captureExport(sourcePath, chain: chainPath, options: options, started: started, progress: progress, notice: notice) }
        if options.dirtyBitmap != nil || options.nextDirtyBitmap != nil {
            throw ChainError.invalidOption("dirty bitmaps are read through NBD: name the source by an NBD URI (nbd://, nbd+unix://), served with the bitmap (qemu-nbd -B NAME)")
        }
        let source: BlockSource
        do { source = try BlockSource(path: sourcePath) } catch let e as IOError {
            throw ChainError.sourceUnavailable(path: sourcePath, reason: e.reason)
        }
        if !source.direct { notice("\(sourcePath) does not support O_DIRECT; reading through the page cache") }
        try Safety.checkCaptureSource(sourcePath, chain: chainPath)
        let freezePoint = try checkConsistency(source: sourcePath, chain: chainPath, options: options)
        if let mount = source.readWriteMountPoint(), mount != freezePoint {
            guard options.allowMounted else { throw ChainError.sourceMounted(path: sourcePath, mountPoint: mount) }
            notice("warning: \(sourcePath) is mounted read-write at \(mount); the image may be inconsistent (a snapshot is the safe way)")
        }
        if !source.isBlockDevice {
            // (A reflink capture recovers a committed clone a killed run did not rename before it removes the rest.)
            let baselines = options.snapshot == .reflink ? [] : ReflinkBaseline.removeStale(besides: sourcePath)
            for stale in ReflinkClone.removeStale(besides: sourcePath) + baselines {
                notice("removed \(stale), a snapshot a killed run left")
            }
        }
        let freeze = freezePoint.map(FreezeWindow.init)
        var r = options.snapshot == .reflink
            ? try captureSnapshot(of: sourcePath, chain: chainPath, options: options, freeze: freeze, started: started, progress: progress, notice: notice)
            : try capture(source, chain: chainPath, options: options, started: started, progress: progress, notice: notice, reading: freeze)
        r.frozenSeconds = freeze?.seconds
        return r
    }

    /// Captures an opened source (checked by `run`, or a sample that `strata bench` made) into the chain.
    public static func capture(
        _ source: BlockSource, chain chainPath: String, options: CaptureOptions, started: UInt64 = Sys.monotonicNanos(),
        progress: ProgressHandler? = nil, notice: (String) -> Void = { _ in }
    ) throws -> CaptureResult {
        try capture(source, chain: chainPath, options: options, started: started, progress: progress, notice: notice, reading: nil)
    }

    /// Captures the NBD export `uri`: read through libnbd, its holes and zeros (base:allocation) not read, and
    /// with --dirty-bitmap only what its bitmap marks.
    static func captureExport(
        _ uri: String, chain: String, options: CaptureOptions, started: UInt64, progress: ProgressHandler?, notice: (String) -> Void
    ) throws -> CaptureResult {
        guard options.snapshot == nil, options.freeze == nil else {
            throw ChainError.invalidOption("--snapshot and --freeze are for local files and devices; an NBD export is as consistent as its server makes it (a point-in-time export: docs/CHANGES.md)")
        }
        let contexts = [nbdAllocationContext] + (options.dirtyBitmap.map { [DirtyBitmapChanges.context($0)] } ?? [])
        let export: NBDExport
        do { export = try NBDExport(uri: uri, contexts: contexts, connections: options.nbdConnections) } catch let e as NBDError {
            throw e.libraryMissing ? ChainError.machineLacks(e.message) : ChainError.nbdUnusable(uri: uri, reason: e.message)
        }
        let bitmaps = options.dirtyBitmap != nil || options.nextDirtyBitmap != nil
        let changes = bitmaps ? DirtyBitmapChanges(export: export, bitmap: options.dirtyBitmap, next: options.nextDirtyBitmap) : nil
        do {
            return try capture(BlockSource(export: export), chain: chain, options: options, started: started, progress: progress, notice: notice, reading: nil, changeSource: changes)
        } catch let e as NBDError {
            throw ChainError.nbdUnusable(uri: uri, reason: e.message)
        }
    }

    /// `capture`, with `window` frozen while the source is read, and `changeSource` to say what changed.
    static func capture(
        _ source: BlockSource, chain chainPath: String, options: CaptureOptions, started: UInt64,
        progress: ProgressHandler?, notice: (String) -> Void, reading window: FreezeWindow?, changeSource: ChangeSource? = nil
    ) throws -> CaptureResult {
        let sourcePath = source.path
        let chain = try Chain(location: chainPath, access: .create, secret: options.secret, store: options.store)
        let previous = chain.manifest
        if previous != nil && options.encrypt && !chain.isEncrypted {
            throw ChainError.invalidOption("chain \(chainPath) is not encrypted, and --encrypt applies only when a chain is made: capture into a new directory to start an encrypted chain")
        }
        if previous == nil && options.secret != nil && !options.encrypt {
            throw ChainError.invalidOption("a key was given for a new chain without --encrypt: add --encrypt to make an encrypted chain (or drop the key)")
        }
        var keys = try chain.dataKeys()
        let blockSize = previous?.blockSize ?? options.blockSize ?? 4096
        if let m = previous {
            if let bs = options.blockSize, bs != m.blockSize {
                throw ChainError.sourceMismatch(detail: "--block-size \(bs) differs from the chain's \(m.blockSize)")
            }
            guard m.sourceSize == source.size else {
                throw ChainError.sourceMismatch(detail: "the source has \(source.size) bytes, the chain's has \(m.sourceSize)")
            }
        }
        if let m = previous, options.usedBlocks, !m.usedBlocks {
            throw ChainError.invalidOption(
                "chain \(chainPath) reads every block, and --used-blocks applies only when a chain is made: capture into a new directory to start a chain of used blocks")
        }
        let followsUse = previous?.usedBlocks ?? options.usedBlocks
        let point = previous?.nextPoint ?? 1
        let chainID = previous?.chainID ?? .random()
        if previous == nil && options.encrypt { keys = try chain.startEncryption(chainID: chainID) }
        let parent = previous?.images.last
        var options = options
        if options.seekable == nil {
            // (An image whose header cannot be read does not stop a capture: it makes an ordinary one.)
            options.seekable = parent.flatMap { try? ImageFile.header(in: chain.store, name: $0.file).isSeekable } ?? false
        }
        var header = ImageHeader(
            kind: previous == nil ? .full : .incremental, blockSize: blockSize, sourceSize: source.size, chainID: chainID,
            imageID: .random(), parentID: parent?.imageID ?? .none, firstPoint: point, lastPoint: point,
            createdAt: options.createdAt ?? Sys.wallClockSeconds)
        if options.seekable == true { header.incompatibleFeatures |= ImageFeatures.subframes }
        let imageName = Chain.imageName(first: point, last: point)
        let mapName = Chain.hashMapName(point: point)

        var engine = options.engine
        if source.onFUSE && engine == .auto {
            engine = .pread
            notice("\(sourcePath) is on a FUSE filesystem, where io_uring can miss a failed read; reading with pread threads")
        }
        let (queue, engineNote): (IOQueue, String?)
        if let export = source.export {
            (queue, engineNote) = (NBDQueue(export), nil)
        } else {
            do { (queue, engineNote) = try IOEngine.make(engine, depth: options.queueDepth) } catch let e as IOError {
                throw ChainError.engineUnavailable("io_uring is unavailable here (\(e.reason))")
            }
        }
        if let engineNote { notice(engineNote) }

        // What can say what changed: its answer, or why it cannot (then the source is scanned).
        if let m = previous, let age = options.rescanAfter, !options.rescan, changeSource != nil {
            // The newest point that read everything (points from before change sources were recorded did).
            let scans: Set<String> = [ChangeSources.scan, ChangeSources.rescan, ChangeSources.scanAfterMiss]
            let lastScan = m.images.last { m.changeSources[$0.point].map(scans.contains) ?? true }
            let now = options.createdAt ?? Sys.wallClockSeconds
            let recent = lastScan.map { now >= $0.createdAt && now - $0.createdAt < age } ?? false
            if !recent {
                notice("the last capture that read the whole source is older than --rescan-after: scanning it all")
                options.rescan = true
            }
        }
        var found = options.rescan && previous != nil ? ChangeSources.rescan : ChangeSources.scan
        var answer: (any ChangedRanges)?
        var cannot: String?
        var oldMap: PriorHashes?
        var healing: [Range<UInt64>] = []
        if let m = previous { (oldMap, healing) = try HeadMap.forCapture(chain, m, maxWindowBlocks: options.tuning.maxWindowBlocks, notice: notice) }
        if previous == nil {
            cannot = "this is the chain's first capture"
        } else if options.rescan {
            cannot = nil
        } else if let changeSource, let m = previous {
            if oldMap == nil {
                cannot = "the newest point's hashes cannot be read"
            } else {
                switch try changeSource.changes(since: m) {
                case .changes(let ranges): answer = ranges
                case .cannot(let why): cannot = why
                }
            }
        } else {
            cannot = "nothing says what changed in \(sourcePath) (--snapshot reflink does, for an image file on XFS or btrfs)"
        }
        if answer == nil, !options.rescan, let cannot {
            if options.requireChangeSource {
                changeSource?.abandon()
                throw ChainError.noChangeSource(cannot)
            }
            if previous != nil && changeSource != nil { notice("\(cannot): scanning the whole source") }
        }
        // A chain of used blocks: what the source's filesystems use now, read instead of the whole source.
        var usedPlan: UsedPlan?
        var usedRegions: [UsedRegion]?
        var freeBefore: [Range<UInt64>] = []
        if followsUse {
            if source.export != nil {
                notice("the filesystems of an NBD export are not read for their used blocks: reading every block")
            } else {
                // A filesystem frozen for the capture is frozen before its map is read, so that the map and the
                // blocks read are of one instant (the freeze is held until the pipeline has read the source).
                var frozen: UsedBlocks.Frozen?
                if let window, let device = try? Sys.stat(window.mountPoint).device {
                    try window.begin()
                    frozen = UsedBlocks.Frozen(mountPoint: window.mountPoint, device: device)
                }
                let (used, regions) = try UsedBlocks.find(path: sourcePath, size: source.size, frozen: frozen)
                for r in regions where r.reason != nil {
                    let what = r.partition.map { $0 == 0 ? "the disk" : "partition \($0)" } ?? "what lies outside the partitions"
                    notice("\(what)\(r.content.map { " (\($0))" } ?? ""): read whole: \(r.reason!)")
                }
                let data = try source.dataRanges(granule: UInt64(max(Int(blockSize), source.alignment)))
                usedPlan = UsedPlan(
                    size: source.size, requestSize: max(options.requestSize / Int(blockSize), 1) * Int(blockSize),
                    unit: max(Int(blockSize), source.alignment), used: used, data: data)
                usedRegions = regions
                if answer != nil, let m = previous {
                    // What the newest point holds as free: a block used now that was free is read whatever the
                    // change source says (a filesystem may take a block without writing it).
                    do {
                        guard let before = try HeadMap.forCapture(chain, m, maxWindowBlocks: options.tuning.maxWindowBlocks, notice: { _ in }).map else {
                            throw ChainError.damaged(file: m.hashMapFile, detail: "the newest point's hashes cannot be read")
                        }
                        freeBefore = try HeadMap.freeRanges(before, blockSize: blockSize, sourceSize: source.size)
                    } catch {
                        notice("the newest point's free blocks cannot be read (\(Verify.describe(error))): reading every used block")
                        answer = nil
                    }
                }
            }
        }
        if answer != nil, let changeSource { found = changeSource.name }

        var missedAt: UInt64?
        var attempt: (finished: ImageHeader, stats: CapturePipeline.Stats)?
        let requestSize = max(options.requestSize / Int(blockSize), 1) * Int(blockSize)
        do {
            if let answer {
                let plan = ChangePlan(
                    size: source.size, requestSize: requestSize,
                    unit: max(Int(blockSize), source.alignment), changed: answer,
                    heal: healing.map { $0.lowerBound * UInt64(blockSize)..<min($0.upperBound * UInt64(blockSize), source.size) },
                    samplePercent: options.checkUnchanged, seed: options.sampleSeed ?? UInt64.random(in: 0...UInt64.max),
                    used: usedPlan?.used, freeBefore: freeBefore)
                do {
                    attempt = try captureOnce(
                        source, chain: chain, header: header, keys: keys, queue: queue, options: options, oldMap: oldMap,
                        map: nil, plan: plan, progress: progress, window: window)
                } catch let miss as CapturePipeline.MissedChange {
                    missedAt = miss.offset
                    notice("\(found) called the block at byte \(miss.offset) unchanged, and it changed: it missed writes; scanning the whole source")
                    found = ChangeSources.scanAfterMiss
                    (oldMap, _) = try HeadMap.forCapture(chain, previous!, maxWindowBlocks: options.tuning.maxWindowBlocks, notice: { _ in })
                }
            }
            if answer == nil || missedAt != nil {
                let map = HashMapHeader(blockSize: blockSize, sourceSize: source.size, chainID: chainID, imageID: header.imageID, point: point)
                do {
                    attempt = try captureOnce(
                        source, chain: chain, header: header, keys: keys, queue: queue, options: options, oldMap: oldMap,
                        map: map, plan: usedPlan, progress: progress, window: window)
                } catch let miss as CapturePipeline.MissedChange {
                    // Only an NBD server's word on holes is sampled in a scan: it called data zeros.
                    notice("\(sourcePath): the server called the bytes at \(miss.offset) zeros (block status), and they are not; reading every block")
                    if let m = previous { (oldMap, _) = try HeadMap.forCapture(chain, m, maxWindowBlocks: options.tuning.maxWindowBlocks, notice: { _ in }) }
                    let chunks = Int((source.size + UInt64(requestSize) - 1) / UInt64(requestSize))
                    attempt = try captureOnce(
                        source, chain: chain, header: header, keys: keys, queue: queue, options: options, oldMap: oldMap,
                        map: map, plan: ScanPlan(size: source.size, requestSize: requestSize, dataChunks: [0..<chunks]), progress: progress, window: window)
                }
            }
        } catch {
            changeSource?.abandon()
            throw error
        }
        let (finished, stats) = attempt!
        if let late = oldMap?.lateNotice { notice(late) }
        let entry = ManifestEntry(
            file: imageName, imageID: finished.imageID, kind: finished.kind, firstPoint: point, lastPoint: point,
            createdAt: finished.createdAt, bytesRead: stats.bytesRead, bytesStored: finished.fileSize,
            blocksChanged: stats.blocksChanged)
        var next = previous ?? ChainManifest(chainID: chainID, blockSize: blockSize, sourceSize: source.size, nextPoint: point, images: [], hashMapFile: mapName)
        next.nextPoint = point + 1
        next.images.append(entry)
        if found == changeSource?.name, let m = previous {
            // No map written: the map stays, and this image lies over it with the others after its point.
            next.hashMapPoint = m.hashMapPoint ?? m.images.last!.lastPoint
        } else {
            next.hashMapFile = mapName
            next.hashMapPoint = nil
        }
        next.changeSources[point] = found
        next.usedBlocks = followsUse
        if let usedRegions { next.usedSummaries[point] = UsedBlocks.summary(usedRegions) }
        next.keyFile = keys == nil ? nil : ChainKeyFile.fileName
        changeSource?.willCommit(&next)
        do { try chain.commit(next) } catch {
            changeSource?.abandon()
            throw wrap(error)
        }
        changeSource?.didCommit(next)
        var result = CaptureResult(
            point: point, kind: finished.kind, sourceBytes: source.size, bytesRead: stats.bytesRead,
            blocksChanged: stats.blocksChanged, bytesStored: finished.fileSize,
            seconds: Double(Sys.monotonicNanos() - started) / 1e9, engine: queue.engineName, image: imageName,
            unreadableBlocks: stats.unreadableBlocks,
            unreadableRanges: stats.unreadableRanges.map { $0.lowerBound * UInt64(blockSize)..<min(source.size, $0.upperBound * UInt64(blockSize)) },
            blocksHealed: healing.reduce(0) { $0 + UInt64($1.count) })
        result.changeSource = found
        result.bytesSampled = stats.bytesSampled
        result.missedChangeAt = missedAt
        result.usedRegions = usedRegions
        return result
    }

    /// One pass of the pipeline into a new image (and, with `map`, a new hash map), both published but not yet
    /// committed; on failure both are abandoned. The bytes read by a pass abandoned for a missed change are
    /// not counted in the next.
    private static func captureOnce(
        _ source: BlockSource, chain: Chain, header: ImageHeader, keys: ChainKeys?, queue: IOQueue, options: CaptureOptions,
        oldMap: PriorHashes?, map: HashMapHeader?, plan: ReadPlan?, progress: ProgressHandler?, window: FreezeWindow?
    ) throws -> (ImageHeader, CapturePipeline.Stats) {
        let imageName = Chain.imageName(first: header.firstPoint, last: header.lastPoint)
        // At most every block stored raw, with its hash, plus the index: the source's size and a little.
        let writer = try ImageWriter(
            store: chain.store, name: imageName, header: header, keys: keys, expectedSize: header.sourceSize + header.sourceSize / 64 + (64 << 20),
            engine: options.engine, tuning: options.tuning)
        let mapWriter: HashMapWriter?
        do {
            mapWriter = try map.map { try HashMapWriter(store: chain.store, name: Chain.hashMapName(point: $0.point), header: $0, keys: keys) }
        } catch {
            writer.abandon()
            throw error
        }
        do {
            let pipeline = try CapturePipeline(
                source: source, queue: queue, blockSize: Int(header.blockSize), options: options, oldMap: oldMap,
                image: writer, newMap: mapWriter, plan: plan, progress: progress)
            try window?.begin()
            defer { window?.end() }
            let stats = try pipeline.run()
            window?.end()
            let finished = try writer.finish()
            try mapWriter?.finish()
            try chain.store.syncPublished()
            return (finished, stats)
        } catch {
            writer.abandon()
            mapWriter?.abandon()
            if error is CapturePipeline.MissedChange { throw error }
            throw wrap(error)
        }
    }
}

func wrap(_ error: Error) -> Error {
    if let e = error as? IOError { return ChainError.io(e) }
    return error
}
