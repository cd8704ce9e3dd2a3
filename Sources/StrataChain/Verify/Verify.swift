// `strata verify`: proves a chain restorable without restoring it. Checks the manifest, every image's header
// and index, that each image is the one the manifest names and links to the one before, the head hash map, and
// every frame: its checksum and (unless `checksumsOnly`) its decompressed blocks against their stored hashes.
// Damage does not stop the walk: every damaged image and frame is named, with the source blocks it holds, and
// each point is judged whole or affected by what it actually needs. A reader: it takes no lock and runs beside a
// capture or merge; the one thing it writes is the damage record (damage.strata), which tells the next capture
// which blocks to heal. FrameScan.swift reads and checks the frames.
import StrataCodec
import StrataFormat
import StrataIO

public struct VerifyOptions: Sendable {
    /// Only what this point needs (its images, the frames its blocks come from); nil: the whole chain.
    public var point: UInt32? = nil
    /// Check frame checksums only, without decompressing and hashing every block.
    public var checksumsOnly = false
    public var threads: Int = Sys.onlineCores
    public var queueDepth: Int = 16
    public var engine: IOEngineChoice = .auto
    /// After a whole-chain verify, write what was found damaged for the next capture to heal (repair's dry run
    /// does not).
    public var recordDamage = true
    /// An encrypted chain's secret; without it only `checksumsOnly` runs (frames checked as stored, extents unread).
    public var secret: UserSecret? = nil
    /// The walk's sizes (tests shrink them).
    var tuning = Tuning()

    public init() {}
}

/// One damaged thing: the file, what is wrong, and (for a frame) the source blocks it holds.
public struct VerifyProblem: Sendable, Equatable {
    public var file: String
    public var detail: String
    /// Source block ranges whose stored copy is lost, where known (a damaged frame).
    public var blocks: [Range<UInt64>]
}

public struct VerifyReport: Sendable, Equatable {
    public var points: [UInt32]
    public var images: Int
    public var frames: Int
    public var bytesRead: UInt64
    public var problems: [VerifyProblem]
    public var affectedPoints: [UInt32]
    public var wholePoints: [UInt32]
    public var seconds: Double
    public var isWhole: Bool { problems.isEmpty }
}

public enum Verify {
    public static func run(chain chainPath: String, options: VerifyOptions, progress: ProgressHandler? = nil) throws -> VerifyReport {
        let started = Sys.monotonicNanos()
        guard options.threads >= 1 && options.threads <= 1024 else { throw ChainError.invalidOption("threads must be between 1 and 1024") }
        let chain = try Chain(location: chainPath, access: .read, secret: options.secret)
        // Without the key of an encrypted chain, only what is stored can be checked: frames against their checksums
        // and the index's structure; not extents (sealed), so damage is placed by image, not by block.
        let blind = chain.isEncrypted && chain.keys == nil
        if blind && !options.checksumsOnly { throw ChainError.keyNeeded(path: chainPath) }
        var opened = try open(chain, options, blind: blind)
        // A merge may have replaced images between this reader's reading the manifest and opening them: a missing
        // image is damage only if the manifest still names it.
        for _ in 0..<8 where opened.missing {
            guard try chain.reloadManifest() else { break }
            opened = try open(chain, options, blind: blind)
        }
        let entries = opened.entries
        let images = opened.images
        var problems = opened.problems
        let frames = FrameReader(images)
        // The images point i needs: from the newest one at or before it that covers every block.
        func needed(_ i: Int) -> ArraySlice<ImageFile?> {
            let base = images[...i].lastIndex { $0?.header.coversEveryBlock ?? false } ?? 0
            return images[base...i]
        }
        /// Walks the resolved extents of the images a point needs, with frames named by their place in `images`.
        func walk(_ slice: ArraySlice<ImageFile?>, _ body: (ResolvedExtent) throws -> Void) throws {
            try PointWalk(slice.map { $0! }, maxBlocks: options.tuning.maxWindowBlocks).forEach {
                var r = $0
                r.image += UInt32(slice.startIndex)
                try body(r)
            }
        }

        // Frames: all of every image, or those the point's blocks come from.
        let work: FrameWork
        if options.point != nil && !blind {
            var list: [FrameRef] = []
            let slice = needed(images.count - 1)
            if !slice.contains(where: { $0 == nil }) {
                var seen = Set<FrameRef>()
                try walk(slice) { r in
                    if r.kind == .data && seen.insert(r.frameRef).inserted { list.append(r.frameRef) }
                }
                list.sort()
            }
            work = FrameWork(list)
        } else {
            work = FrameWork(allOf: images)
        }
        let scan = FrameScan(frames: frames, work: work, store: chain.store, options: options, progress: progress)
        let damagedFrames = try scan.run()
        // The source blocks each damaged frame holds: one walk of each affected image's extents.
        var blocks: [FrameRef: [Range<UInt64>]] = [:]
        for i in Set(damagedFrames.keys.map(\.image)).sorted() where !blind {
            try frames.images[i]!.index.forEachExtent { e in
                let f = FrameRef(image: i, frame: e.frame)
                if e.kind == .data && damagedFrames[f] != nil { blocks[f, default: []].append(e.firstBlock..<e.endBlock) }
            }
        }
        for (f, detail) in damagedFrames.sorted(by: { $0.key < $1.key }) {
            problems.append(VerifyProblem(file: frames.image(f).name, detail: detail, blocks: blocks[f] ?? []))
        }

        // Which points still restore: a point is affected when it needs a broken image, or a damaged frame
        // holds one of its blocks (a frame whose blocks a later image overwrote does not affect it).
        var affected: [UInt32] = [], whole: [UInt32] = []
        for (i, e) in entries.enumerated() {
            guard options.point == nil || e.point == options.point else { continue }
            let slice = needed(i)
            var ok = !slice.contains { $0 == nil }
            if ok && blind {
                ok = !damagedFrames.keys.contains { slice.indices.contains($0.image) }
            } else if ok && !damagedFrames.isEmpty {
                try walk(slice) { r in
                    if r.kind == .data && damagedFrames[r.frameRef] != nil { ok = false }
                }
            }
            if ok { whole.append(e.point) } else { affected.append(e.point) }
        }
        if options.point == nil && options.recordDamage { record(damagedFrames, opened, chain.store, frames) }
        return VerifyReport(
            points: entries.map(\.point), images: images.count, frames: work.count, bytesRead: scan.bytesRead,
            problems: problems, affectedPoints: affected, wholePoints: whole,
            seconds: Double(Sys.monotonicNanos() - started) / 1e9)
    }

