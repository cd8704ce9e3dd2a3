// `strata bench`: how fast this machine can image this source, and which stage bounds it. Read-only on the
// source. Its predictions come from the real pipelines run on a sample of the source (PipelineRuns.swift): a full
// capture at 1, 2, 4 ... N threads, an incremental and a restore, each profiled. Each stage is also measured
// alone, for a bounded time, with the code the pipelines use (the same engines, the same hasher and zstd
// contexts, the same O_DIRECT appender), and combined into the stage model that explains them:
//
//   full capture    min(device read, worker CPU for hashing every block and compressing the non-zero ones,
//                       chain writes of the compressed bytes)
//   incremental     min(device read, hashing)          (the changed bytes are few)
//   restore         min(decompression of the non-zero bytes, chain reads if measured); target writes are not
//                   measured (bench never writes to a device)
//
// The data for the CPU stages is a sample of the source itself (1 MiB pieces spread over it), because
// compression speed and ratio depend on the data.
import StrataChain
import Synchronization
import StrataCodec
import StrataFormat
import StrataIO

public struct BenchOptions: Sendable {
    /// The whole run's time budget, split between the stages.
    public var seconds: Double = 20
    public var threads: Int = Sys.onlineCores
    public var level: Int32 = 1
    /// A directory on the filesystem that would hold the chain: the write rate is measured there (a temporary
    /// file, removed afterwards).
    public var chainDirectory: String? = nil
    public var queueDepths: [Int] = [1, 4, 16, 32, 64]
    public var requestSizes: [Int] = [128 << 10, 1 << 20, 4 << 20]
    /// Bytes of the source sampled for the CPU stages.
    public var sampleBytes: Int = 64 << 20
    /// Bytes of the source the real pipelines run on (in `pipelinePieces` pieces spread over it).
    public var pipelineBytes: UInt64 = 1 << 30
    public var pipelinePieces = 32
    /// The share of blocks the incremental run treats as changed (compressed and stored, as a night's changes
    /// are): a nightly incremental costs a read of the whole source plus its changes. 3%: about what a night of
    /// the reference workload changes (2.8% of its blocks: new files, rewritten database pages, appended logs,
    /// the filesystem's journal and metadata).
    public var changedFraction: Double = 0.03

    public init() {}
}

public struct BenchReport: Sendable {
    public struct Read: Sendable {
        public var engine: String
        public var queueDepth: Int
        public var requestSize: Int
        public var bytesPerSecond: Double
    }
    public struct Scaling: Sendable {
        public var threads: Int
        public var bytesPerSecond: Double
    }
    public struct Prediction: Sendable {
        public var bytesPerSecond: Double
        public var bound: String
        /// The whole source at that rate.
        public var seconds: Double = 0
    }
    /// The real runs on the sample.
    public struct Runs: Sendable {
        public var sampleBytes: UInt64
        public var pieces: Int
        /// Where the scratch chain and restore target went, and whether that was RAM (no --chain-dir).
        public var scratch: String
        public var scratchInRAM: Bool
        public var fullCapture: [RunProfile]
        public var incrementalCapture: RunProfile
        public var restore: RunProfile
        /// The same three at all threads on an eighth of the sample: with the large runs, they separate what a
        /// run costs once (fixed) from what it costs per byte.
        public var small: (fullCapture: RunProfile, incrementalCapture: RunProfile, restore: RunProfile)
    }

    public var source: String
    public var sourceBytes: UInt64
    public var isBlockDevice: Bool
    public var direct: Bool
    public var cores: Int
    public var level: Int32
    public var reads: [Read]
    public var hashBytesPerSecond: Double
    public var compression: [Scaling]
    public var compressionRatio: Double
    public var decompression: [Scaling]
    public var zeroFraction: Double
    public var writeBytesPerSecond: Double?
    /// Predictions from the real runs (rate, what bounded it, the source's whole time).
    public var fullCapture: Prediction
    public var incrementalCapture: Prediction
    public var restore: Prediction
    /// The same from the stage model (each stage alone, combined).
    public var model: (fullCapture: Prediction, incrementalCapture: Prediction, restore: Prediction)
    public var runs: Runs
    public var queueDepth: Int
    public var requestSize: Int
    public var threads: Int
    public var seconds: Double
}

