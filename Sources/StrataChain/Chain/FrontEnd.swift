// What a front end (the CLI, a test, a benchmark) needs from the layers under StrataChain, declared here so it
// imports StrataChain alone: the I/O engine choice its options take, the system error its failures may carry,
// and the few facts about the machine a front end asks (cores for the default thread count, whether stderr is
// a terminal, a monotonic clock for progress rates).
import StrataCodec
import StrataIO

public typealias UserSecret = StrataCodec.UserSecret
public typealias IOEngineChoice = StrataIO.IOEngineChoice
public typealias IOError = StrataIO.IOError
// A point's partitions (PointLayout), as libblkid reads them.
public typealias PartitionTable = StrataIO.PartitionTable
public typealias DiskPartition = StrataIO.DiskPartition
public typealias DiskContent = StrataIO.DiskContent

public enum Machine {
    public static var onlineCores: Int { Sys.onlineCores }
    public static func isTerminal(_ fd: Int32) -> Bool { Sys.isTerminal(fd) }
    public static func monotonicNanos() -> UInt64 { Sys.monotonicNanos() }
    /// An environment variable's value; nil where it is not set.
    public static func environment(_ name: String) -> String? { Sys.environment(name) }
    /// Writes `text` to standard error at once (unbuffered).
    public static func writeToStandardError(_ text: String) { Sys.writeStandardError(text) }

    /// Sets up the process for the command line `arguments` before anything else runs. In a run that names a
    /// bucket, buffers of 4 MiB and more (an upload's 8 and 16 MiB parts) come from mmap and go back when freed:
    /// a capture into a bucket, whose part buffers are freed on the threads that sent them, peaked at 407 MB
    /// without this, 156 MB with it. Only there: glibc's own sliding threshold is what the rest wants (with the
    /// threshold fixed at 1 MiB for every command, each 1 MiB request libfuse took was a fresh mapping, and `dd`
    /// of a mounted point ran at 0.45-0.60x a restore instead of 0.67-0.70x).
    public static func prepare(arguments: [String]) {
        if arguments.contains(where: { !ChainStores.isLocal($0) }) { Sys.mapLargeAllocations(from: 4 << 20) }
    }
}
