import ArgumentParser
import StrataChain

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Merge the images of points FROM..TO into one image.",
        usage: "strata merge [<options>] <chain> --to <to>",
        discussion: """
            Point TO keeps its number and restores exactly as before; the points from FROM to just before TO are \
            gone. Without --from, points from the first one are merged into a new full image (a synthetic full). \
            Frames whose blocks all survive are copied without recompression; blocks overwritten within the \
            range are dropped. Interrupted at any moment, the chain keeps either the old points or the new ones.
            """)

    @Argument(help: "Chain directory.") var chain: String
    @Option(help: "First point of the range (default: the chain's first point).") var from: UInt32?
    @Option(help: "Last point of the range; it keeps its number.") var to: UInt32
    @OptionGroup var work: MergeWork

    @OptionGroup var store: StoreArguments

    func run() throws {
        Output.warnIfExposed(chain)
        var options = try work.options(to: to)
        options.from = from
        options.store = store.value
        let progress = ProgressLine(verb: "merge", quiet: work.quiet)
        do {
            let r = try Merge.run(chain: chain, options: options, progress: progress.update)
            progress.finish()
            MergeCommand.report(r, json: work.json, quiet: work.quiet)
        } catch {
            progress.finish()
            throw Output.fail(error)
        }
    }

    static func report(_ r: MergeResult, json: Bool, quiet: Bool) {
        if json {
            Output.json(Report(r))
        } else if !quiet {
            print("merged \(r.imagesMerged) images (points \(r.firstPoint)-\(r.lastPoint)) into \(r.image): \(Output.bytes(r.bytesBefore)) -> \(Output.bytes(r.bytesStored)), \(r.framesCopied) frames copied\(r.framesCopiedInStore > 0 ? " (\(r.framesCopiedInStore) inside the store)" : ""), \(r.framesRepacked) re-packed, in \(Output.fixed(r.seconds, 2)) s")
        }
    }
}

/// The options merge and prune share: how the work is done and how it is reported.
struct MergeWork: ParsableArguments {
    @Option(help: "zstd level for the blocks re-packed into new frames, 1-19 (copied frames keep theirs).") var level: Int32 = 1
    @Option(help: "Worker threads copying and re-packing frames (default: one per core).") var threads: Int?
    @Option(help: "I/O engine for the merged image's writes: auto, uring, or pread.") var ioEngine: IOEngineChoice = .auto
    @Flag(help: "Print one JSON object with the result on stdout.") var json = false
    @Flag(help: "No progress line.") var quiet = false
    @OptionGroup var key: KeyOptions

    func options(to point: UInt32) throws -> MergeOptions {
        var o = MergeOptions(to: point)
        o.secret = try key.secret()
        o.level = level
        o.threads = threads ?? Machine.onlineCores
        o.engine = ioEngine
        return o
    }
}

extension MergeCommand {
    /// What --json prints.
    struct Report: Encodable {
        var firstPoint, point: UInt32, kind: String, imagesMerged, framesCopied, framesRepacked: Int, bytesRepacked: UInt64
        var framesCopiedInStore: Int, bytesCopiedInStore: UInt64, bytesDownloaded: UInt64?, bytesPadding: UInt64
        var bytesBefore, bytesStored: UInt64, seconds: Seconds, image: String, points: [UInt32]

        init(_ r: MergeResult) {
            (firstPoint, point, kind, imagesMerged) = (r.firstPoint, r.lastPoint, r.kind == .full ? "full" : "incremental", r.imagesMerged)
            (framesCopied, framesRepacked, bytesRepacked) = (r.framesCopied, r.framesRepacked, r.bytesRepacked)
            (framesCopiedInStore, bytesCopiedInStore, bytesDownloaded, bytesPadding) = (r.framesCopiedInStore, r.bytesCopiedInStore, r.bytesDownloaded, r.bytesPadding)
            (bytesBefore, bytesStored, seconds, image, points) = (r.bytesBefore, r.bytesStored, Seconds(r.seconds), r.image, r.points)
        }
    }
}