public enum Bench {
    public static func run(source path: String, options: BenchOptions, progress: ((String) -> Void)? = nil) throws -> BenchReport {
        let started = Sys.monotonicNanos()
        guard options.threads >= 1 && options.threads <= 1024 else { throw ChainError.invalidOption("threads must be between 1 and 1024") }
        guard options.seconds >= 1 else { throw ChainError.invalidOption("--seconds must be at least 1") }
        guard options.changedFraction >= 0 && options.changedFraction <= 1 else { throw ChainError.invalidOption("--changed must be a percentage from 0 to 100") }
        let source: BlockSource
        do { source = try BlockSource(path: path) } catch let e as IOError {
            throw ChainError.sourceUnavailable(path: path, reason: e.reason)
        }
        guard source.size >= 1 << 20 else { throw ChainError.sourceUnavailable(path: path, reason: "it is smaller than 1 MiB") }
        let budget = options.seconds
        let sweep = options.queueDepths.count * options.requestSizes.count + 1
        let readSlice = budget * 0.5 / Double(sweep)

        // 1. Device reads: io_uring over the sweep, then the pread engine at the best setting.
        var reads: [BenchReport.Read] = []
        var cursor: UInt64 = 0
        for size in options.requestSizes {
            for depth in options.queueDepths {
                progress?("reads: io_uring, queue depth \(depth), \(size >> 10) KiB requests")
                let (queue, _) = try engine(.uring, depth: depth)
                let rate = try measureReads(source, queue: queue, depth: depth, requestSize: size, seconds: readSlice, cursor: &cursor)
                reads.append(.init(engine: queue.engineName, queueDepth: depth, requestSize: size, bytesPerSecond: rate))
            }
        }
        let best = reads.max { $0.bytesPerSecond < $1.bytesPerSecond }!
        // The least demanding setting within 5% of the best: fewer requests in flight, 1 MiB preferred.
        let chosen = reads.filter { $0.bytesPerSecond >= best.bytesPerSecond * 0.95 }
            .min { ($0.queueDepth, abs($0.requestSize - (1 << 20))) < ($1.queueDepth, abs($1.requestSize - (1 << 20))) }!
        progress?("reads: pread threads, queue depth \(chosen.queueDepth), \(chosen.requestSize >> 10) KiB requests")
        let (preadQueue, _) = try engine(.pread, depth: chosen.queueDepth)
        let preadRate = try measureReads(source, queue: preadQueue, depth: chosen.queueDepth, requestSize: chosen.requestSize, seconds: readSlice, cursor: &cursor)
        reads.append(.init(engine: preadQueue.engineName, queueDepth: chosen.queueDepth, requestSize: chosen.requestSize, bytesPerSecond: preadRate))

        // 2. A sample of the source for the CPU stages.
        progress?("sampling \(options.sampleBytes >> 20) MiB of the source")
        let sample = try Sample(source, bytes: options.sampleBytes)
        let blockSize = 4096
        let detector = ZeroBlockDetector(blockSize: blockSize)
        let blocksPerChunk = Sample.chunk / blockSize
        var zeroBlocks = 0
        var dataChunks: [Int] = []  // the chunks with a non-zero block: what compression gets
        for c in 0..<sample.count {
            var zeros = 0
            for b in 0..<blocksPerChunk where detector.hash(sample.chunk(c) + b * blockSize) == .zero { zeros += 1 }
            zeroBlocks += zeros
            if zeros < blocksPerChunk { dataChunks.append(c) }
        }
        let zeroFraction = Double(zeroBlocks) / Double(max(sample.count * blocksPerChunk, 1))
        let chunks = dataChunks

        progress?("hashing (XXH3-128)")
        let hashRate = measureCPU(threads: 1, seconds: budget * 0.05) { _, i in
            let p = sample.chunk(i % sample.count)
            for b in 0..<blocksPerChunk { _ = detector.hash(p + b * blockSize) }
            return Sample.chunk
        }

        // 3. Compression and decompression, 1..N threads, on the sample's non-zero chunks.
        let counts = threadCounts(options.threads)
        var compression: [BenchReport.Scaling] = [], decompression: [BenchReport.Scaling] = []
        let stored = try CompressedSample(sample, chunks: dataChunks, level: options.level)
        let ratio = stored.ratio
        for t in counts {
            progress?("zstd -\(options.level) compression, \(t) thread\(t == 1 ? "" : "s")")
            let compressors = try (0..<t).map { _ in try FrameCompressor(level: options.level) }
            let out = AlignedSlab(slotSize: FrameCompressor.storeBound(Sample.chunk), slotCount: t, alignment: 64)  // a slot a worker
            let rate = measureCPU(threads: t, seconds: budget * 0.25 / Double(counts.count)) { worker, i in
                guard !chunks.isEmpty else { return Sample.chunk }
                _ = compressors[worker].compressOrStore(
                    sample.chunk(chunks[i % chunks.count]), count: Sample.chunk, into: out.slot(worker), capacity: FrameCompressor.storeBound(Sample.chunk))
                return Sample.chunk
            }
            compression.append(.init(threads: t, bytesPerSecond: rate))
        }
        for t in counts {
            progress?("zstd decompression, \(t) thread\(t == 1 ? "" : "s")")
            let decompressors = try (0..<t).map { _ in try FrameDecompressor() }
            let out = AlignedSlab(slotSize: Sample.chunk, slotCount: t, alignment: 64)  // a slot a worker
            let rate = measureCPU(threads: t, seconds: budget * 0.1 / Double(counts.count)) { worker, i in
                guard stored.count > 0 else { return Sample.chunk }
                let f = stored.frame(i % stored.count)
                if f.compressed {
                    try? decompressors[worker].decompress(f.bytes, count: f.length, into: out.slot(worker), expected: Sample.chunk)
                } else {
                    out.slot(worker).copyMemory(from: f.bytes, byteCount: Sample.chunk)
                }
                return Sample.chunk
            }
            decompression.append(.init(threads: t, bytesPerSecond: rate))
        }

        // 4. Writes into the chain's filesystem, as the image appender does them.
        var writeRate: Double?
        if let dir = options.chainDirectory {
            progress?("writes into \(dir)")
            writeRate = try measureWrites(directory: dir, stored: stored, seconds: budget * 0.1)
        }

        // 5. The stage model.
        let cores = Sys.onlineCores
        let read = chosen.bytesPerSecond
        func cpu(_ t: Int) -> Double {
            let c = compression.last { $0.threads <= t }?.bytesPerSecond ?? compression[0].bytesPerSecond
            let hashing = hashRate * Double(min(t, cores))
            return 1 / (1 / hashing + (1 - zeroFraction) / max(c, 1))
        }
        let modelFull = pick([
            ("the device's reads", read), ("hashing and compression on \(options.threads) thread\(options.threads == 1 ? "" : "s")", cpu(options.threads)),
        ] + (writeRate.map { [("writes to the chain's filesystem", $0 / max(ratio * (1 - zeroFraction), 0.01))] } ?? []))
        let modelIncremental = pick([("the device's reads", read), ("hashing", hashRate * Double(min(options.threads, cores)))])
        let decompress = decompression.last?.bytesPerSecond ?? 0
        let modelRestore = pick([("decompression on \(options.threads) thread\(options.threads == 1 ? "" : "s")", decompress / max(1 - zeroFraction, 0.01))]
            + (writeRate.map { [("reads of the chain (taken as its write rate)", $0 / max(ratio * (1 - zeroFraction), 0.01))] } ?? []))

        // 6. The real pipelines on a sample of the source, into a scratch chain where the chain will live.
        let runs = try runPipelines(source, options: options, counts: counts, progress: progress)
        // Time = fixed + bytes x slope, from the small and the large sample: the fixed part (opening the chain,
        // starting threads, syncing, committing) is paid once by the real command, not once per sample's worth.
        func predicted(_ r: RunProfile, small: RunProfile) -> BenchReport.Prediction {
            var slope = (r.seconds - small.seconds) / Double(max(Int64(r.bytes) - Int64(small.bytes), 1))
            if slope <= 0 { slope = r.seconds / Double(max(r.bytes, 1)) }
            let fixed = max(0, small.seconds - slope * Double(small.bytes))
            return .init(bytesPerSecond: 1 / slope, bound: r.bound(cores: cores, readRate: read), seconds: fixed + slope * Double(source.size))
        }
        let fullRun = runs.fullCapture.last!
        // Threads: the fewest whose real full capture came within 5% of the fastest.
        let fastest = runs.fullCapture.map(\.bytesPerSecond).max() ?? 0
        let threads = runs.fullCapture.first { $0.bytesPerSecond >= 0.95 * fastest }?.threads ?? options.threads
        return BenchReport(
            source: path, sourceBytes: source.size, isBlockDevice: source.isBlockDevice, direct: source.direct, cores: cores,
            level: options.level, reads: reads, hashBytesPerSecond: hashRate, compression: compression, compressionRatio: ratio,
            decompression: decompression, zeroFraction: zeroFraction, writeBytesPerSecond: writeRate,
            fullCapture: predicted(fullRun, small: runs.small.fullCapture), incrementalCapture: predicted(runs.incrementalCapture, small: runs.small.incrementalCapture),
            restore: predicted(runs.restore, small: runs.small.restore),
            model: (modelFull, modelIncremental, modelRestore), runs: runs,
            queueDepth: chosen.queueDepth, requestSize: chosen.requestSize, threads: threads, seconds: Double(Sys.monotonicNanos() - started) / 1e9)
    }

