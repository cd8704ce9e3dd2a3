// `strata restore`: writes one point of a chain to a device or a file in a single pass, in block order.
// This file checks the request and the target before anything is written; RestorePipeline.swift moves bytes.
import StrataCodec
import StrataFormat
import StrataIO

public struct RestoreOptions: Sendable {
    /// The point to restore; nil for the newest.
    public var point: UInt32? = nil
    public var threads: Int = Sys.onlineCores
    public var queueDepth: Int = 16
    public var engine: IOEngineChoice = .auto
    /// After writing, read the target back and check every block against the chain's hashes.
    public var verify = false
    /// Read the target first and write only the blocks that differ from the point (the target keeps its content
    /// where it already holds the point's).
    public var delta = false
    /// With `delta`: the point's free blocks (a chain of used blocks) are discarded on the target (trim, BLKDISCARD,
    /// a punched hole) rather than left as the target has them.
    public var discard = false
    /// Replace an existing non-empty target file (a device in use is refused whatever this says).
    public var force = false
    /// An encrypted chain's secret.
    public var secret: UserSecret? = nil
    /// Restore only this partition of the point (its number in the point's partition table) onto the target.
    public var partition: Int? = nil
    /// Connections to an NBD target, where its server allows several (multi-conn).
    public var nbdConnections = 4
    /// The pipeline's sizes (tests shrink them).
    var tuning = Tuning()

    public init() {}
}

public struct RestoreResult: Sendable, Equatable {
    public var point: UInt32
    /// The partition restored (--partition), where it lies in the point, and what the table says it is.
    public var partition: DiskPartition? = nil
    /// Bytes given to the target: with --delta only the blocks that differed (written, or zeroed), otherwise the
    /// source's size.
    public var bytesWritten: UInt64
    /// --delta: bytes of the target read and compared, and the blocks that differed from the point.
    public var bytesCompared: UInt64 = 0
    public var blocksDiffering: UInt64 = 0
    /// With --delta: the point's free blocks (a chain of used blocks), neither compared nor written: left as the
    /// target had them, or discarded (--discard).
    public var blocksFree: UInt64 = 0
    public var images: Int
    public var seconds: Double
    public var engine: String
    /// Blocks the source could not deliver when the point was captured: written as zeros. Ranges in bytes.
    public var unreadableBlocks: UInt64 = 0
    public var unreadableRanges: [Range<UInt64>] = []
    /// Whether the target was read back and every block matched (`--verify`).
    public var verified = false
}

public enum Restore {
    /// The target that names standard output: the point written to it as a stream, in order, zeros included.
    public static let standardOutput = "-"

