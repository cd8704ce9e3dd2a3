// `strata sync SRC DST`: makes DST the chain SRC is, copying only the objects DST lacks, between any two stores
// (a directory, a bucket). DST is a valid chain at every instant: the objects go in first, each published whole,
// and DST's manifest is replaced last, with the same compare-and-swap a capture commits with; objects SRC no
// longer names (merged or pruned away) leave DST only then. So a sync killed at any moment leaves DST as it was
// (plus published objects no manifest names, which the next sync keeps when they are what SRC has, and any other
// writer removes), or as SRC.
//
// Nothing is copied unchecked: each image is opened in SRC (header, index) and every frame passing through is
// checked against its checksum, so a damaged SRC fails the sync, naming the frame, before DST changes. No key is
// needed: an encrypted chain's frames carry checksums over their sealed bytes.
//
// What DST already has is not read again: `verify` DST to check it (sync does not repair a damaged copy).
// What sync refuses, changing nothing: DST holding another chain, or having points SRC has not seen (a capture
// into the copy: replacing DST would lose it). Copying reads and writes several ranges of an object at once
// (`threads`), frame-aligned ranges of up to `rangeBytes`, so a bucket is read and written at its speed.
import StrataCodec
import StrataFormat
import StrataIO

public struct SyncOptions: Sendable {
    /// Ranges copied at once.
    public var threads = 8
    /// What the writer accepts of the destination's store.
    public var store = StoreOptions()
    public init() {}
}

public struct SyncResult: Sendable, Equatable {
    /// The points DST restores now.
    public var points: [UInt32]
    /// Objects copied, and their bytes.
    public var objectsCopied: Int
    public var bytesCopied: UInt64
    /// Objects DST had already (named by its manifest, or left published by an interrupted sync).
    public var objectsKept: Int
    /// Objects removed from DST (SRC merged or pruned them away).
    public var objectsRemoved: Int
    public var seconds: Double
}

public enum Sync {
    /// The most bytes one copy job reads and writes: a ranged GET of this size runs at a store's full speed.
    static let rangeBytes = 8 << 20

    public static func run(from sourcePath: String, to targetPath: String, options: SyncOptions = SyncOptions(), progress: ProgressHandler? = nil) throws -> SyncResult {
        let started = Sys.monotonicNanos()
        guard options.threads >= 1 && options.threads <= 256 else { throw ChainError.invalidOption("threads must be between 1 and 256") }
        guard !sameLocation(sourcePath, targetPath) else {
            throw ChainError.invalidOption("\(sourcePath) and \(targetPath) are the same chain: name two places")
        }
        let source = try Chain(location: sourcePath, access: .read)
        let target = try Chain(location: targetPath, access: .create, cleanUp: false, store: options.store)
        for attempt in 0..<8 {
            do {
                return try sync(source, into: target, options: options, started: started, progress: progress)
            } catch where attempt < 7 && Chain.isMissingObject(error) {
                // A merge or prune replaced images of SRC meanwhile: copy what it names now.
                guard try source.reloadManifest() else { throw error }
            }
        }
        preconditionFailure("unreachable")
    }