    /// A full capture of the sample at each thread count, an incremental capture of it (nothing changed: reads,
    /// hashes, comparisons), and a restore of the chain to a file beside it; then removes all it wrote.
    private static func runPipelines(
        _ source: BlockSource, options: BenchOptions, counts: [Int], progress: ((String) -> Void)?
    ) throws -> BenchReport.Runs {
        let request: UInt64 = 1 << 20
        let pieces = max(1, options.pipelinePieces)
        let pieceSize = max(request, min(options.pipelineBytes, source.size) / UInt64(pieces) / request * request)
        let sample = BlockSource(sampling: source, pieces: pieces, pieceSize: pieceSize)
        let small = BlockSource(sampling: source, pieces: max(1, pieces / 8), pieceSize: pieceSize)
        let inRAM = options.chainDirectory == nil
        let scratch = try PipelineRuns.makeScratch(in: options.chainDirectory ?? "/dev/shm")
        defer { PipelineRuns.removeScratch(scratch) }
        var capture = CaptureOptions()
        capture.level = options.level
        // `capture` keeps `strata capture`'s default settings: what bench predicts is what the command will do.
        var restore = RestoreOptions()
        restore.threads = options.threads
        restore.force = true
        /// A full capture at `threads`, an incremental and a restore of `source` into a fresh scratch chain.
        func cycle(_ source: BlockSource, _ name: String, threads counts: [Int]) throws -> (full: [RunProfile], incremental: RunProfile, restore: RunProfile) {
            let chain = "\(scratch)/\(name)"
            var full: [RunProfile] = []
            for t in counts {
                progress?("real full capture of a \(source.size >> 20) MiB sample, \(t) thread\(t == 1 ? "" : "s")")
                PipelineRuns.removeScratch(chain)
                capture.threads = t
                full.append(try PipelineRuns.profile(threads: t, bytes: source.size) { _ = try Capture.capture(source, chain: chain, options: capture) })
            }
            // The incremental and the restore are short next to the full capture and vary more from run to run:
            // each is run more than once (restores of full + one incremental, as a night's restore is; then the
            // further incrementals) and the median run kept.
            func incrementalRun() throws -> RunProfile {
                progress?("real incremental capture of a \(source.size >> 20) MiB sample, \(Int(options.changedFraction * 100))% changed")
                capture.threads = options.threads
                capture.treatAsChanged = Self.changes(options.changedFraction)
                defer { capture.treatAsChanged = nil }
                return try PipelineRuns.profile(threads: options.threads, bytes: source.size) { _ = try Capture.capture(source, chain: chain, options: capture) }
            }
            var incrementals = [try incrementalRun()]
            var restores: [RunProfile] = []
            for _ in 0..<Self.restoreRuns {
                progress?("real restore of a \(source.size >> 20) MiB sample")
                restores.append(try PipelineRuns.profile(threads: options.threads, bytes: source.size) {
                    _ = try Restore.run(chain: chain, target: "\(scratch)/\(name).img", options: restore)
                })
                PipelineRuns.removeScratch("\(scratch)/\(name).img")
            }
            while incrementals.count < Self.incrementalRuns { incrementals.append(try incrementalRun()) }
            let incremental = Self.median(incrementals), restored = Self.median(restores)
            PipelineRuns.removeScratch(chain)
            return (full, incremental, restored)
        }
        let little = try cycle(small, "small", threads: [options.threads])
        let large = try cycle(sample, "chain", threads: counts)
        return .init(
            sampleBytes: sample.size, pieces: Int(sample.size / pieceSize), scratch: options.chainDirectory ?? "/dev/shm", scratchInRAM: inRAM,
            fullCapture: large.full, incrementalCapture: large.incremental, restore: large.restore,
            small: (little.full[0], little.incremental, little.restore))
    }

