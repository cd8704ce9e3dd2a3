import ArgumentParser
import StrataChain

struct SyncCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Make DST a copy of the chain SRC, copying only what DST lacks.",
        usage: "strata sync [<options>] <source> <destination>",
        discussion: """
            SRC and DST are chains in any two stores: directories, or s3://BUCKET/PREFIX. DST is made if it does \
            not exist. Only the images DST lacks are copied, each frame checked against its checksum on the way \
            (a damaged SRC fails the sync and names the frame); images SRC merged or pruned away leave DST. DST \
            is a valid chain at every instant: its manifest is replaced last, in one step, so an interrupted sync \
            leaves DST as it was or as SRC (a sync run again copies only what is still missing). A second sync \
            copies nothing. No key is needed for an encrypted chain: it is copied sealed.

            Refused, with DST unchanged (exit 77): DST holds another chain, or has points SRC has not seen (a \
            capture into the copy). DST in use by another writer: exit 75.

            --json prints one object: points, objectsCopied, bytesCopied, objectsKept, objectsRemoved, seconds.

            EXAMPLES
              strata sync /backup/sdb s3://offsite/host1/sdb
              strata sync s3://offsite/host1/sdb /restore-area/sdb
            """)

    @Argument(help: "The chain to copy.") var source: String
    @Argument(help: "Where it goes: a directory or s3://BUCKET/PREFIX.") var destination: String
    @Option(help: "Ranges copied at once (default 8).") var threads: Int = 8
    @Flag(help: "Print one JSON object with the result on stdout.") var json = false
    @Flag(help: "No progress line.") var quiet = false

    @OptionGroup var store: StoreArguments

    func run() throws {
        Output.warnIfExposed(destination)
        var options = SyncOptions()
        options.threads = threads
        options.store = store.value
        let progress = ProgressLine(verb: "sync", quiet: quiet)
        let r: SyncResult
        do {
            r = try Sync.run(from: source, to: destination, options: options, progress: progress.update)
            progress.finish()
        } catch {
            progress.finish()
            throw Output.fail(error)
        }
        if json {
            Output.json(Report(
                points: r.points, objectsCopied: r.objectsCopied, bytesCopied: r.bytesCopied, objectsKept: r.objectsKept,
                objectsRemoved: r.objectsRemoved, seconds: Seconds(r.seconds)))
        } else if !quiet {
            if r.objectsCopied == 0 && r.objectsRemoved == 0 {
                print("\(destination) is up to date (\(r.points.count) points)")
            } else {
                print("synced \(r.points.count) points to \(destination): \(r.objectsCopied) objects copied (\(Output.bytes(r.bytesCopied))), \(r.objectsKept) already there, \(r.objectsRemoved) removed, in \(Output.fixed(r.seconds, 2)) s")
            }
        }
    }
}

extension SyncCommand {
    /// What --json prints.
    struct Report: Encodable {
        var points: [UInt32], objectsCopied: Int, bytesCopied: UInt64, objectsKept, objectsRemoved: Int, seconds: Seconds
    }
}
