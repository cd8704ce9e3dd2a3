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
}

/// Called with bytes done and bytes total, from the pipeline's coordinating thread.
public typealias ProgressHandler = (_ done: UInt64, _ total: UInt64) -> Void

public enum Capture {
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
        guard options.maxBadBlocks >= 0 else { throw ChainError.invalidOption("--max-bad-blocks must not be negative") }
        if options.encrypt && options.secret == nil { throw Chain.encryptWithoutKey }

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
            for stale in ReflinkClone.removeStale(besides: sourcePath) { notice("removed \(stale), a snapshot a killed run left") }
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

    /// `capture`, with `window` frozen while the source is read.
    static func capture(
        _ source: BlockSource, chain chainPath: String, options: CaptureOptions, started: UInt64,
        progress: ProgressHandler?, notice: (String) -> Void, reading window: FreezeWindow?
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

        var oldMap: PriorHashes?
        var healing: UInt64 = 0
        if let m = previous { (oldMap, healing) = try HeadMap.forCapture(chain, m, maxWindowBlocks: options.tuning.maxWindowBlocks, notice: notice) }

        var engine = options.engine
        if source.onFUSE && engine == .auto {
            engine = .pread
            notice("\(sourcePath) is on a FUSE filesystem, where io_uring can miss a failed read; reading with pread threads")
        }
        let (queue, engineNote): (IOQueue, String?)
        do { (queue, engineNote) = try IOEngine.make(engine, depth: options.queueDepth) } catch let e as IOError {
            throw ChainError.engineUnavailable("io_uring is unavailable here (\(e.reason))")
        }
        if let engineNote { notice(engineNote) }

        // At most every block stored raw, with its hash, plus the index: the source's size and a little.
        let writer = try ImageWriter(
            store: chain.store, name: imageName, header: header, keys: keys, expectedSize: header.sourceSize + header.sourceSize / 64 + (64 << 20),
            engine: options.engine, tuning: options.tuning)
        let mapWriter: HashMapWriter
        do {
            mapWriter = try HashMapWriter(
                store: chain.store, name: mapName,
                header: HashMapHeader(blockSize: blockSize, sourceSize: source.size, chainID: chainID, imageID: header.imageID, point: point),
                keys: keys)
        } catch {
            writer.abandon()
            throw error
        }
        let finished: ImageHeader
        let stats: CapturePipeline.Stats
        do {
            let pipeline = try CapturePipeline(
                source: source, queue: queue, blockSize: Int(blockSize), options: options, oldMap: oldMap,
                image: writer, newMap: mapWriter, progress: progress)
            try window?.begin()
            defer { window?.end() }
            stats = try pipeline.run()
            window?.end()
            finished = try writer.finish()
            try mapWriter.finish()
            try chain.store.syncPublished()
        } catch {
            writer.abandon()
            mapWriter.abandon()
            throw wrap(error)
        }
        if let late = oldMap?.lateNotice { notice(late) }
        let entry = ManifestEntry(
            file: imageName, imageID: finished.imageID, kind: finished.kind, firstPoint: point, lastPoint: point,
            createdAt: finished.createdAt, bytesRead: stats.bytesRead, bytesStored: finished.fileSize,
            blocksChanged: stats.blocksChanged)
        var next = ChainManifest(
            chainID: chainID, blockSize: blockSize, sourceSize: source.size, nextPoint: point + 1,
            images: (previous?.images ?? []) + [entry], hashMapFile: mapName)
        next.keyFile = keys == nil ? nil : ChainKeyFile.fileName
        do { try chain.commit(next) } catch { throw wrap(error) }
        return CaptureResult(
            point: point, kind: finished.kind, sourceBytes: source.size, bytesRead: stats.bytesRead,
            blocksChanged: stats.blocksChanged, bytesStored: finished.fileSize,
            seconds: Double(Sys.monotonicNanos() - started) / 1e9, engine: queue.engineName, image: imageName,
            unreadableBlocks: stats.unreadableBlocks,
            unreadableRanges: stats.unreadableRanges.map { $0.lowerBound * UInt64(blockSize)..<min(source.size, $0.upperBound * UInt64(blockSize)) },
            blocksHealed: healing)
    }
}

func wrap(_ error: Error) -> Error {
    if let e = error as? IOError { return ChainError.io(e) }
    return error
}