    /// Which blocks the incremental run stores anew for `fraction` of them changed: runs of 16 blocks (a night
    /// changes pages of databases and whole new files, neither one block here and there nor one region).
    static func changes(_ fraction: Double) -> (@Sendable (UInt64) -> Bool)? {
        guard fraction > 0 else { return nil }
        let period = UInt64(max(1, (1 / min(fraction, 1)).rounded()))
        return { block in (block / 16) % period == 0 }
    }

    /// How many times the incremental and the restore run on each sample (the median run is kept).
    static let incrementalRuns = 3, restoreRuns = 3

    /// The run of median time (of an even count, the faster of the middle two).
    static func median(_ runs: [RunProfile]) -> RunProfile { runs.sorted { $0.seconds < $1.seconds }[(runs.count - 1) / 2] }

    private static func pick(_ stages: [(String, Double)]) -> BenchReport.Prediction {
        let m = stages.min { $0.1 < $1.1 }!
        return .init(bytesPerSecond: m.1, bound: m.0)
    }

    private static func engine(_ choice: IOEngineChoice, depth: Int) throws -> (IOQueue, String?) {
        do { return try IOEngine.make(choice, depth: depth) } catch let e as IOError {
            if choice == .uring { return try IOEngine.make(.pread, depth: depth) }
            throw ChainError.engineUnavailable("io_uring is unavailable here (\(e.reason))")
        }
    }

