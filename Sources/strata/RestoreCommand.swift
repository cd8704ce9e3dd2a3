import ArgumentParser
import StrataChain

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a point of a chain (or one of its partitions) to a block device, a file, an NBD export or a pipe.",
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
            device in use is refused as without --delta. In a chain of used blocks (capture --used-blocks) the \
            blocks no filesystem used are neither compared nor written: they keep what the target holds (no \
            filesystem reads them), or with --discard are discarded (trim on an NBD export, BLKDISCARD on a \
            device, a hole in a file); --verify then checks every other block.

            PARTITIONS: with --partition N only partition N of the point is restored (found in the point's own \
            partition table, GPT or MBR, read with libblkid; `strata list CHAIN --partitions` shows it), onto a \
            partition, a device, a file or a pipe of at least its size: the target's byte 0 is the partition's \
            first byte. --delta and --verify work on it as on a whole disk. A partition that does not start on \
            one of the chain's blocks (an old MBR disk's 63-sector start under 4096-byte blocks) is refused: \
            restore the whole point, or capture such a disk with --block-size 512.

            STREAMS: a target of - writes the point (or the partition) to standard output, in order, zeros \
            written out: for | ssh host dd of=/dev/sdb bs=1M, or | qemu-img dd. A terminal is refused, and so \
            are --delta and --verify (standard output cannot be read back); the summary and --json then go to \
            standard error.

            --json prints one object: point, bytesWritten (with --delta only what was written or zeroed), \
            bytesCompared, blocksDiffering and blocksFree (with --delta), partition (with --partition: number, \
            offset, size, type), images, seconds, engine, verified, \
            unreadableBlocks, unreadableRanges ([offset, length] in bytes, the first 1000).

            EXAMPLES
              strata restore /backup/sdb /dev/sdc --point 2
              strata restore /backup/sdb disk.img
              strata restore /backup/sdb /dev/sdc --verify
              strata restore /backup/sda /dev/sda --point 12 --delta   # roll back
              strata restore /backup/web /var/lib/libvirt/images/web.img --delta --force
              strata restore /backup/sda /dev/sdb2 --partition 2
              strata restore /backup/sda - | ssh host dd of=/dev/sdb bs=1M
            """)

    @Argument(help: "Chain directory.") var chain: String
    @Argument(help: "Block device, file, NBD URI (nbd://, nbds://, nbd+unix://), or - for standard output.") var target: String
    @Option(help: "Point to restore (default: the newest).") var point: UInt32?
    @Option(help: ArgumentHelp("Restore only this partition of the point (its number in the point's partition table).", valueName: "n"))
    var partition: Int?
    @Option(help: "Decompression threads (default: one per core).") var threads: Int?
    @Option(help: "I/O engine: auto, uring, or pread.") var ioEngine: IOEngineChoice = .auto
    @Flag(help: "Read the target back after writing and check every block against the chain.") var verify = false
    @Flag(help: "Read the target and write only the blocks that differ from the point.") var delta = false
    @Flag(help: "With --delta: discard the point's free blocks on the target (a chain of used blocks).") var discard = false
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
        options.discard = discard
        options.partition = partition
        // Restored to standard output, the point is the output: the summary goes to standard error.
        let toStream = target == Restore.standardOutput
        func say(_ line: String) { if toStream { Output.toStderr(line + "\n") } else { print(line) } }
        let progress = ProgressLine(verb: "restore", quiet: quiet)
        do {
            let r = try Restore.run(chain: chain, target: target, options: options, progress: progress.update, notice: Output.notice)
            progress.finish()
            if json {
                say(Output.jsonText(Report(r, delta: delta)))
            } else {
                if r.unreadableBlocks > 0 { Output.unreadable(r.unreadableBlocks, r.unreadableRanges, "written as zeros (unreadable at capture)") }
                if !quiet {
                    let written = delta
                        ? "\(r.blocksDiffering) block\(r.blocksDiffering == 1 ? "" : "s") differed, \(Output.bytes(r.bytesWritten)) written of \(Output.bytes(r.bytesCompared)) compared"
                        : Output.bytes(r.bytesWritten)
                    let what = r.partition.map { "partition \($0.number) of point \(r.point)" } ?? "point \(r.point)"
                    say("restored \(what) (\(r.images) image\(r.images == 1 ? "" : "s")): \(written) in \(Output.fixed(r.seconds, 2)) s\(r.verified ? ", read back and verified" : "")")
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
        var bytesCompared: UInt64?, blocksDiffering: UInt64?, blocksFree: UInt64?
        struct Partition: Encodable { var number: Int, offset, size: UInt64, type: String }
        var partition: Partition?
        var verified: Bool, unreadableBlocks: UInt64, unreadableRanges: [[UInt64]]

        init(_ r: RestoreResult, delta: Bool) {
            (point, bytesWritten, images, seconds, engine) = (r.point, r.bytesWritten, r.images, Seconds(r.seconds), r.engine)
            if delta { (bytesCompared, blocksDiffering, blocksFree) = (r.bytesCompared, r.blocksDiffering, r.blocksFree) }
            partition = r.partition.map { Partition(number: $0.number, offset: $0.offset, size: $0.size, type: $0.type) }
            (verified, unreadableBlocks, unreadableRanges) = (r.verified, r.unreadableBlocks, Output.ranges(r.unreadableRanges))
        }
    }
}
