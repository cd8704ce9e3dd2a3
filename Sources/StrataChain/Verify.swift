// `strata verify`: proves a chain restorable without restoring it. Checks the manifest, every image's header
// and index, that each image is the one the manifest names and links to the one before, the head hash map, and
// every frame: its checksum and (unless `checksumsOnly`) its decompressed blocks against their stored hashes.
// Damage does not stop the walk: every damaged image and frame is named, with the source blocks it holds, and
// each point is judged whole or affected by what it actually needs. Read-only: no lock is taken exclusively
// and nothing in the directory is created, changed or removed.
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
        let chain = try ChainDirectory(path: chainPath, create: false, readOnly: true)
        guard let manifest = chain.manifest else { throw ChainError.notAChain(path: chainPath) }
        let entries: ArraySlice<ManifestEntry>
        if let p = options.point {
            guard let e = manifest.images(forPoint: p) else { throw ChainError.noSuchPoint(p, available: manifest.points) }
            entries = e
        } else {
            entries = manifest.images[...]
        }

        // Headers, indexes, identity and links. An image that fails here is unusable as a whole.
        var problems: [VerifyProblem] = []
        var images: [ImageFile?] = []
        var previous: ManifestEntry?
        for (i, e) in entries.enumerated() {
            do {
                let image = try ImageFile(directory: chainPath, name: e.file)
                try ChainDirectory.check(image.header, of: e, in: manifest)
                // The link to the image before can be checked only when that one could be read.
                if i == 0 || previous != nil {
                    try ChainDirectory.check(image.header, of: e, follows: previous)
                }
                images.append(image)
                previous = e
            } catch {
                problems.append(VerifyProblem(file: e.file, detail: describe(error), blocks: []))
                images.append(nil)
                previous = nil
            }
        }
        if options.point == nil, let problem = checkHashMap(chainPath, manifest) { problems.append(problem) }

        // Frames: all of every image, or those point's blocks come from.
        var work: [(image: Int, frame: UInt32)] = []
        if options.point != nil {
            if !images.contains(where: { $0 == nil }) {
                var seen = Set<UInt64>()
                for r in ExtentResolver.resolve(images.map { $0!.index.extents }) where r.kind == .data {
                    if seen.insert(UInt64(r.image) << 32 | UInt64(r.frame)).inserted { work.append((Int(r.image), r.frame)) }
                }
                work.sort { ($0.image, $0.frame) < ($1.image, $1.frame) }
            }
        } else {
            for (i, image) in images.enumerated() {
                guard let image else { continue }
                for f in 0..<image.index.frames.count { work.append((i, UInt32(f))) }
            }
        }
        let scan = FrameScan(images: images.map { $0 }, work: work, options: options, progress: progress)
        let damagedFrames = try scan.run()
        for (key, detail) in damagedFrames.sorted(by: { $0.key < $1.key }) {
            let image = images[Int(key >> 32)]!
            let frame = UInt32(truncatingIfNeeded: key)
            let blocks = image.index.extents.filter { $0.kind == .data && $0.frame == frame }.map { $0.firstBlock..<$0.endBlock }
            problems.append(VerifyProblem(file: image.name, detail: detail, blocks: blocks))
        }

        // Which points still restore: a point is affected when it needs a broken image, or a damaged frame
        // holds one of its blocks (a frame whose blocks a later image overwrote does not affect it).
        var affected: [UInt32] = [], whole: [UInt32] = []
        for (i, e) in entries.enumerated() {
            guard options.point == nil || e.point == options.point else { continue }
            let needed = images[...i]
            var ok = !needed.contains { $0 == nil }
            if ok && !damagedFrames.isEmpty {
                ok = !ExtentResolver.resolve(needed.map { $0!.index.extents }).contains {
                    $0.kind == .data && damagedFrames[UInt64($0.image) << 32 | UInt64($0.frame)] != nil
                }
            }
            if ok { whole.append(e.point) } else { affected.append(e.point) }
        }
        return VerifyReport(
            points: entries.map(\.point), images: images.count, frames: work.count, bytesRead: scan.bytesRead,
            problems: problems, affectedPoints: affected, wholePoints: whole,
            seconds: Double(Sys.monotonicNanos() - started) / 1e9)
    }

    /// The head hash map (what the next capture compares with): its header names the newest image, and every
    /// chunk passes its checksum. Damage here does not affect any point, only the next capture.
    private static func checkHashMap(_ chainPath: String, _ m: ChainManifest) -> VerifyProblem? {
        do {
            let reader = try HashMapReader(directory: chainPath, name: m.hashMapFile)
            guard reader.header.imageID == m.images.last!.imageID, reader.header.chainID == m.chainID,
                reader.header.sourceSize == m.sourceSize, reader.header.blockSize == m.blockSize
            else { throw ChainError.damaged(file: m.hashMapFile, detail: "the hash map is not the newest point's") }
            let blocks = blockCountFor(sourceSize: m.sourceSize, blockSize: m.blockSize)
            var at: UInt64 = 0
            while at < blocks {
                let n = Int(min(UInt64(HashMapHeader.chunkBlocks), blocks - at))
                _ = try reader.hashes(from: at, count: n)
                at += UInt64(n)
            }
            return nil
        } catch {
            return VerifyProblem(file: m.hashMapFile, detail: describe(error) + " (no point is affected; the next capture will fail until a new full image)", blocks: [])
        }
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case ChainError.damaged(_, let d), ChainError.corruptData(_, let d): return d
        case let e as ChainError: return e.description
        default: return "\(error)"
        }
    }
}

