// What a front end (the CLI, a test, a benchmark) needs from the layers under StrataChain, declared here so it
// imports StrataChain alone: the I/O engine choice its options take, the system error its failures may carry,
// and the few facts about the machine a front end asks (cores for the default thread count, whether stderr is
// a terminal, a monotonic clock for progress rates).
import StrataCodec
import StrataIO

public typealias UserSecret = StrataCodec.UserSecret
public typealias IOEngineChoice = StrataIO.IOEngineChoice
public typealias IOError = StrataIO.IOError

public enum Machine {
    public static var onlineCores: Int { Sys.onlineCores }
    public static func isTerminal(_ fd: Int32) -> Bool { Sys.isTerminal(fd) }
    public static func monotonicNanos() -> UInt64 { Sys.monotonicNanos() }
}
