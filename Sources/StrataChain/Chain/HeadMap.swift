// The head hash map is derived data: the hashes of the newest point's blocks, which each frame carries beside
// its blocks and the index says for zero and unreadable ones. So a missing or damaged map is rebuilt from the
// newest point's images (their indexes and the hash tables at the head of each frame: 16 bytes read a block,
// never the data), not fatal. And where the last whole-chain verify recorded damaged frames (DamageRecord), the
// blocks the newest point still takes from them read as `.damaged` in the map a capture compares with, so the
// capture stores them anew: the new point is whole again.
import StrataCodec
import StrataFormat
import StrataIO

enum HeadMap {
    /// What is wrong with the chain's head map, or nil when it is whole: it names the newest image and every
    /// chunk passes its checksum (the map is read through once).
    static func problem(_ store: ChainStore, _ m: ChainManifest, keys: ChainKeys?) -> String? {
        do {
            let reader = try open(store, m, keys: keys)
            let blocks = blockCountFor(sourceSize: m.sourceSize, blockSize: m.blockSize)
            var at: UInt64 = 0
            while at < blocks {
                let n = Int(min(UInt64(HashMapHeader.chunkBlocks), blocks - at))
                _ = try reader.hashes(from: at, count: n)
                at += UInt64(n)
            }
            return nil
        } catch {
            return Verify.describe(error)
        }
    }

    /// The byte ranges the newest point holds as free (a chain of used blocks: `BlockHash.free`), sorted and
    /// joined, from `hashes` read through once (16 bytes a block, no image data).
    static func freeRanges(_ hashes: PriorHashes, blockSize: UInt32, sourceSize: UInt64) throws -> [Range<UInt64>] {
        let blocks = blockCountFor(sourceSize: sourceSize, blockSize: blockSize), size = UInt64(blockSize)
        var out: [Range<UInt64>] = []
        var at: UInt64 = 0
        while at < blocks {
            let n = Int(min(UInt64(HashMapHeader.chunkBlocks), blocks - at))
            let p = try hashes.hashes(from: at, count: n)
            var i = 0
            while i < n {
                guard p[i] == .free else {
                    i += 1
                    continue
                }
                var j = i + 1
                while j < n && p[j] == .free { j += 1 }
                out.appendJoining((at + UInt64(i)) * size..<min((at + UInt64(j)) * size, sourceSize))
                i = j
            }
            at += UInt64(n)
        }
        return out
    }

    /// The map's file, its header checked: it must be of this chain and source, and of the newest point, or of
    /// the point the manifest names (`hashMapPoint`; where that point's image is still listed, of that image).
    static func open(_ store: ChainStore, _ m: ChainManifest, keys: ChainKeys?) throws -> HashMapReader {
        let file = try HashMapReader(store: store, name: m.hashMapFile, keys: keys)
        let h = file.header
        guard h.chainID == m.chainID, h.sourceSize == m.sourceSize, h.blockSize == m.blockSize else {
            throw ChainError.damaged(file: m.hashMapFile, detail: "it is not this chain's")
        }
        if let point = m.hashMapPoint {
            let image = m.images.first { $0.lastPoint == point }
            guard h.point == point, image.map({ $0.imageID == h.imageID }) ?? true else {
                throw ChainError.damaged(file: m.hashMapFile, detail: "it is not point \(point)'s")
            }
        } else {
            guard h.imageID == m.images.last!.imageID else { throw ChainError.damaged(file: m.hashMapFile, detail: "it is not the newest point's") }
        }
        return file
    }

    /// The images that lie over the map: those of the points after the map's (none when it is the newest point's).
    static func overlay(_ m: ChainManifest) -> ArraySlice<ManifestEntry> {
        guard let point = m.hashMapPoint else { return [] }
        return m.images.drop { $0.lastPoint <= point }
    }

