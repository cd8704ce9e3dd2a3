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
    static func problem(_ store: ChainStore, _ m: ChainManifest) -> String? {
        do {
            let reader = try HashMapReader(store: store, name: m.hashMapFile)
            guard reader.header.imageID == m.images.last!.imageID, reader.header.chainID == m.chainID,
                reader.header.sourceSize == m.sourceSize, reader.header.blockSize == m.blockSize
            else { return "it is not the newest point's" }
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

    /// The map a capture compares with, and how many blocks it will heal: checked whole; rebuilt (with one
    /// notice) where missing or damaged; with the blocks the newest point takes from recorded damaged frames
    /// marked. nil (after a notice) when the newest point's images cannot be read: the capture then compares
    /// nothing and stores every non-zero block.
    static func forCapture(_ chain: Chain, _ m: ChainManifest, notice: (String) -> Void) throws -> (map: HashMapReader?, healing: UInt64) {
        let record = readRecord(chain.store, notice: notice)
        let problem = problem(chain.store, m)
        var runs: [Range<UInt64>] = []
        if problem != nil || !(record?.isEmpty ?? true) {
            let images: [ImageFile]
            do { images = try chain.openImages(forPoint: m.images.last!.lastPoint) } catch {
                notice("the newest point's images cannot be read (\(Verify.describe(error))): this capture compares nothing and stores every non-zero block")
                return (nil, 0)
            }
            let resolved = ExtentResolver.resolve(images.map(\.index.extents))
            if let record { runs = damagedRuns(resolved, images, record) }
            if let problem {
                notice("\(m.hashMapFile): \(problem); rebuilding it from the newest point's images (their hash tables, not their data)")
                do { try rebuild(chain.store, m, images, resolved) } catch {
                    notice("the hash map cannot be rebuilt (\(Verify.describe(error))): this capture compares nothing and stores every non-zero block")
                    return (nil, 0)
                }
            }
        }
        let map = try HashMapReader(store: chain.store, name: m.hashMapFile)
        map.damagedRuns = runs
        return (map, runs.reduce(0) { $0 + UInt64($1.count) })
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
    static func damagedRuns(_ resolved: [ResolvedExtent], _ images: [ImageFile], _ record: DamageRecord) -> [Range<UInt64>] {
        var runs: [Range<UInt64>] = []
        for e in resolved where e.kind == .data {
            let id = images[Int(e.image)].header.imageID
            guard record.images.contains(id) || record.frames.contains(DamageRecord.Frame(imageID: id, frame: e.frame)) else { continue }
            runs.appendJoining(e.firstBlock..<e.endBlock)
        }
        return runs
    }

    /// Writes the head map of the newest point anew from its images and publishes it under the manifest's name
    /// for it (replacing a damaged one in one rename).
    static func rebuild(_ store: ChainStore, _ m: ChainManifest, _ images: [ImageFile], _ resolved: [ResolvedExtent]) throws {
        let newest = m.images.last!
        try rebuild(store, name: m.hashMapFile, header: HashMapHeader(
            blockSize: m.blockSize, sourceSize: m.sourceSize, chainID: m.chainID, imageID: newest.imageID, point: newest.lastPoint),
            images, resolved)
    }

    static func rebuild(_ store: ChainStore, name: String, header: HashMapHeader, _ images: [ImageFile], _ resolved: [ResolvedExtent]) throws {
        let writer = try HashMapWriter(store: store, name: name, header: header)
        do {
            let frames = FrameReader(images)
            var table: (frame: FrameRef, hashes: [BlockHash])?
            let perChunk = UInt64(HashMapHeader.chunkBlocks)
            var expected: UInt64 = 0
            for e in resolved {
                guard e.firstBlock == expected else { throw ChainError.damaged(file: images[Int(e.image)].name, detail: "its extents leave a gap at block \(expected)") }
                if e.kind == .data && table?.frame != e.frameRef { table = (e.frameRef, try frames.storedHashes(e.frameRef)) }
                var b = e.firstBlock
                while b < e.endBlock {
                    let n = Int(min(perChunk - b % perChunk, e.endBlock - b))
                    let out = writer.reserve(n)
                    switch e.kind {
                    case .zero: out.update(repeating: .zero, count: n)
                    case .unreadable: out.update(repeating: .unreadable, count: n)
                    case .data:
                        let from = Int(e.frameBlock) + Int(b - e.firstBlock)
                        guard let hashes = table?.hashes, from + n <= hashes.count else {
                            throw ChainError.damaged(file: images[Int(e.image)].name, detail: "frame \(e.frame) holds fewer blocks than its extents say")
                        }
                        for k in 0..<n { out[k] = hashes[from + k] }
                    }
                    try writer.commit(n)
                    b += UInt64(n)
                }
                expected = e.endBlock
            }
            guard expected == header.blockCount else { throw ChainError.damaged(file: name, detail: "the newest point's extents end at block \(expected)") }
            try writer.finish()
            try store.syncPublished()
        } catch {
            writer.abandon()
            throw error
        }
    }
}