/// Reads the frames to check in file order on an I/O thread (io_uring or pread, many in flight) and checks
/// them on worker threads; a damaged frame is recorded and the scan goes on.
private final class FrameScan {
    private let images: [ImageFile?]
    private let work: [(image: Int, frame: UInt32)]
    private let options: VerifyOptions
    private let progress: ProgressHandler?
    private let slots: AlignedSlab
    private let slotWork: PerSlot<Int>
    private let maxBlocks: Int
    private let blockSize: Int

    private let condition = Condition()
    private var freeSlots: [Int]
    private let jobs = WorkQueue<Int>()  // slots whose frame has been read
    private var damaged: [UInt64: String] = [:]
    private(set) var bytesRead: UInt64 = 0
    private let totalBytes: UInt64

    init(images: [ImageFile?], work: [(image: Int, frame: UInt32)], options: VerifyOptions, progress: ProgressHandler?) {
        self.images = images
        self.work = work
        self.options = options
        self.progress = progress
        let frames = work.map { images[$0.image]!.index.frames[Int($0.frame)] }
        let maxStored = frames.map { Int($0.length) }.max() ?? 0
        maxBlocks = frames.map { Int($0.blockCount) }.max() ?? 0
        blockSize = Int(images.compactMap { $0?.header.blockSize }.first ?? 4096)
        totalBytes = frames.reduce(0) { $0 + UInt64($1.length) }
        let slotCount = options.queueDepth + 2 * options.threads
        slots = AlignedSlab(slotSize: max(maxStored, 1), slotCount: slotCount)
        slotWork = PerSlot(repeating: 0, count: slotCount)
        freeSlots = Array((0..<slotCount).reversed())
    }

    func run() throws -> [UInt64: String] {
        guard !work.isEmpty else { return [:] }
        let (queue, _): (IOQueue, String?)
        do { (queue, _) = try IOEngine.make(options.engine, depth: options.queueDepth) } catch let e as IOError {
            throw ChainError.engineUnavailable("io_uring is unavailable here (\(e.reason))")
        }
        let decompressors = try (0..<options.threads).map { _ in try FrameDecompressor() }  // before any thread starts
        let group = ThreadGroup()
        for (i, decompressor) in decompressors.enumerated() {
            group.spawn("strata-verify-\(i)") { self.check(decompressor) }
        }
        readFrames(queue)
        group.join()
        return damaged
    }

    private func key(_ w: Int) -> UInt64 { UInt64(work[w].image) << 32 | UInt64(work[w].frame) }

    private func readFrames(_ queue: IOQueue) {
        let pump = IOPump(queue: queue, maxTags: slots.slotCount)
        func reap() {
            let done = pump.nextOutcome()
            let w = slotWork[done.tag]
            let image = images[work[w].image]!
            let record = image.index.frames[Int(work[w].frame)]
            if let error = done.error {
                condition.publish {
                    damaged[key(w)] = "frame \(work[w].frame) at byte \(record.offset) cannot be read (\(error.reason))"
                    freeSlots.append(done.tag)
                }
            } else if done.bytes != Int(record.length) {
                condition.publish {
                    damaged[key(w)] = "frame \(work[w].frame) at byte \(record.offset) is cut short"
                    freeSlots.append(done.tag)
                }
            } else {
                condition.publish { bytesRead += UInt64(record.length) }
                jobs.post(done.tag)
            }
        }
        for w in 0..<work.count {
            var slot = -1
            while slot < 0 {
                condition.lock()
                if let s = freeSlots.popLast() {
                    slot = s
                } else if pump.inFlight == 0 {
                    condition.wait()
                }
                condition.unlock()
                if slot < 0 && pump.inFlight > 0 { reap() }
            }
            let image = images[work[w].image]!
            let record = image.index.frames[Int(work[w].frame)]
            slotWork[slot] = w
            pump.read(fd: image.fd, path: image.path, into: slots.slot(slot), length: Int(record.length), at: record.offset, tag: slot)
            if pump.inFlight >= options.queueDepth { reap() }
            if w % 64 == 0 { progress?(min(bytesRead, totalBytes), totalBytes) }
        }
        while pump.inFlight > 0 { reap() }
        jobs.close()
        progress?(totalBytes, totalBytes)
    }

    private func check(_ decompressor: FrameDecompressor) {
        let decoded = UnsafeMutableRawPointer.allocate(byteCount: max(1, maxBlocks * blockSize), alignment: 64)
        defer { decoded.deallocate() }
        while let slot = jobs.next() {
            let w = slotWork[slot]
            let image = images[work[w].image]!
            var problem: String?
            do {
                if options.checksumsOnly {
                    try image.checkChecksum(frame: work[w].frame, stored: slots.slot(slot))
                } else {
                    try image.decode(frame: work[w].frame, stored: slots.slot(slot), into: decoded, decompressor: decompressor)
                }
            } catch {
                problem = Verify.describe(error)
            }
            condition.publish {
                if let problem { damaged[key(w)] = problem }
                freeSlots.append(slot)
            }
        }
    }
}
