// Child processes for tests, each with a deadline: a strata (or a tool) that hangs is killed when its time is
// up and the run says so, so a deadlock fails the test with a message instead of hanging CI. Shared by every
// test target.
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// How a child process ended.
public struct ProcessResult {
    public var status: Int32
    /// Whether it was killed by a signal (then `status` is the signal's number).
    public var signalled: Bool
    public var stdout: String
    public var stderr: String
    /// Whether the deadline passed and the child was killed for it.
    public var timedOut: Bool
}

/// Seconds a child may run before it is killed: generous, since CI machines are slow, but finite.
public let defaultDeadline: Double = 300

/// A started child process with a watchdog; `finish` collects its output and waits for it.
public final class ChildProcess {
    public let process: Process
    private let out = Pipe()
    private let err = Pipe()
    private let watchdog: DispatchWorkItem
    private let timedOutFlag = LockedFlag()
    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    /// Starts `executable` with `args`; stdout and stderr are collected unless `quiet` (then discarded, so a
    /// child killed mid-write cannot block on a full pipe). `stdin`, when given, is written and closed.
    public init(_ executable: String, _ args: [String], deadline: Double = defaultDeadline, stdin: Data? = nil, quiet: Bool = false) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        process.standardOutput = quiet ? FileHandle.nullDevice : out
        process.standardError = quiet ? FileHandle.nullDevice : err
        let input = Pipe()
        if stdin != nil { process.standardInput = input }
        let p = process
        let flag = timedOutFlag
        watchdog = DispatchWorkItem {
            if p.isRunning {
                flag.set()
                kill(p.processIdentifier, SIGKILL)
            }
        }
        try process.run()
        DispatchQueue.global().asyncAfter(deadline: .now() + deadline, execute: watchdog)
        if let stdin {
            input.fileHandleForWriting.write(stdin)
            input.fileHandleForWriting.closeFile()
        }
        self.quiet = quiet
    }

    private let quiet: Bool

    /// Waits for the child to end (or its deadline) and returns how it ended and what it printed.
    public func finish() -> ProcessResult {
        let o = quiet ? Data() : out.fileHandleForReading.readDataToEndOfFile()
        let e = quiet ? Data() : err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        watchdog.cancel()
        return ProcessResult(
            status: process.terminationStatus, signalled: process.terminationReason == .uncaughtSignal,
            stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self), timedOut: timedOutFlag.isSet)
    }
}

/// Runs a command to its end, with a deadline.
public func runProcess(_ executable: String, _ args: [String], deadline: Double = defaultDeadline, stdin: Data? = nil) -> ProcessResult {
    do { return try ChildProcess(executable, args, deadline: deadline, stdin: stdin).finish() } catch {
        return ProcessResult(status: 127, signalled: false, stdout: "", stderr: "\(error)", timedOut: false)
    }
}

final class LockedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}