    public static func run(
        chain chainPath: String, target targetPath: String, options: RestoreOptions,
        progress: ProgressHandler? = nil, notice: (String) -> Void = { _ in }
    ) throws -> RestoreResult {
        let started = Sys.monotonicNanos()
        if options.discard && !options.delta {
            throw ChainError.invalidOption(
                "--discard applies with --delta, which leaves the free blocks of a chain of used blocks as the target has them; a full restore writes them as zeros")
        }
        let chain = try Chain(location: chainPath, access: .read, secret: options.secret)
        guard let first = chain.manifest else { throw ChainError.notAChain(path: chainPath) }
        _ = try chain.dataKeys()
        let point = options.point ?? first.points.last!
        let images = try chain.openPoint(point)
        let manifest = chain.manifest!  // the one the images were opened under
        let blockSize = Int(manifest.blockSize)
        // What is restored: the whole point, or one partition's blocks of it.
        var part: (partition: DiskPartition, blocks: Range<UInt64>, tailHash: BlockHash?)?
        if let number = options.partition {
            part = try locatePartition(number, chain: chainPath, point: point, blockSize: blockSize, hasher: images.last?.hasher ?? .plain, options)
        }
        let size = part?.partition.size ?? manifest.sourceSize
        let target: RestoreTarget
        if targetPath == Restore.standardOutput {
            guard !Sys.isTerminal(1) else {
                throw ChainError.targetUnavailable(
                    path: "standard output", reason: "it is a terminal; pipe it into a program (| ssh host dd of=/dev/sdb bs=1M) or name a file")
            }
            if options.delta || options.verify {
                throw ChainError.invalidOption("--\(options.delta ? "delta" : "verify") reads the target back, and standard output cannot be read; restore to a file, a device or an NBD export for it")
            }
            target = RestoreTarget(stream: 1, name: "standard output")
        } else if NBDExport.isURI(targetPath) {
            target = RestoreTarget(export: try openExport(targetPath, options))
        } else {
            try Safety.checkRestoreTarget(targetPath, chain: chainPath, force: options.force)
            do { target = try RestoreTarget(path: targetPath, keepingContent: options.delta) } catch let e as IOError {
                if e.isBusy { throw ChainError.targetInUse(path: targetPath, use: .exclusive(device: targetPath)) }
                throw ChainError.targetUnavailable(path: targetPath, reason: e.reason)
            }
        }
        if target.isDeviceLike && target.deviceSize < size {
            throw ChainError.targetTooSmall(path: targetPath, size: target.deviceSize, needed: size)
        }
        if options.delta && target.isCharacterDevice {
            throw ChainError.targetUnavailable(path: targetPath, reason: "--delta reads the target, and a character device cannot be read back")
        }
        if !target.direct && target.stream == nil { notice("\(targetPath) does not support O_DIRECT; writing through the page cache") }
        let frames = FrameReader(images)
        let (reads, note): (ObjectReads, String?)
        let writeQueue: IOQueue
        do {
            (reads, note) = try chain.store.reads(
                engine: options.engine, depth: options.queueDepth, tags: RestorePipeline.slotCount(images: images.count, options: options))
            if let stream = target.stream {
                writeQueue = StreamQueue(stream)
            } else if let export = target.export {
                writeQueue = NBDQueue(export)
            } else {
                (writeQueue, _) = try IOEngine.make(options.engine, depth: options.queueDepth)
            }
        } catch let e as IOError {
            throw ChainError.engineUnavailable("io_uring is unavailable here (\(e.reason))")
        }
        if let note { notice(note) }
        /// What reads the target back and compares it with the point (before writing for --delta, after for --verify).
        func comparer(unitBlocks: Int = 1, freeBlocks: TargetCompare.FreeBlocks) throws -> TargetCompare {
            let source: BlockSource, queue: IOQueue
            if let export = target.export {  // read through the connections the restore writes on
                (source, queue) = (BlockSource(export: export), NBDQueue(export))
            } else {
                source = try BlockSource(path: targetPath)
                if !source.direct { notice("\(targetPath) does not support O_DIRECT; it is read back through the page cache") }
                (queue, _) = try IOEngine.make(options.engine, depth: options.queueDepth)
            }
            return try TargetCompare(
                source, store: chain.store, images: images, blockSize: blockSize, sourceSize: size, queue: queue,
                blocks: part?.blocks, tailHash: part?.tailHash, unitBlocks: unitBlocks, maxWindowBlocks: options.tuning.maxWindowBlocks,
                freeBlocks: freeBlocks)
        }
        var result = RestoreResult(point: point, partition: part?.partition, bytesWritten: size, images: images.count, seconds: 0, engine: reads.engineName)
        do {
            // A block smaller than the target's direct I/O unit is compared and written a unit at a time.
            // Free blocks: --delta leaves them as the target has them (or discards them), and its --verify with it;
            // a full restore writes them as zeros, and its --verify checks those.
            let free: TargetCompare.FreeBlocks = options.discard
                ? .discard({ [target] in try target.discard(offset: $0.lowerBound, length: UInt64($0.count)) }) : .skip
            let delta = try options.delta
                ? comparer(unitBlocks: target.direct ? max(1, target.alignment / blockSize) : 1, freeBlocks: free) : nil
            let pipeline = RestorePipeline(
                frames: frames, images: images, sourceSize: size, blockSize: blockSize,
                target: target, reads: reads, writeQueue: writeQueue, options: options, progress: progress, delta: delta, blocks: part?.blocks)
            try pipeline.run()
            if let compare = delta {
                (result.bytesWritten, result.bytesCompared, result.blocksDiffering) = (pipeline.bytesWritten, compare.bytesCompared, compare.differingBlocks)
                result.blocksFree = compare.freeBlockCount
                (result.unreadableBlocks, result.unreadableRanges) = (compare.unreadableBlocks, compare.unreadableRanges)
            } else {
                (result.unreadableBlocks, result.unreadableRanges) = (pipeline.unreadableBlocks, pipeline.unreadableRanges)
            }
            if options.verify {
                let check = try comparer(freeBlocks: options.delta ? .skip : .zeros)
                try check.run(depth: options.queueDepth, progress: progress)
                if let first = check.firstDiffering {
                    throw ChainError.targetMismatch(path: targetPath, block: first, count: check.differingBlocks)
                }
                result.verified = true
            }
        } catch {
            throw wrap(error)
        }
        result.seconds = Double(Sys.monotonicNanos() - started) / 1e9
        return result
    }

    /// Partition `number` of the point, found in its partition table: its blocks, and the hash its last block has
    /// on a target that ends with the partition (where the partition ends inside a block).
    private static func locatePartition(
        _ number: Int, chain: String, point: UInt32, blockSize: Int, hasher: BlockHasher, _ options: RestoreOptions
    ) throws -> (partition: DiskPartition, blocks: Range<UInt64>, tailHash: BlockHash?) {
        let served = try ServedChain(chain: chain, cacheBytes: 16 << 20, readAheadThreads: 0, secret: options.secret)
        let reader = try served.reader(point: point)
        let p = try PointLayout.read(reader).partition(number)
        let bs = UInt64(blockSize)
        guard p.offset % bs == 0 else {
            throw ChainError.invalidOption(
                "partition \(number) of point \(point) starts at byte \(p.offset), inside one of the chain's \(blockSize)-byte blocks, and --partition restores whole blocks; nothing was written: restore the whole point and copy the partition out of it (or capture such a disk with --block-size 512)")
        }
        let blocks = p.offset / bs..<(p.end + bs - 1) / bs
        guard p.end % bs != 0 else { return (p, blocks, nil) }
        // The last block holds the start of what follows the partition: the target holds only the partition's part.
        let tail = UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 64)
        defer { tail.deallocate() }
        tail.initializeMemory(as: UInt8.self, repeating: 0, count: blockSize)
        let start = (blocks.upperBound - 1) * bs
        _ = try reader.readFully(into: tail, count: Int(p.end - start), at: start)
        return (p, blocks, ZeroBlockDetector(blockSize: blockSize, hasher: hasher).hash(tail))
    }

    /// The NBD export at `uri`, connected for writing.
    private static func openExport(_ uri: String, _ options: RestoreOptions) throws -> NBDExport {
        let export: NBDExport
        do { export = try NBDExport(uri: uri, contexts: [], connections: options.nbdConnections) } catch let e as NBDError {
            throw e.libraryMissing ? ChainError.machineLacks(e.message) : ChainError.targetUnavailable(path: uri, reason: e.message)
        }
        if export.isReadOnly {
            throw ChainError.targetUnavailable(path: uri, reason: "its server exports it read-only (serve it writable: qemu-nbd without -r)")
        }
        return export
    }
}