    private static func sync(_ source: Chain, into target: Chain, options: SyncOptions, started: UInt64, progress: ProgressHandler?) throws -> SyncResult {
        guard let wanted = source.manifest else { throw ChainError.notAChain(path: source.location) }
        let had = target.manifest
        if let had { try checkFollows(had, wanted, target: target.location, source: source.location) }

        // What DST already holds: what its manifest names, and images an interrupted sync published whole.
        let named = Set((had?.images ?? []).map { "\($0.file) \($0.imageID)" })
        let present = Set(try target.store.list())
        var toCopy: [(name: String, image: ManifestEntry?)] = []
        var kept = Set<String>()
        if let keyFile = wanted.keyFile {
            // A key change in SRC re-wraps the key under the same name: compare the bytes (a small object).
            let bytes = try source.store.readSmall(keyFile, limit: 1 << 16)
            if (try? target.store.readSmall(keyFile, limit: 1 << 16)) == bytes { kept.insert(keyFile) } else { toCopy.append((keyFile, nil)) }
        }
        for e in wanted.images {
            if named.contains("\(e.file) \(e.imageID)") || (present.contains(e.file) && had?.images.contains { $0.file == e.file } != true
                && isWhole(e, in: target.store, sameAs: source.store))
            {
                kept.insert(e.file)
            } else {
                toCopy.append((e.file, e))
            }
        }
        if had?.hashMapFile == wanted.hashMapFile && present.contains(wanted.hashMapFile) {
            kept.insert(wanted.hashMapFile)
        } else {
            toCopy.append((wanted.hashMapFile, nil))
        }
        // What DST's manifest does not name and this sync does not keep: a killed writer's, or stale.
        let referenced = Chain.kept(by: had)
        for name in present.sorted() where Chain.isOurs(name, target.store) && !referenced.contains(name) && !kept.contains(name) {
            try? target.store.remove(name)
        }

        // Each object opened once (an image with its header and index checked); sizes for progress.
        var opened: [(object: StoredObject, image: ImageFile?)] = []
        for c in toCopy {
            if let e = c.image {
                let image = try ImageFile(store: source.store, name: c.name, keys: nil)
                try Chain.check(image.header, of: e, in: wanted)
                opened.append((image.object, image))
            } else {
                opened.append((try source.store.open(c.name), nil))
            }
        }
        let total = opened.reduce(0) { $0 + $1.object.size }
        var done: UInt64 = 0
        for (c, o) in zip(toCopy, opened) {
            try ObjectCopy(name: c.name, object: o.object, image: o.image, to: target.store, threads: options.threads) { n in
                done += n
                progress?(done, total)
            }.run()
        }
        let unchanged = had.map { $0.encode() == wanted.encode() } ?? false
        let before = Set(try target.store.list())
        if !unchanged {
            try target.store.syncPublished()
            try target.commit(wanted)
        }
        let removed = before.subtracting(try target.store.list()).count
        return SyncResult(
            points: wanted.points, objectsCopied: toCopy.count, bytesCopied: total, objectsKept: kept.count, objectsRemoved: removed,
            seconds: Double(Sys.monotonicNanos() - started) / 1e9)
    }

    /// Refuses a DST that is not an earlier state of SRC: another chain, or one with points SRC has not seen.
    static func checkFollows(_ had: ChainManifest, _ wanted: ChainManifest, target: String, source: String) throws {
        guard had.chainID == wanted.chainID else {
            throw ChainError.syncRefused(target: target, detail: "it holds another chain (\(had.chainID)), not a copy of \(source) (\(wanted.chainID))")
        }
        if had.nextPoint > wanted.nextPoint, let newest = had.points.last {
            throw ChainError.syncRefused(target: target, detail: "it has point \(newest), which \(source) has not seen (a capture into the copy)")
        }
        for e in had.images {
            if let w = wanted.images.first(where: { $0.firstPoint == e.firstPoint && $0.lastPoint == e.lastPoint }), w.imageID != e.imageID, w.kind == e.kind {
                throw ChainError.syncRefused(target: target, detail: "its image of point \(e.lastPoint) is not \(source)'s (the two were captured apart)")
            }
        }
    }

    /// Whether `e` is in `store` whole: an object an interrupted sync published (publishing is all or nothing)
    /// with the header of the image SRC names and its size.
    private static func isWhole(_ e: ManifestEntry, in store: ChainStore, sameAs source: ChainStore) -> Bool {
        guard let image = try? ImageFile(store: store, name: e.file, keys: nil), let theirs = try? source.open(e.file) else { return false }
        return image.header.imageID == e.imageID && image.object.size == theirs.size
    }

    private static func sameLocation(_ a: String, _ b: String) -> Bool {
        guard ChainStores.isLocal(a) && ChainStores.isLocal(b) else { return a.trimmingSlashes == b.trimmingSlashes }
        guard let x = try? Sys.stat(a), let y = try? Sys.stat(b) else { return false }
        return x.identity == y.identity
    }
}

extension String {
    fileprivate var trimmingSlashes: Substring {
        var s = Substring(self)
        while s.hasSuffix("/") { s = s.dropLast() }
        return s
    }
}

