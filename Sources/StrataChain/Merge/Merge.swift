// `strata merge` and `strata prune`: replace the images of points A..B with one image that restores point B
// exactly, so chains stay short and every restore stays one pass. Work is proportional to what survives:
// a frame whose blocks all survive is copied byte for byte (checksum carried over, verified on the way);
// only frames partly overwritten by newer images are decompressed and their surviving blocks re-packed.
// Crash safety is the capture's: the merged image is published under its own name, then the manifest switches
// to it in one rename, and only then are the replaced images deleted.
import StrataCodec
import StrataFormat
import StrataIO

public struct MergeOptions: Sendable {
    /// First point of the range; nil for the chain's first point (a synthetic full).
    public var from: UInt32? = nil
    /// What the writer accepts of the chain's store.
    public var store = StoreOptions()
    /// The plan's, the workers' and the image's sizes (tests shrink them).
    var tuning = Tuning()
    public var to: UInt32
    public var level: Int32 = 1
    public var threads: Int = Sys.onlineCores
    public var engine: IOEngineChoice = .auto
    /// An encrypted chain's secret (its index is read and written; whole frames are copied without opening them).
    public var secret: UserSecret? = nil

    public init(to: UInt32) { self.to = to }

    /// Refuses a level or a thread count out of range.
    func check() throws {
        guard level >= 1 && level <= 19 else { throw ChainError.invalidOption("level \(level) is not between 1 and 19") }
        guard threads >= 1 && threads <= 1024 else { throw ChainError.invalidOption("threads must be between 1 and 1024") }
    }
}

public struct MergeResult: Sendable, Equatable {
    public var firstPoint: UInt32
    public var lastPoint: UInt32
    public var kind: ImageKind
    public var imagesMerged: Int
    public var framesCopied: Int
    public var framesRepacked: Int
    /// The stored bytes of the source frames re-packed.
    public var bytesRepacked: UInt64
    /// Of the frames copied, those the store copied itself (a bucket's UploadPartCopy), and their bytes.
    public var framesCopiedInStore: Int
    public var bytesCopiedInStore: UInt64
    /// What the merge brought over the network from a store that counts it (a bucket; nil for a directory): the
    /// source images' indexes and the frames it re-packed, and the whole frames it could not have the store copy.
    public var bytesDownloaded: UInt64?
    /// Bytes of the merged image no frame or index holds, left so that the store could copy whole frames rather
    /// than have them downloaded (a bucket: S3's smallest part), at most 1/32 of the image.
    public var bytesPadding: UInt64
    public var bytesBefore: UInt64
    public var bytesStored: UInt64
    public var seconds: Double
    public var image: String
    public var points: [UInt32]
}

public enum Merge {
    public static func run(chain chainPath: String, options: MergeOptions, progress: ProgressHandler? = nil) throws -> MergeResult {
        let started = Sys.monotonicNanos()
        try options.check()
        return try merge(Chain(location: chainPath, access: .write, secret: options.secret, store: options.store), options: options, started: started, progress: progress)
    }

    /// Merges within a chain this writer has open (repair runs several merges under one lock).
    static func merge(_ chain: Chain, options: MergeOptions, started: UInt64 = Sys.monotonicNanos(), progress: ProgressHandler? = nil) throws -> MergeResult {
        guard let manifest = chain.manifest else { throw ChainError.notAChain(path: chain.location) }
        let merged = try write(chain, manifest, from: options.from, to: options.to, options: options, progress: progress)
        let points = try commit(chain, manifest, [merged])
        var r = merged.result
        r.seconds = Double(Sys.monotonicNanos() - started) / 1e9
        r.points = points
        return r
    }

    /// A merged image written and published under its own name, not yet named by the manifest.
    struct MergedImage {
        var entry: ManifestEntry
        /// The files of the images it replaces.
        var replaced: Set<String>
        var result: MergeResult
    }

