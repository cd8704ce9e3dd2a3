import ArgumentParser
import StrataChain

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check that every point of a chain restores, without restoring it.",
        usage: "strata verify [<options>] <chain>",
        discussion: """
            Checks the manifest, each image's header and index, that each image is the one the manifest names and \
            links to the image before it, the head hash map, and every frame: its checksum, and (unless \
            --checksums-only) every block decompressed and compared with its stored hash. Damage does not stop the \
            check: every damaged image and frame is named with the source blocks it holds, and each point is \
            reported whole or affected (a damaged frame whose blocks a later image replaced does not affect the \
            later points). Runs in parallel and never changes the chain; it can run beside restores.

            Exit status 0 when everything is whole, 65 when anything is damaged.

            --json prints one object: points, images, frames, bytesRead, seconds, whole (true or false), \
            problems ([{file, detail, blocks: [[first, count], ...]}]), affectedPoints, wholePoints.

            EXAMPLES
              strata verify /backup/sdb
              strata verify /backup/sdb --point 5 --json
              strata verify /backup/sdb --checksums-only
            """)

    @Argument(help: "Chain directory.") var chain: String
    @Option(help: "Check only what this point needs.") var point: UInt32?
    @Flag(help: "Check frame checksums only; do not decompress and hash every block.") var checksumsOnly = false
    @Option(help: "Checking threads (default: one per core).") var threads: Int?
    @Option(help: "I/O engine: auto, uring, or pread.") var ioEngine: IOEngineChoice = .auto
    @Flag(help: "Print one JSON object with the result on stdout.") var json = false
    @Flag(help: "No progress line.") var quiet = false
    @OptionGroup var metrics: MetricsFile
    @OptionGroup var key: KeyOptions

    func run() throws {
        Output.warnIfExposed(chain)
        try metrics.check()
        let clock = RunMetrics.Stopwatch()
        var options = VerifyOptions()
        options.point = point
        options.checksumsOnly = checksumsOnly
        options.threads = threads ?? Machine.onlineCores
        options.engine = ioEngine
        options.secret = try key.secret()
        let progress = ProgressLine(verb: "verify", quiet: quiet)
        let r: VerifyReport
        do {
            r = try Verify.run(chain: chain, options: options, progress: progress.update)
            progress.finish()
        } catch {
            progress.finish()
            metrics.record("verify", chain: chain, clock: clock, failure: error)
            throw Output.fail(error)
        }
        if json {
            Output.json(Report(r))
        } else {
            for p in r.problems {
                let blocks = p.blocks.isEmpty ? "" : "; source blocks " + p.blocks.prefix(8).map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound - 1)" }.joined(separator: ", ") + (p.blocks.count > 8 ? " and \(p.blocks.count - 8) more" : "")
                print("damaged: \(p.file): \(p.detail)\(blocks)")
            }
            if !quiet || !r.isWhole {
                let points = { (ps: [UInt32]) in ps.isEmpty ? "none" : ps.map(String.init).joined(separator: ", ") }
                print("checked \(r.images) image\(r.images == 1 ? "" : "s"), \(r.frames) frames, \(Output.bytes(r.bytesRead)) in \(Output.fixed(r.seconds, 2)) s: "
                    + (r.isWhole ? "all whole" : "\(r.problems.count) damaged; points whole: \(points(r.wholePoints)); points affected: \(points(r.affectedPoints))"))
            }
        }
        let damage = r.isWhole ? nil : ChainError.verifyFailed(damaged: r.problems.count, affectedPoints: r.affectedPoints)
        metrics.record("verify", chain: chain, clock: clock, failure: damage, seconds: r.seconds, read: r.bytesRead)
        if let damage { throw Output.fail(damage) }
    }
}

extension VerifyCommand {
    /// What --json prints.
    struct Report: Encodable {
        struct Problem: Encodable {
            var file, detail: String, blocks: [[UInt64]]
        }
        var points: [UInt32], images, frames: Int, bytesRead: UInt64, seconds: Seconds, whole: Bool, problems: [Problem]
        var affectedPoints, wholePoints: [UInt32]

        init(_ r: VerifyReport) {
            (points, images, frames, bytesRead, seconds, whole) = (r.points, r.images, r.frames, r.bytesRead, Seconds(r.seconds), r.isWhole)
            problems = r.problems.map { Problem(file: $0.file, detail: $0.detail, blocks: Output.ranges($0.blocks)) }
            (affectedPoints, wholePoints) = (r.affectedPoints, r.wholePoints)
        }
    }
}