/// Copies one object between stores: ranges of up to `Sync.rangeBytes` read and written by several threads at
/// once, cut at frame boundaries for an image so that each frame is checked against its checksum as it passes.
final class ObjectCopy: @unchecked Sendable {  // the position handed out is guarded by the run's lock; each buffer is its thread's
    private let name: String
    private let object: StoredObject
    private let target: NewObject
    private let image: ImageFile?
    private let frames: FrameReader?
    private let threads: Int
    private let copied: (UInt64) -> Void

    /// The copying threads, the first error, and the lock of what follows.
    private let stages = PipelineRun()
    /// The next byte and frame not yet given to a worker.
    private var position: UInt64 = 0
    private var nextFrame: UInt32 = 0

    /// `object`: the source, opened; `image`: it opened as an image (its frames are then checked as they pass).
    init(name: String, object: StoredObject, image: ImageFile?, to store: ChainStore, threads: Int, copied: @escaping (UInt64) -> Void) throws {
        self.name = name
        self.image = image
        self.object = object
        frames = image.map { FrameReader([$0]) }
        target = try store.create(name, expectedSize: object.size)
        self.threads = max(1, min(threads, Int(object.size / UInt64(Sync.rangeBytes)) + 1))
        self.copied = copied
    }

    func run() throws {
        let slack = frames?.largest.stored ?? 0
        let buffers = AlignedSlab(slotSize: Sync.rangeBytes + slack, slotCount: threads, alignment: 64)
        for t in 0..<threads {
            stages.spawn("strata-sync-\(t)") { [self] in
                while let job = try nextJob() {
                    try copy(job, through: buffers.slot(t))
                    stages.withLock { copied(UInt64(job.bytes)) }
                }
            }
        }
        do {
            try stages.run {}  // the workers do it all
            try target.publish()
        } catch {
            target.abandon()
            throw error
        }
    }

    private struct Job {
        var offset: UInt64
        var bytes: Int
        var frames: Range<UInt32>
    }

    /// The next range: from where the last ended up to `rangeBytes` (more only for a frame larger than that,
    /// taken whole), never ending inside a frame that lies in file order.
    private func nextJob() throws -> Job? {
        guard !stages.failed else { return nil }
        return try stages.withLock {
            guard position < object.size else { return nil }
            let start = position, first = nextFrame
            let limit = min(object.size, start + UInt64(Sync.rangeBytes))
            var end = limit, last = first
            if let image {
                while last < UInt32(image.index.frameCount) {
                    let r = try image.index.frame(last)
                    let frameEnd = r.offset + UInt64(r.length)
                    if r.offset < start {
                        try checkAlone(last)  // out of file order (no writer makes this): checked on its own
                    } else if frameEnd > limit {
                        if r.offset >= limit { break }
                        if r.offset > start { end = r.offset } else { (end, last) = (frameEnd, last + 1) }
                        break
                    }
                    last += 1
                }
            }
            (position, nextFrame) = (end, last)
            return Job(offset: start, bytes: Int(end - start), frames: first..<last)
        }
    }

    private func copy(_ job: Job, through buffer: UnsafeMutableRawPointer) throws {
        let n = try object.read(into: buffer, count: job.bytes, at: job.offset)
        guard n == job.bytes else {
            throw ChainError.damaged(file: name, detail: "it is cut short at byte \(job.offset + UInt64(n))")
        }
        if let image, let frames {
            for f in job.frames {
                let r = try image.index.frame(f)
                guard r.offset >= job.offset else { continue }  // checked on its own
                try frames.check(FrameRef(image: 0, frame: f), stored: buffer + Int(r.offset - job.offset), .checksum)
            }
        }
        try target.write(buffer, count: job.bytes, at: job.offset)
    }

    /// Checks a frame that does not lie in file order by reading it from the source.
    private func checkAlone(_ f: UInt32) throws {
        guard let frames else { return }
        let r = try frames.record(FrameRef(image: 0, frame: f))
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(Int(r.length), 1), alignment: 64)
        defer { buffer.deallocate() }
        let n = try object.read(into: buffer, count: Int(r.length), at: r.offset)
        try frames.arrived(FrameRef(image: 0, frame: f), bytes: n)
        try frames.check(FrameRef(image: 0, frame: f), stored: buffer, .checksum)
    }
}