    /// Writes the image replacing those of points `from`...`to` (nil: from the chain's first point, a synthetic
    /// full) and publishes it. Free space is checked against its bound first (images this run wrote before it
    /// already take theirs).
    static func write(
        _ chain: Chain, _ manifest: ChainManifest, from: UInt32?, to: UInt32, options: MergeOptions, progress: ProgressHandler? = nil
    ) throws -> MergedImage {
        let started = Sys.monotonicNanos()
        let chainPath = chain.location
        let points = manifest.points
        let from = from ?? points[0]
        for p in [from, to] where !points.contains(p) { throw ChainError.noSuchPoint(p, available: points) }
        guard from < to else {
            throw ChainError.invalidOption("the range \(from)..\(to) is \(from == to ? "empty" : "reversed"); give --from lower than --to")
        }
        // The range: every image from the one that ends at `from` to the one that ends at `to`, all replaced. Its
        // images are read back to the newest that covers every block (older ones are not needed: repair merges
        // around damaged images this way).
        guard let start = manifest.images.firstIndex(where: { $0.lastPoint == from }),
            let end = manifest.images.firstIndex(where: { $0.lastPoint == to })
        else { throw ChainError.noSuchPoint(from, available: points) }
        let range = manifest.images[start...end]
        let keys = try chain.dataKeys()
        let sources = try chain.openImages(forPoint: to, from: from)
        let newest = sources.last!.header
        var header = ImageHeader(
            kind: start == 0 ? .full : .incremental, blockSize: newest.blockSize, sourceSize: newest.sourceSize, chainID: newest.chainID,
            imageID: newest.imageID, parentID: start == 0 ? .none : manifest.images[start - 1].imageID, firstPoint: range.first!.firstPoint,
            lastPoint: newest.lastPoint, createdAt: newest.createdAt)
        // Packed frames as the newest image's: a seekable chain stays so.
        if newest.isSeekable { header.incompatibleFeatures |= ImageFeatures.subframes }
        let name = Chain.imageName(first: header.firstPoint, last: header.lastPoint)

        let downloadedBefore = chain.store.bytesDownloaded
        let plan = try MergePlan(sources: sources, copiesInStore: chain.store.copiesInStore, tuning: options.tuning)
        let needed = plan.bytesUpperBound + UInt64(ImageHeader.size)
        if let free = chain.store.freeSpace(), free < needed {
            throw ChainError.insufficientSpace(path: chainPath, needed: needed, available: free)
        }
        let writer = try ImageWriter(
            store: chain.store, name: name, header: header, keys: keys, expectedSize: needed, engine: options.engine, tuning: options.tuning)
        let finished: ImageHeader
        do {
            try plan.write(to: writer, level: options.level, threads: options.threads, progress: progress)
            finished = try writer.finish()
            try chain.store.syncPublished()
        } catch {
            writer.abandon()
            throw wrap(error)
        }
        let old = Array(range)
        let entry = ManifestEntry(
            file: name, imageID: finished.imageID, kind: finished.kind, firstPoint: finished.firstPoint, lastPoint: finished.lastPoint,
            createdAt: finished.createdAt, bytesRead: old.reduce(0) { $0 + $1.bytesRead }, bytesStored: finished.fileSize,
            blocksChanged: finished.dataBlocks + finished.zeroBlocks + finished.unreadableBlocks)
        let result = MergeResult(
            firstPoint: finished.firstPoint, lastPoint: finished.lastPoint, kind: finished.kind, imagesMerged: sources.count,
            framesCopied: plan.framesCopied, framesRepacked: plan.framesRepacked, bytesRepacked: plan.bytesRepacked, framesCopiedInStore: plan.framesCopiedInStore,
            bytesCopiedInStore: plan.bytesCopiedInStore, bytesDownloaded: chain.store.bytesDownloaded.map { $0 - (downloadedBefore ?? 0) },
            bytesPadding: plan.bytesPadding, bytesBefore: old.reduce(0) { $0 + $1.bytesStored },
            bytesStored: finished.fileSize, seconds: Double(Sys.monotonicNanos() - started) / 1e9, image: name, points: [])
        return MergedImage(entry: entry, replaced: Set(old.map(\.file)), result: result)
    }

    /// Makes the chain name the merged images instead of those they replace, in one manifest replacement (so an
    /// interruption leaves every replaced image or none), then removes the replaced ones. Returns the points.
    static func commit(_ chain: Chain, _ manifest: ChainManifest, _ merged: [MergedImage]) throws -> [UInt32] {
        var next = manifest
        for m in merged {
            let at = next.images.firstIndex { m.replaced.contains($0.file) }!
            next.images.removeAll { m.replaced.contains($0.file) }
            next.images.insert(m.entry, at: at)
        }
        do { try chain.commit(next) } catch { throw wrap(error) }
        return next.points
    }
}