    /// 1, 2, 4, ... up to `n`, and `n`.
    static func threadCounts(_ n: Int) -> [Int] {
        var out: [Int] = []
        var t = 1
        while t < n {
            out.append(t)
            t *= 2
        }
        out.append(n)
        return out
    }

    /// Sequential reads with `depth` requests of `requestSize` in flight for `seconds`, continuing from
    /// `cursor` (wrapping at the end of the source), in bytes per second.
    static func measureReads(_ source: BlockSource, queue: IOQueue, depth: Int, requestSize: Int, seconds: Double, cursor: inout UInt64) throws -> Double {
        let slab = AlignedSlab(slotSize: requestSize, slotCount: depth, alignment: max(4096, source.alignment))
        let pump = IOPump(queue: queue, maxTags: depth)
        let end = source.size / UInt64(requestSize) * UInt64(requestSize)
        guard end > 0 else { return 0 }
        let started = Sys.monotonicNanos()
        let deadline = started + UInt64(seconds * 1e9)
        var bytes: UInt64 = 0
        var free = Array(0..<depth)
        var now = started
        while true {
            now = Sys.monotonicNanos()
            if now < deadline {
                while let slot = free.popLast() {
                    if cursor >= end { cursor = 0 }
                    pump.read(fd: source.fd, path: source.path, into: slab.slot(slot), length: requestSize, at: cursor, tag: slot)
                    cursor += UInt64(requestSize)
                }
            }
            guard pump.inFlight > 0 else { break }
            let (slot, n) = try pump.next()
            bytes += UInt64(n)
            free.append(slot)
        }
        return Double(bytes) / (Double(Sys.monotonicNanos() - started) / 1e9)
    }