    /// Writes what a whole-chain verify found into the damage record, for the next capture to heal (or removes a
    /// stale record when nothing is damaged). Best effort: the report is the verify's answer, the record a hint.
    private static func record(_ damagedFrames: [FrameRef: String], _ opened: Opened, _ store: ChainStore, _ frames: FrameReader) {
        var record = DamageRecord()
        for (i, image) in opened.images.enumerated() where image == nil { record.images.insert(opened.entries[opened.entries.startIndex + i].imageID) }
        for f in damagedFrames.keys { record.frames.insert(DamageRecord.Frame(imageID: frames.image(f).header.imageID, frame: f.frame)) }
        if record.isEmpty {
            if (try? store.readSmall(DamageRecord.fileName, limit: 64 << 20)) != nil { try? store.remove(DamageRecord.fileName) }
            return
        }
        try? store.publishWhole(DamageRecord.fileName, record.encode())
    }

    /// What the walk starts from: the manifest, the entries to check, each image opened (nil where it failed:
    /// headers, indexes, identity and links; such an image is unusable as a whole) and the problems so far.
    private struct Opened {
        var entries: ArraySlice<ManifestEntry>
        var images: [ImageFile?] = []
        var problems: [VerifyProblem] = []
        /// Whether an image or the hash map was missing (a merge or capture may have replaced it meanwhile).
        var missing = false
    }

    private static func open(_ chain: Chain, _ options: VerifyOptions, blind: Bool) throws -> Opened {
        guard let manifest = chain.manifest else { throw ChainError.notAChain(path: chain.location) }
        let entries: ArraySlice<ManifestEntry>
        if let p = options.point {
            guard let e = manifest.images(forPoint: p) else { throw ChainError.noSuchPoint(p, available: manifest.points) }
            entries = e
        } else {
            entries = manifest.images[...]
        }
        var opened = Opened(entries: entries)
        var previous: ManifestEntry?
        for (i, e) in entries.enumerated() {
            do {
                let image = try ImageFile(store: chain.store, name: e.file, keys: chain.keys)
                try Chain.check(image.header, of: e, in: manifest)
                if !blind { try image.index.checkWhole() }
                // The link to the image before can be checked only when that one could be read.
                if i == 0 || previous != nil {
                    try Chain.check(image.header, of: e, follows: previous)
                }
                opened.images.append(image)
                previous = e
            } catch {
                if case ChainError.damaged(_, ChainError.missingDetail) = error { opened.missing = true }
                opened.problems.append(VerifyProblem(file: e.file, detail: describe(error), blocks: []))
                opened.images.append(nil)
                previous = nil
            }
        }
        if options.point == nil && !blind, let problem = checkHashMap(chain.store, manifest, keys: chain.keys) {
            if problem.detail.hasPrefix(ChainError.missingDetail) { opened.missing = true }
            opened.problems.append(problem)
        }
        return opened
    }

    /// The head hash map (what the next capture compares with): its header names the newest image, and every
    /// chunk passes its checksum. Damage here affects no point, and the next capture works around it.
    private static func checkHashMap(_ store: ChainStore, _ m: ChainManifest, keys: ChainKeys?) -> VerifyProblem? {
        guard let problem = HeadMap.problem(store, m, keys: keys) else { return nil }
        return VerifyProblem(
            file: m.hashMapFile, detail: problem + " (no point is affected; the next capture rebuilds it from the images, as does strata repair)",
            blocks: [])
    }

    static func describe(_ error: Error) -> String { ChainError.damage(of: error).detail }
}