    /// What a capture compares with, and the blocks it will heal: the head map's file, its header checked
    /// now and each chunk's checksum as the capture reads it, and where either fails, the newest point's hashes
    /// rebuilt from its images (one notice; a map found damaged mid-way switches there, and its notice comes
    /// with `PriorHashes.lateNotice`). Blocks the newest point takes from recorded damaged frames read as
    /// `.damaged`. nil (after a notice) when the newest point's images cannot be read: the capture then compares
    /// nothing and stores every non-zero block.
    /// `maxWindowBlocks`: the rebuild's walk's windows (`Tuning`'s).
    static func forCapture(
        _ chain: Chain, _ m: ChainManifest, maxWindowBlocks: UInt64 = .max, notice: (String) -> Void
    ) throws -> (map: PriorHashes?, healing: [Range<UInt64>]) {
        let blockCount = blockCountFor(sourceSize: m.sourceSize, blockSize: m.blockSize)
        let newest = m.images.last!.lastPoint
        let storeEverything = "this capture compares nothing and stores every non-zero block"
        var opened: [ImageFile]?
        var runs: [Range<UInt64>] = []
        if let record = readRecord(chain.store, notice: notice), !record.isEmpty {
            do {
                opened = try chain.openPoint(newest)
                runs = try damagedRuns(opened!, record)
            } catch {
                notice("the newest point's images cannot be read (\(Verify.describe(error))): \(storeEverything)")
                return (nil, [])
            }
        }
        let healing = runs
        let damaged = runs
        let rebuild = { () throws -> RebuiltHashes in
            let rebuilt = try RebuiltHashes(chain.store, opened ?? chain.openPoint(newest), blockCount: blockCount, maxWindowBlocks: maxWindowBlocks)
            rebuilt.damagedRuns = damaged
            return rebuilt
        }
        do {
            let file = try open(chain.store, m, keys: chain.keys)
            file.damagedRuns = damaged
            let map = HeadMapHashes(file: file, name: m.hashMapFile, rebuild: rebuild)
            guard let point = m.hashMapPoint, !overlay(m).isEmpty else { return (map, healing) }
            // The images after the map's point, newest winning, over it: the newest point's hashes.
            let images = try chain.openImages(forPoint: newest, from: point + 1)
            let overlaid = try RebuiltHashes(chain.store, images, blockCount: blockCount, maxWindowBlocks: maxWindowBlocks, base: map)
            overlaid.damagedRuns = damaged
            return (overlaid, healing)
        } catch {
            let problem = "\(m.hashMapFile): \(Verify.describe(error))"
            do {
                let rebuilt = try rebuild()
                notice("\(problem); rebuilding it from the newest point's images (their hash tables, not their data)")
                return (rebuilt, healing)
            } catch {
                notice("\(problem), and the newest point's images cannot be read (\(Verify.describe(error))): \(storeEverything)")
                return (nil, [])
            }
        }
    }

    /// The damage recorded by the last whole-chain verify, if any (an unreadable record is ignored, with a notice).
    static func readRecord(_ store: ChainStore, notice: (String) -> Void) -> DamageRecord? {
        let bytes: [UInt8]
        do { bytes = try store.readSmall(DamageRecord.fileName, limit: 64 << 20) } catch { return nil }
        do { return try DamageRecord.decode(bytes) } catch {
            notice("\(DamageRecord.fileName) cannot be read (\(error)); ignoring it (run verify to record damage again)")
            return nil
        }
    }

    /// The block ranges the newest point takes from frames (or whole images) the record names, in order.
    static func damagedRuns(_ images: [ImageFile], _ record: DamageRecord) throws -> [Range<UInt64>] {
        var runs: [Range<UInt64>] = []
        try PointWalk(images).forEach { e in
            guard e.kind == .data else { return }
            let id = images[Int(e.image)].header.imageID
            guard record.images.contains(id) || record.frames.contains(DamageRecord.Frame(imageID: id, frame: e.frame)) else { return }
            runs.appendJoining(e.firstBlock..<e.endBlock)
        }
        return runs
    }

    /// Writes the head map of `m`'s newest point anew from that point's images and publishes it (replacing a
    /// damaged one in one rename). Returns the manifest that names it: `m` itself where `m` named the newest
    /// point's map, else one to commit (the old map then goes as a leftover).
    @discardableResult
    static func rebuild(_ store: ChainStore, _ m: ChainManifest, _ images: [ImageFile], keys: ChainKeys?) throws -> ChainManifest {
        let newest = m.images.last!
        var next = m
        next.hashMapPoint = nil
        if m.hashMapPoint != nil { next.hashMapFile = Chain.hashMapName(point: newest.lastPoint) }
        let name = next.hashMapFile
        let header = HashMapHeader(blockSize: m.blockSize, sourceSize: m.sourceSize, chainID: m.chainID, imageID: newest.imageID, point: newest.lastPoint)
        let hashes = try RebuiltHashes(store, images, blockCount: header.blockCount)
        let writer = try HashMapWriter(store: store, name: name, header: header, keys: keys)
        do {
            let perChunk = UInt64(HashMapHeader.chunkBlocks)
            var at: UInt64 = 0
            while at < header.blockCount {
                let n = Int(min(perChunk, header.blockCount - at))
                writer.reserve(n).update(from: try hashes.hashes(from: at, count: n), count: n)
                try writer.commit(n)
                at += UInt64(n)
            }
            try writer.finish()
            try store.syncPublished()
        } catch {
            writer.abandon()
            throw error
        }
        return next
    }
}