    /// Runs `work(worker, iteration)` on `threads` threads for `seconds`; each call returns the bytes it did.
    static func measureCPU(threads: Int, seconds: Double, _ work: @escaping @Sendable (Int, Int) -> Int) -> Double {
        let group = ThreadGroup()
        let total = Mutex(0)
        let started = Sys.monotonicNanos()
        let deadline = started + UInt64(seconds * 1e9)
        for w in 0..<threads {
            group.spawn("strata-bench-\(w)") {
                var done = 0, i = w * 7
                repeat {
                    done += work(w, i)
                    i += 1
                } while Sys.monotonicNanos() < deadline
                total.withLock { $0 += done }
            }
        }
        group.join()
        return Double(total.withLock { $0 }) / (Double(Sys.monotonicNanos() - started) / 1e9)
    }

    private static func scratchFile(_ path: String, in directory: String) throws -> FileDescriptor {
        do { return try Sys.create(path, [.readWrite, .truncate]) } catch let e as IOError {
            throw ChainError.targetUnavailable(path: directory, reason: e.reason)
        }
    }

    /// Appends the compressed sample to a temporary file in `directory` with the image appender, for
    /// `seconds`, then fsyncs and removes it; compressed bytes per second including the fsync.
    static func measureWrites(directory: String, stored: CompressedSample, seconds: Double) throws -> Double {
        let path = "\(directory)/\(DurableFiles.temporaryName(for: "bench.strata"))"
        let file = try scratchFile(path, in: directory)
        defer { try? Sys.unlink(path) }  // (the descriptor closes as `file` goes)
        let writer = try AppendWriter(path: path, fd: file.rawValue, start: 0, engine: .auto)
        let started = Sys.monotonicNanos()
        let deadline = started + UInt64(seconds * 1e9)
        var i = 0
        repeat {
            let f = stored.frame(i % max(stored.count, 1))
            try writer.append(f.bytes, count: max(f.length, 1))
            i += 1
        } while Sys.monotonicNanos() < deadline && stored.count > 0
        try writer.finish()
        try Sys.fsync(file.rawValue, path: path)
        return Double(writer.offset) / (Double(Sys.monotonicNanos() - started) / 1e9)
    }
}

/// 1 MiB pieces read from evenly spread places of the source.
final class Sample: @unchecked Sendable {  // read only, once made
    static let chunk = 1 << 20
    private let slab: AlignedSlab
    let count: Int

    init(_ source: BlockSource, bytes: Int) throws {
        let total = source.size / UInt64(Self.chunk)
        count = Int(max(1, min(total, UInt64(max(bytes, Self.chunk) / Self.chunk))))
        slab = AlignedSlab(slotSize: Self.chunk, slotCount: count, alignment: max(4096, source.alignment))
        let stride = total / UInt64(count)
        for i in 0..<count {
            let at = UInt64(i) * stride * UInt64(Self.chunk)
            let n = try Sys.preadFully(source.fd, slab.slot(i), Self.chunk, at, path: source.path)
            if n < Self.chunk { (slab.slot(i) + n).initializeMemory(as: UInt8.self, repeating: 0, count: Self.chunk - n) }
        }
    }

    func chunk(_ i: Int) -> UnsafeMutableRawPointer { slab.slot(i) }
}

/// The sample's non-zero chunks compressed once, for the decompression and write stages.
final class CompressedSample: @unchecked Sendable {  // read only, once made
    private var frames: [(offset: Int, length: Int, compressed: Bool)] = []
    private let buffer: UnsafeMutableRawPointer
    let ratio: Double
    var count: Int { frames.count }

    init(_ sample: Sample, chunks: [Int], level: Int32) throws {
        let bound = FrameCompressor.storeBound(Sample.chunk)
        buffer = .allocate(byteCount: max(1, chunks.count) * bound, alignment: 64)
        let compressor = try FrameCompressor(level: level)
        var stored = 0
        for (i, c) in chunks.enumerated() {
            let r = compressor.compressOrStore(sample.chunk(c), count: Sample.chunk, into: buffer + i * bound, capacity: bound)
            frames.append((i * bound, r.length, r.compressed))
            stored += r.length
        }
        ratio = chunks.isEmpty ? 1 : Double(stored) / Double(chunks.count * Sample.chunk)
    }

    deinit { buffer.deallocate() }

    func frame(_ i: Int) -> (bytes: UnsafeMutableRawPointer, length: Int, compressed: Bool) {
        let f = frames[i]
        return (buffer + f.offset, f.length, f.compressed)
    }
}
