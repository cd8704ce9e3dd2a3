import ArgumentParser
import StrataBench
import StrataChain

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure how fast this machine can image a source, and what bounds it. Never writes to SOURCE.",
        usage: "strata bench [<options>] <source>",
        discussion: """
            Runs the real pipelines on a sample of SOURCE (1 GiB in 32 pieces spread over it, read as a capture \
            reads): a full capture at 1, 2, 4 ... --threads threads, an incremental capture of the same sample in \
            which --changed percent of the blocks are stored anew (a night's changes: compressed and written as a \
            real night's are; default 3, about what a night of a busy server's disk changes), and a restore, into a scratch chain in --chain-dir (the filesystem that will hold the chain; without it, \
            /dev/shm, and bench says writes there cost less than on a disk), then removes all it wrote. The rates, \
            extrapolated to SOURCE's size, are its predictions, and the bound it names is what it saw busy: CPU time \
            of the I/O thread, the workers, the coordinator and the writer, and the process's kernel time.

            It also measures each stage alone, for a bounded share of --seconds, as the explanation: sequential \
            direct reads of SOURCE through io_uring over a sweep of queue depths and request sizes, and through the \
            pread engine at the best setting; XXH3 hashing; zstd compression at --level on a sample of SOURCE's \
            data with 1, 2, 4 ... --threads threads, and decompression; and with --chain-dir, O_DIRECT appends into \
            that directory's filesystem. It prints the capture settings it would choose (the fewest threads within \
            5% of the fastest real capture). --chart FILE.svg draws the real capture's rate against threads and the \
            reads against requests in flight, with the device's read rate as a line.

            --json prints one object: source, sourceBytes, cores, level, reads ([{engine, queueDepth, \
            requestSize, bytesPerSecond}]), hashBytesPerSecond, compression and decompression ([{threads, \
            bytesPerSecond}], uncompressed bytes), compressionRatio, zeroFraction, writeBytesPerSecond, \
            fullCapture, incrementalCapture, restore (predictions from the real runs: {bytesPerSecond, seconds for \
            the whole source, bound}), changedPercent, runs ({sampleBytes, pieces, scratch, scratchInRAM, fullCapture: [run], \
            incrementalCapture: run, restore: run}, each run {threads, seconds, bytes, bytesPerSecond, \
            userSeconds, systemSeconds, stages: [{stage, threads, cpuSeconds}]}), model (the stage model's \
            fullCapture, incrementalCapture, restore), queueDepth, requestSize, threads, seconds.

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
    @Option(help: "Percentage of blocks the incremental run treats as changed (a night's changes).") var changed: Double = 3
    @Option(help: "Also draw the run as an SVG chart into FILE (throughput against threads and requests in flight).") var chart: String?
    @Flag(help: "Print one JSON object with the result on stdout.") var json = false
    @Flag(help: "No progress line.") var quiet = false

    func run() throws {
        if let chart { do { try BenchChart.checkPath(chart) } catch { throw Output.fail(error) } }
        var options = BenchOptions()
        options.seconds = seconds
        options.threads = threads ?? Machine.onlineCores
        options.level = level
        options.chainDirectory = chainDir
        options.changedFraction = changed / 100
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
        if let chart { do { try BenchChart.write(r, to: chart) } catch { throw Output.fail(error) } }
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
        print("stage model (each stage alone): full capture \(rate(r.model.fullCapture.bytesPerSecond)) (\(r.model.fullCapture.bound)), incremental \(rate(r.model.incrementalCapture.bytesPerSecond)) (\(r.model.incrementalCapture.bound)), restore \(rate(r.model.restore.bytesPerSecond)) (\(r.model.restore.bound))")
        print("")
        let runs = r.runs
        print("real pipelines on a \(Output.bytes(runs.sampleBytes)) sample (\(runs.pieces) pieces spread over the source), chain and restore target in \(runs.scratch)\(runs.scratchInRAM ? " (RAM: no --chain-dir, so writes cost less than on a disk)" : ""):")
        print("  full capture: " + runs.fullCapture.map { "\($0.threads) thr \(rate($0.bytesPerSecond))" }.joined(separator: ", "))
        for (what, p) in [("full capture", runs.fullCapture.last!), ("incremental", runs.incrementalCapture), ("restore", runs.restore)] {
            print("  busy, \(what) (\(p.threads) thread\(p.threads == 1 ? "" : "s")): \(p.busyLine)")
        }
        print("")
        func line(_ what: String, _ p: BenchReport.Prediction) {
            print("predicted \(what)\(rate(p.bytesPerSecond).leftPad(12)), \(Output.fixed(p.seconds, 1)) s for the whole source; bound by \(p.bound)")
        }
        line("full capture:", r.fullCapture)
        line("incremental (\(Output.fixed(changed, changed == changed.rounded() ? 0 : 1))% changed):", r.incrementalCapture)
        line("restore:", r.restore)
        print("settings: --queue-depth \(r.queueDepth) (\(r.requestSize >> 10) KiB requests) --threads \(r.threads)")
        print("measured in \(Output.fixed(r.seconds, 1)) s")
    }

    private func printJSON(_ r: BenchReport) { Output.json(Report(r, changedPercent: changed)) }
}

extension BenchCommand {
    /// What --json prints.
    struct Report: Encodable {
        struct Read: Encodable { var engine: String, queueDepth, requestSize, bytesPerSecond: Int }
        struct Scaling: Encodable { var threads, bytesPerSecond: Int }
        struct Prediction: Encodable {
            var bytesPerSecond: Int, seconds: Seconds, bound: String
            init(_ p: BenchReport.Prediction) { (bytesPerSecond, seconds, bound) = (Int(p.bytesPerSecond), Seconds(p.seconds), p.bound) }
        }
        struct Profile: Encodable {
            struct Stage: Encodable { var stage: String, threads: Int, cpuSeconds: Seconds }
            var threads: Int, seconds: Seconds, bytes: UInt64, bytesPerSecond: Int, userSeconds, systemSeconds: Seconds, stages: [Stage]
            init(_ p: RunProfile) {
                (threads, seconds, bytes, bytesPerSecond) = (p.threads, Seconds(p.seconds), p.bytes, Int(p.bytesPerSecond))
                (userSeconds, systemSeconds) = (Seconds(p.user), Seconds(p.system))
                stages = p.stages.map { Stage(stage: $0.name, threads: $0.threads, cpuSeconds: Seconds($0.cpuSeconds)) }
            }
        }
        struct Runs: Encodable {
            var sampleBytes: UInt64, pieces: Int, scratch: String, scratchInRAM: Bool
            var fullCapture: [Profile], incrementalCapture, restore: Profile
        }
        struct Model: Encodable { var fullCapture, incrementalCapture, restore: Prediction }

        var source: String, sourceBytes: UInt64, cores, level: Int, reads: [Read], hashBytesPerSecond: Int
        var compression: [Scaling], compressionRatio: Double, decompression: [Scaling], zeroFraction: Double
        var writeBytesPerSecond: Int?
        var fullCapture, incrementalCapture, restore: Prediction, changedPercent: Double, runs: Runs, model: Model
        var queueDepth, requestSize, threads: Int, seconds: Seconds

        init(_ r: BenchReport, changedPercent: Double) {
            (source, sourceBytes, cores, level) = (r.source, r.sourceBytes, r.cores, Int(r.level))
            reads = r.reads.map { Read(engine: $0.engine, queueDepth: $0.queueDepth, requestSize: $0.requestSize, bytesPerSecond: Int($0.bytesPerSecond)) }
            hashBytesPerSecond = Int(r.hashBytesPerSecond)
            let scaling = { (s: [BenchReport.Scaling]) in s.map { Scaling(threads: $0.threads, bytesPerSecond: Int($0.bytesPerSecond)) } }
            (compression, compressionRatio, decompression, zeroFraction) = (scaling(r.compression), r.compressionRatio, scaling(r.decompression), r.zeroFraction)
            writeBytesPerSecond = r.writeBytesPerSecond.map { Int($0) }
            (fullCapture, incrementalCapture, restore) = (Prediction(r.fullCapture), Prediction(r.incrementalCapture), Prediction(r.restore))
            self.changedPercent = changedPercent
            let u = r.runs
            runs = Runs(
                sampleBytes: u.sampleBytes, pieces: u.pieces, scratch: u.scratch, scratchInRAM: u.scratchInRAM,
                fullCapture: u.fullCapture.map(Profile.init), incrementalCapture: Profile(u.incrementalCapture), restore: Profile(u.restore))
            model = Model(fullCapture: Prediction(r.model.fullCapture), incrementalCapture: Prediction(r.model.incrementalCapture), restore: Prediction(r.model.restore))
            (queueDepth, requestSize, threads, seconds) = (r.queueDepth, r.requestSize, r.threads, Seconds(r.seconds))
        }
    }
}
