import ArgumentParser
import StrataChain

/// `--metrics-file`, shared by capture, prune and verify: checked before the run, written after it whatever
/// its outcome (a failed run is recorded as failed, with its exit code).
struct MetricsFile: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Write the run's outcome to this Prometheus text-format file (atomically; for node_exporter's textfile collector).",
        valueName: "path"))
    var metricsFile: String?

    /// Refuses at once, before any work, a path whose directory cannot take the file.
    func check() throws {
        guard let metricsFile else { return }
        do { try RunMetrics.checkWritable(metricsFile) } catch { throw Output.fail(error) }
    }

    /// Records the run; a file that cannot be written costs a warning line, not the run's outcome.
    func record(
        _ command: String, chain: String, clock: RunMetrics.Stopwatch, failure: Error? = nil, seconds: Double? = nil, read: UInt64 = 0,
        stored: UInt64 = 0, capture: CaptureResult? = nil
    ) {
        guard let metricsFile else { return }
        var m = RunMetrics(
            command: command, chain: chain, success: failure == nil, exitCode: failure.map(Output.exitCode(of:)) ?? 0,
            seconds: seconds ?? clock.seconds, bytesRead: read, bytesStored: stored)
        if let capture {
            (m.changeSource, m.bytesSampled, m.missedChanges) = (capture.changeSource, capture.bytesSampled, capture.missedChangeAt != nil)
        }
        do { try m.write(to: metricsFile) } catch ChainError.outputUnwritable(_, let reason) {
            Output.notice("warning: cannot write the metrics file \(metricsFile): \(reason)")
        } catch {
            Output.notice("warning: cannot write the metrics file \(metricsFile): \(error)")
        }
    }
}
