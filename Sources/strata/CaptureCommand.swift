import ArgumentParser
import StrataChain
import StrataIO

extension IOEngineChoice: ExpressibleByArgument {}

struct CaptureCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capture",
        abstract: "Capture a block device or image file into a chain.",
        discussion: """
            The first capture into CHAIN (a directory, created if missing) writes a full image; every later one an \
            incremental image of the blocks whose content changed since the previous capture. Holes of a sparse \
            image file are not read. A capture that is interrupted (Ctrl-C, kill, power cut, full disk) leaves the \
            chain as it was; the next run removes its temporary files.

            --json prints one object: point, kind (full or incremental), sourceBytes, bytesRead, blocksChanged, \
            bytesStored, seconds, engine, image.

            EXAMPLES
              strata capture /dev/sdb /backup/sdb
              strata capture disk.img /backup/vm1 --block-size 65536 --json
              strata capture /dev/nvme0n1 /backup/nvme --io-engine pread --threads 8
            """)

    @Argument(help: "Block device or image file to read.") var source: String
    @Argument(help: "Chain directory.") var chain: String
    @Option(help: "Block size for a new chain: a power of two from 512 to 1048576 (default 4096).") var blockSize: UInt32?
    @Option(help: "zstd compression level, 1-19.") var level: Int32 = 1
    @Option(help: "Hashing and compression threads (default: one per core).") var threads: Int?
    @Option(help: "Read requests in flight.") var queueDepth: Int = 32
    @Option(help: "I/O engine: auto (io_uring, else pread threads), uring, or pread.") var ioEngine: IOEngineChoice = .auto
    @Flag(help: "Capture even if the source is mounted read-write (the image may be inconsistent).") var allowMounted = false
    @Flag(help: "Print one JSON object with the result on stdout.") var json = false
    @Flag(help: "No progress line.") var quiet = false

    func run() throws {
        var options = CaptureOptions()
        options.blockSize = blockSize
        options.level = level
        options.threads = threads ?? Sys.onlineCores
        options.queueDepth = queueDepth
        options.engine = ioEngine
        options.allowMounted = allowMounted
        let progress = ProgressLine(verb: "capture", quiet: quiet)
        do {
            let r = try Capture.run(source: source, chain: chain, options: options, progress: progress.update, notice: Output.notice)
            progress.finish()
            if json {
                Output.json([
                    ("point", r.point), ("kind", r.kind == .full ? "full" : "incremental"), ("sourceBytes", r.sourceBytes),
                    ("bytesRead", r.bytesRead), ("blocksChanged", r.blocksChanged), ("bytesStored", r.bytesStored),
                    ("seconds", r.seconds), ("engine", r.engine), ("image", r.image),
                ])
            } else if !quiet {
                let rate = Double(r.bytesRead) / max(r.seconds, 0.001)
                print("point \(r.point) (\(r.kind == .full ? "full" : "incremental")): read \(Output.bytes(r.bytesRead)), \(r.blocksChanged) blocks changed, stored \(Output.bytes(r.bytesStored)) in \(String(format: "%.2f", r.seconds)) s (\(Output.bytes(UInt64(rate)))/s)")
            }
        } catch {
            progress.finish()
            throw Output.fail(error)
        }
    }
}
