import ArgumentParser
import StrataBench
import StrataChain

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure how fast this machine can image a source, and what bounds it. Never writes to SOURCE.",
        discussion: """
            Measures each stage of the pipelines alone, each for a bounded share of --seconds: sequential direct \
            reads of SOURCE through io_uring over a sweep of queue depths and request sizes, and through the pread \
            engine at the best setting; XXH3 hashing; zstd compression at --level on a sample of SOURCE's own data \
            with 1, 2, 4 ... --threads threads, and decompression; and with --chain-dir, O_DIRECT appends into that \
            directory's filesystem (a temporary file, removed). Then predicts the full-capture, incremental and \
            restore rates, names the stage that bounds each, and prints the capture settings it would choose. \
            Capture's defaults (1 MiB requests, queue depth 32, one worker per core) are used unless bench shows \
            better ones; pass those with --queue-depth and --threads.

            --json prints one object: source, sourceBytes, cores, level, reads ([{engine, queueDepth, \
            requestSize, bytesPerSecond}]), hashBytesPerSecond, compression and decompression ([{threads, \
            bytesPerSecond}], uncompressed bytes), compressionRatio, zeroFraction, writeBytesPerSecond, \
            fullCapture, incrementalCapture, restore ({bytesPerSecond, bound}), queueDepth, requestSize, threads, \
            seconds.

            EXAMPLES
              strata bench /dev/nvme0n1
              strata bench /dev/sdb --chain-dir /backup --seconds 60
              strata bench disk.img --json
            """)

    @Argument(help: "Block device or image file to measure (read only).") var source: String
    @Option(help: "Time budget for the whole run, in seconds.") var seconds: Double = 20
    @Option(help: "Most worker threads to try (default: one per core).") var threads: Int?
    @Option(help: "zstd level to measure.") var level: Int32 = 1
    @Option(help: "Directory on the filesystem that will hold the chain: measure writes there.") var chainDir: String?
    @Flag(help: "Print one JSON object with the result on stdout.") var json = false
    @Flag(help: "No progress line.") var quiet = false

    func run() throws {
        var options = BenchOptions()
        options.seconds = seconds
        options.threads = threads ?? Machine.onlineCores
        options.level = level
        options.chainDirectory = chainDir
        let showProgress = !quiet && Machine.isTerminal(2)
        let r: BenchReport
        do {
            r = try Bench.run(source: source, options: options) { stage in
                if showProgress { Output.toStderr("\r\u{1B}[Kbench: \(stage)") }
            }
            if showProgress { Output.toStderr("\r\u{1B}[K") }
        } catch {
            if showProgress { Output.toStderr("\r\u{1B}[K") }
            throw Output.fail(error)
        }
        if json { printJSON(r) } else { printTable(r) }
    }

    private func rate(_ v: Double) -> String { "\(Output.bytes(UInt64(max(v, 0))))/s" }

    private func printTable(_ r: BenchReport) {
        let kind = r.isBlockDevice ? "block device" : "file"
        print("\(r.source): \(Output.bytes(r.sourceBytes)) \(kind), \(r.direct ? "O_DIRECT" : "page cache (no O_DIRECT)"); \(r.cores) cores; zstd level \(r.level)")
        print("")
        let uring = r.reads.filter { $0.engine != "pread" }
        let depths = Array(Set(uring.map(\.queueDepth))).sorted()
        let sizes = Array(Set(uring.map(\.requestSize))).sorted()
        let engine = uring.first?.engine ?? "pread"
        print("sequential reads (\(engine))".rightPad(28) + depths.map { "qd \($0)".leftPad(13) }.joined())
        for s in sizes {
            var line = "  \(s >> 10) KiB requests".rightPad(28)
            for d in depths { line += (uring.first { $0.queueDepth == d && $0.requestSize == s }.map { rate($0.bytesPerSecond) } ?? "-").leftPad(13) }
            print(line)
        }
        for p in r.reads where p.engine == "pread" {
            print("sequential reads (pread threads), qd \(p.queueDepth), \(p.requestSize >> 10) KiB: \(rate(p.bytesPerSecond))")
        }
        print("hashing (XXH3-128, 1 thread): \(rate(r.hashBytesPerSecond))")
        print("zstd -\(r.level) compression (ratio \(Output.fixed(r.compressionRatio, 3))): " + r.compression.map { "\($0.threads) thr \(rate($0.bytesPerSecond))" }.joined(separator: ", "))
        print("zstd decompression: " + r.decompression.map { "\($0.threads) thr \(rate($0.bytesPerSecond))" }.joined(separator: ", "))
        if let w = r.writeBytesPerSecond { print("O_DIRECT appends to the chain directory: \(rate(w))") }
        print("zero blocks in the sample: \(Output.fixed(r.zeroFraction * 100, 1))%")
        print("")
        print("predicted full capture:   \(rate(r.fullCapture.bytesPerSecond).leftPad(12))  bound by \(r.fullCapture.bound)")
        print("predicted incremental:    \(rate(r.incrementalCapture.bytesPerSecond).leftPad(12))  bound by \(r.incrementalCapture.bound)")
        print("predicted restore:        \(rate(r.restore.bytesPerSecond).leftPad(12))  bound by \(r.restore.bound)\(r.writeBytesPerSecond == nil ? "" : "") (target writes not measured)")
        print("settings: --queue-depth \(r.queueDepth) (\(r.requestSize >> 10) KiB requests) --threads \(r.threads)")
        print("measured in \(Output.fixed(r.seconds, 1)) s")
    }

    private func printJSON(_ r: BenchReport) {
        let reads = r.reads.map { "{\"engine\":\"\($0.engine)\",\"queueDepth\":\($0.queueDepth),\"requestSize\":\($0.requestSize),\"bytesPerSecond\":\(Int($0.bytesPerSecond))}" }
        let scaling = { (s: [BenchReport.Scaling]) in s.map { "{\"threads\":\($0.threads),\"bytesPerSecond\":\(Int($0.bytesPerSecond))}" } }
        let prediction = { (p: BenchReport.Prediction) in "{\"bytesPerSecond\":\(Int(p.bytesPerSecond)),\"bound\":\"\(Output.escape(p.bound))\"}" }
        var fields: [(String, Any)] = [
            ("source", r.source), ("sourceBytes", r.sourceBytes), ("cores", r.cores), ("level", Int(r.level)), ("reads", reads),
            ("hashBytesPerSecond", Int(r.hashBytesPerSecond)), ("compression", scaling(r.compression)),
            ("compressionRatio", r.compressionRatio), ("decompression", scaling(r.decompression)), ("zeroFraction", r.zeroFraction),
        ]
        if let w = r.writeBytesPerSecond { fields.append(("writeBytesPerSecond", Int(w))) }
        fields += [
            ("fullCapture", RawJSON(prediction(r.fullCapture))), ("incrementalCapture", RawJSON(prediction(r.incrementalCapture))),
            ("restore", RawJSON(prediction(r.restore))), ("queueDepth", r.queueDepth), ("requestSize", r.requestSize),
            ("threads", r.threads), ("seconds", r.seconds),
        ]
        Output.json(fields)
    }
}

/// A value already rendered as JSON.
struct RawJSON: CustomStringConvertible {
    let text: String
    init(_ text: String) { self.text = text }
    var description: String { text }
}

