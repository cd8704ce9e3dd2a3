import ArgumentParser
import StrataChain

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a point of a chain to a block device or a file.",
        usage: "strata restore [<options>] <chain> <target>",
        discussion: """
            Writes the disk exactly as it was at the point, in one sequential pass. A block device must be at least \
            as large as the captured source (checked before anything is written); a file is created sparse, mode \
            0600, with zero ranges left as holes.

            SAFETY: nothing is written when the target is in use (it or one of its partitions mounted, active \
            swap, held by an array or volume, or open exclusively: the device is opened with O_EXCL, so nothing \
            can mount it during the restore either; --force does not override this), when it is part of the chain \
            (one of its files, inside its directory, or a loop device over one), or when it is an existing, \
            non-empty file (pass --force to replace it; it keeps its mode). Each refusal exits 77.

            Every frame's checksum and every block's hash is \
            checked as it is restored; a mismatch stops the restore naming the image and the frame or block. \
            With --verify the target is then read back (direct I/O, so the page cache cannot answer for the \
            device) and every block compared with the chain's hash for it; a difference fails with exit 74. \
            Blocks that were unreadable when the point was captured are written as zeros and reported.

            DELTA: with --delta the target is read first (in parallel, direct I/O) and each block compared with \
            the point's hash for it, from the images' hash tables; only the blocks that differ are written (zeros \
            that differ become holes in a file, BLKZEROOUT on a device), and only the frames holding them are \
            read from the chain. For rolling a disk or a VM image back to a point when it holds a later (or \
            earlier) state of the same disk: the result is the same as a full restore, byte for byte. Killed \
            part way, the target is part old, part new, as after a killed full restore: run the same command \
            again and it writes only what is still different. An existing file still needs --force, and a \
            device in use is refused as without --delta.

            --json prints one object: point, bytesWritten (with --delta only what was written or zeroed), \
            bytesCompared and blocksDiffering (with --delta), images, seconds, engine, verified, \
            unreadableBlocks, unreadableRanges ([offset, length] in bytes, the first 1000).

            EXAMPLES
              strata restore /backup/sdb /dev/sdc --point 2
              strata restore /backup/sdb disk.img
              strata restore /backup/sdb /dev/sdc --verify
              strata restore /backup/sda /dev/sda --point 12 --delta   # roll back
              strata restore /backup/web /var/lib/libvirt/images/web.img --delta --force
            """)

    @Argument(help: "Chain directory.") var chain: String
    @Argument(help: "Block device, file, or NBD URI (nbd://, nbds://, nbd+unix://) to write.") var target: String
    @Option(help: "Point to restore (default: the newest).") var point: UInt32?
    @Option(help: "Decompression threads (default: one per core).") var threads: Int?
    @Option(help: "I/O engine: auto, uring, or pread.") var ioEngine: IOEngineChoice = .auto
    @Flag(help: "Read the target back after writing and check every block against the chain.") var verify = false
    @Flag(help: "Read the target and write only the blocks that differ from the point.") var delta = false
    @Flag(help: "Replace an existing, non-empty target file (never overrides a device in use).") var force = false
    @Flag(help: "Print one JSON object with the result on stdout.") var json = false
    @Flag(help: "No progress line.") var quiet = false

    @OptionGroup var key: KeyOptions

    func run() throws {
        Output.warnIfExposed(chain)
        var options = RestoreOptions()
        options.point = point
        options.threads = max(1, threads ?? Machine.onlineCores)
        options.engine = ioEngine
        options.secret = try key.secret()
        options.verify = verify
        options.force = force
        options.delta = delta
        let progress = ProgressLine(verb: "restore", quiet: quiet)
        do {
            let r = try Restore.run(chain: chain, target: target, options: options, progress: progress.update, notice: Output.notice)
            progress.finish()
            if json {
                Output.json(Report(r, delta: delta))
            } else {
                if r.unreadableBlocks > 0 { Output.unreadable(r.unreadableBlocks, r.unreadableRanges, "written as zeros (unreadable at capture)") }
                if !quiet {
                    let written = delta
                        ? "\(r.blocksDiffering) block\(r.blocksDiffering == 1 ? "" : "s") differed, \(Output.bytes(r.bytesWritten)) written of \(Output.bytes(r.bytesCompared)) compared"
                        : Output.bytes(r.bytesWritten)
                    print("restored point \(r.point) (\(r.images) image\(r.images == 1 ? "" : "s")): \(written) in \(Output.fixed(r.seconds, 2)) s\(r.verified ? ", read back and verified" : "")")
                }
            }
        } catch {
            progress.finish()
            throw Output.fail(error)
        }
    }
}

extension RestoreCommand {
    /// What --json prints.
    struct Report: Encodable {
        var point: UInt32, bytesWritten: UInt64, images: Int, seconds: Seconds, engine: String
        var bytesCompared: UInt64?, blocksDiffering: UInt64?
        var verified: Bool, unreadableBlocks: UInt64, unreadableRanges: [[UInt64]]

        init(_ r: RestoreResult, delta: Bool) {
            (point, bytesWritten, images, seconds, engine) = (r.point, r.bytesWritten, r.images, Seconds(r.seconds), r.engine)
            if delta { (bytesCompared, blocksDiffering) = (r.bytesCompared, r.blocksDiffering) }
            (verified, unreadableBlocks, unreadableRanges) = (r.verified, r.unreadableBlocks, Output.ranges(r.unreadableRanges))
        }
    }
}