/// What a capture compares the source's hashes with, a chunk at a time, forward: the head map's file, or the
/// newest point's hashes rebuilt from its images. Blocks in `damagedRuns` read as `.damaged`.
protocol PriorHashes: AnyObject {
    func hashes(from block: UInt64, count: Int) throws -> UnsafePointer<BlockHash>
    /// A remark to make when the capture is over (the map turned out damaged mid-way).
    var lateNotice: String? { get }
}

extension HashMapReader: PriorHashes {
    var lateNotice: String? { nil }
}

/// The head map's file, read as the capture goes; where a chunk turns out damaged, the newest point's hashes
/// rebuilt from its images from there on (or, where even that fails, hashes that match nothing: the rest is
/// stored whole).
final class HeadMapHashes: PriorHashes {
    private let file: HashMapReader
    private let name: String
    private let rebuild: () throws -> RebuiltHashes
    private var rebuilt: RebuiltHashes?
    private var nothing: UnsafeMutablePointer<BlockHash>?
    private(set) var lateNotice: String?

    init(file: HashMapReader, name: String, rebuild: @escaping () throws -> RebuiltHashes) {
        self.file = file
        self.name = name
        self.rebuild = rebuild
    }

    deinit { nothing?.deallocate() }

    func hashes(from block: UInt64, count: Int) throws -> UnsafePointer<BlockHash> {
        if let rebuilt { return try rebuilt.hashes(from: block, count: count) }
        if let nothing { return UnsafePointer(nothing) }
        do { return try file.hashes(from: block, count: count) } catch {
            let problem = Verify.describe(error)
            do {
                rebuilt = try rebuild()
                lateNotice = "\(name): \(problem); rebuilt it from the newest point's images (their hash tables, not their data) from block \(block) on"
                return try rebuilt!.hashes(from: block, count: count)
            } catch {
                let p = UnsafeMutablePointer<BlockHash>.allocate(capacity: Int(HashMapHeader.chunkBlocks))
                p.initialize(repeating: .damaged, count: Int(HashMapHeader.chunkBlocks))
                nothing = p
                lateNotice = "\(name): \(problem), and it cannot be rebuilt (\(Verify.describe(error))): blocks from \(block) on were stored whole"
                return UnsafePointer(p)
            }
        }
    }
}

/// Marks the blocks of `runs` within `first..<end` as `.damaged` in a chunk of hashes starting at `first`.
func markDamaged(_ hashes: UnsafeMutablePointer<BlockHash>, first: UInt64, end: UInt64, _ runs: [Range<UInt64>]) {
    for r in runs where r.upperBound > first && r.lowerBound < end {
        for b in max(r.lowerBound, first)..<min(r.upperBound, end) { hashes[Int(b - first)] = .damaged }
    }
}

/// The newest point's block hashes produced from its images, chunk by chunk, as a map file would give them:
/// zero and unreadable extents from the index, data extents from the hash table at the head of their frame. The
/// point is walked a window at a time (PointWalk), its frames' tables read ahead within the window. With a
/// `base` (an older point's map), the images are those after it, and blocks none of them holds take the base's.
final class RebuiltHashes: PriorHashes {
    var lateNotice: String? { base?.lateNotice }
    private let walk: PointWalk
    private let frames: FrameReader
    private let store: ChainStore
    private let images: [ImageFile]
    private var window: [ResolvedExtent] = []
    private var tables: HashTables?
    private let blockCount: UInt64
    private let buffer: UnsafeMutablePointer<BlockHash>
    private var chunk = -1
    private var extent = 0
    private let base: PriorHashes?
    var damagedRuns: [Range<UInt64>] = []

    /// The hashes of `images`' point from block `first` on (rounded down to its chunk): asked for forwards from there.
    init(
        _ store: ChainStore, _ images: [ImageFile], blockCount: UInt64, from first: UInt64 = 0, maxWindowBlocks: UInt64 = .max,
        base: PriorHashes? = nil
    ) throws {
        self.images = images
        self.store = store
        self.blockCount = blockCount
        self.base = base
        let per = UInt64(HashMapHeader.chunkBlocks)
        chunk = Int(first / per) - 1
        walk = PointWalk(images, from: first / per * per, maxBlocks: maxWindowBlocks, underlay: base != nil)
        frames = FrameReader(images)
        buffer = .allocate(capacity: Int(HashMapHeader.chunkBlocks))
    }

    deinit { buffer.deallocate() }

    func hashes(from block: UInt64, count: Int) throws -> UnsafePointer<BlockHash> {
        let per = UInt64(HashMapHeader.chunkBlocks)
        let c = Int(block / per)
        precondition(Int(block % per) + count <= Int(per), "hash run straddles a chunk")
        precondition(c >= chunk, "hashes asked for backwards")
        while chunk < c { try fill(chunk + 1) }
        return UnsafePointer(buffer + Int(block % per))
    }

    private func fill(_ c: Int) throws {
        let per = UInt64(HashMapHeader.chunkBlocks)
        let first = UInt64(c) * per, end = min(first + per, blockCount)
        var b = first
        while b < end {
            if extent == window.count {
                guard let next = try walk.next() else { break }
                window = next
                extent = 0
                tables = try HashTables(frames, window, store)
            }
            guard window[extent].firstBlock <= b, b < window[extent].endBlock else {
                throw ChainError.damaged(file: images.last?.name ?? "", detail: "the newest point's extents do not cover block \(b)")
            }
            let e = window[extent]
            let n = Int(min(e.endBlock, end) - b)
            let out = buffer + Int(b - first)
            if e.image == PointWalk.base {
                out.update(from: try base!.hashes(from: b, count: n), count: n)
                b += UInt64(n)
                if b == e.endBlock { extent += 1 }
                continue
            }
            switch e.kind {
            case .zero: out.update(repeating: .zero, count: n)
            case .unreadable: out.update(repeating: .unreadable, count: n)
            case .free: out.update(repeating: .free, count: n)
            case .data:
                let table = try tables!.hashes(forExtent: extent)
                let from = Int(e.frameBlock) + Int(b - e.firstBlock)
                guard from + n <= table.count else {
                    throw ChainError.damaged(file: images[Int(e.image)].name, detail: "frame \(e.frame) holds fewer blocks than its extents say")
                }
                table.withUnsafeBufferPointer { out.update(from: $0.baseAddress! + from, count: n) }
            }
            b += UInt64(n)
            if b == e.endBlock {
                if e.kind == .data { tables!.done(withExtent: extent) }
                extent += 1
            }
        }
        guard b == end else { throw ChainError.damaged(file: images.last?.name ?? "", detail: "the newest point's extents do not cover block \(b)") }
        markDamaged(buffer, first: first, end: end, damagedRuns)
        chunk = c
    }
}

/// The hash tables at the head of the frames a window of a point's extents uses, read ahead of their use through
/// the store's read queue (many small reads in flight: one at a time, a rebuild after a cold start waited on
/// each) and kept until the last extent of the window that uses each frame.
private final class HashTables {
    private let frames: FrameReader
    private let plan: FramePlan
    private let pump: ObjectReads
    private let slab: AlignedSlab
    private var freeTags: [Int]
    private var tagFrame: [Int]
    private var tables: [Int: [BlockHash]] = [:]
    private var issued = 0
    private static let depth = 32, ahead = 256

    init(_ frames: FrameReader, _ resolved: [ResolvedExtent], _ store: ChainStore) throws {
        self.frames = frames
        plan = FramePlan(resolved)
        (pump, _) = try store.reads(engine: .auto, depth: Self.depth, tags: Self.depth)
        slab = AlignedSlab(slotSize: frames.hashesReadRoom, slotCount: Self.depth, alignment: 64)
        freeTags = Array((0..<Self.depth).reversed())
        tagFrame = Array(repeating: -1, count: Self.depth)
    }

    deinit { pump.drain() }

    /// The hashes of the frame extent `i` uses, waiting for its read (and starting those of the frames after it).
    func hashes(forExtent i: Int) throws -> [BlockHash] {
        let k = Int(plan.extentFrame[i])
        while tables[k] == nil {
            try issue(upTo: k + Self.ahead)
            let done = pump.next()
            let f = plan.frames[tagFrame[done.tag]]
            freeTags.append(done.tag)
            try frames.arrived(f, bytes: done.bytes, error: done.error, hashesOnly: true)
            try frames.openHashes(f, stored: slab.slot(done.tag))
            tables[tagFrame[done.tag]] = FrameReader.hashes(slab.slot(done.tag), count: Int(try frames.record(f).blockCount))
        }
        try issue(upTo: k + Self.ahead)
        return tables[k]!
    }

    /// Extent `i` has taken its hashes: its frame's table goes once no later extent uses it.
    func done(withExtent i: Int) {
        let k = Int(plan.extentFrame[i])
        if plan.lastUse[k] == i { tables[k] = nil }
    }

    private func issue(upTo limit: Int) throws {
        while issued < min(plan.frames.count, limit), let tag = freeTags.popLast() {
            tagFrame[tag] = issued
            try frames.startRead(plan.frames[issued], into: slab.slot(tag), reads: pump, tag: tag, hashesOnly: true)
            issued += 1
        }
    }
}
