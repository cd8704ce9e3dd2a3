// bench's real runs: the capture, incremental and restore pipelines themselves, on a sample of the source (pieces
// spread over it, read through the same engine with O_DIRECT), into a scratch chain on the filesystem that will
// hold the chain. Each run is timed and profiled: CPU time by stage (the I/O thread, the workers, the
// coordinator, the writer) and the process's kernel time, so the bound bench names is what it saw busy, not a
// model's guess. The sample's rates, extrapolated to the source's size, are the predictions.
import StrataChain
import StrataIO

/// What one real run did: its wall time, the bytes of the sample it went through, and who was busy.
public struct RunProfile: Sendable {
    public var threads: Int
    public var seconds: Double
    public var bytes: UInt64
    /// CPU seconds by stage: "I/O thread", "workers", "coordinator", "writer".
    public var stages: [(name: String, threads: Int, cpuSeconds: Double)]
    /// CPU seconds of the whole process, in user space and in the kernel.
    public var user: Double
    public var system: Double

    public var bytesPerSecond: Double { Double(bytes) / max(seconds, 1e-9) }

    /// The busiest stage's share of one core per thread, and the stage.
    func busiest() -> (name: String, busy: Double)? {
        stages.map { ($0.name, $0.cpuSeconds / (max(seconds, 1e-9) * Double(max($0.threads, 1)))) }.max { $0.1 < $1.1 }
    }

    /// What bounded the run, said from what was busy: the cores (all of them busy), a stage (its threads busy),
    /// or the device (nothing busy: the pipeline waited on I/O).
    func bound(cores: Int, readRate: Double) -> String {
        let coresBusy = (user + system) / max(seconds, 1e-9)
        let kernel = system / max(seconds, 1e-9)
        let top = busiest()
        if coresBusy >= 0.85 * Double(cores) {
            return "the cores: \(fmt(coresBusy)) of \(cores) busy, \(fmt(kernel)) of them in the kernel (reading and writing for the process)"
        }
        if let top, top.busy >= 0.85 {
            return "the \(top.name) (\(Int(top.busy * 100))% busy)"
        }
        if bytesPerSecond >= 0.8 * readRate {
            return "the device's reads (\(Int(bytesPerSecond / max(readRate, 1) * 100))% of its read rate; no stage busier than \(Int((top?.busy ?? 0) * 100))%)"
        }
        return "waiting on I/O (\(fmt(coresBusy)) of \(cores) cores busy, no stage busier than \(Int((top?.busy ?? 0) * 100))%)"
    }

    /// One line: each stage's busy share.
    public var busyLine: String {
        let s = stages.map { st -> String in
            let busy = Int(st.cpuSeconds / max(seconds, 1e-9) / Double(max(st.threads, 1)) * 100)
            return st.threads > 1 ? "\(st.name) \(st.threads) x \(busy)%" : "\(st.name) \(busy)%"
        }
        return s.joined(separator: ", ") + "; kernel \(fmt(system / max(seconds, 1e-9))) cores"
    }
}

private func fmt(_ v: Double) -> String {
    let r = (v * 10).rounded() / 10
    return r == r.rounded() ? "\(Int(r)).0" : "\(r)"
}

enum PipelineRuns {
    /// Runs `body` on the calling thread (the coordinator) and profiles it.
    static func profile(threads: Int, bytes: UInt64, _ body: () throws -> Void) rethrows -> RunProfile {
        Sys.syncAll()  // not timed: the previous run's writes are not this one's
        ThreadTimes.startRecording()
        let p0 = ThreadTimes.process(), c0 = ThreadTimes.thisThread(), t0 = Sys.monotonicNanos()
        try body()
        let t1 = Sys.monotonicNanos(), p1 = ThreadTimes.process(), c1 = ThreadTimes.thisThread()
        let ended = ThreadTimes.stopRecording()
        func stage(_ name: String, _ prefix: String) -> (String, Int, Double)? {
            let ts = ended.filter { $0.name.hasPrefix(prefix) }
            return ts.isEmpty ? nil : (name, ts.count, ts.reduce(0) { $0 + $1.user + $1.system })
        }
        var stages = [stage("I/O thread", "strata-io"), stage("workers", "strata-worker"), stage("writer", "strata-writer")].compactMap { $0 }
        stages.insert(("coordinator", 1, (c1.user - c0.user) + (c1.system - c0.system)), at: min(2, stages.count))
        return RunProfile(
            threads: threads, seconds: Double(t1 - t0) / 1e9, bytes: bytes, stages: stages.map { (name: $0.0, threads: $0.1, cpuSeconds: $0.2) },
            user: p1.user - p0.user, system: p1.system - p0.system)
    }

    /// A scratch directory inside `parent` for the runs' chain and restore target; removed by `removeScratch`.
    static func makeScratch(in parent: String) throws -> String {
        let dir = "\(parent)/\(DurableFiles.temporaryName(for: "bench"))"
        do { try Sys.mkdir(dir, mode: 0o700) } catch let e as IOError {
            throw ChainError.targetUnavailable(path: parent, reason: e.reason)
        }
        return dir
    }

    /// Removes a scratch directory and everything in it (a chain's files, a target file).
    static func removeScratch(_ dir: String) {
        func remove(_ path: String) {
            if let names = try? Sys.listDirectory(path) {
                for n in names { remove("\(path)/\(n)") }
                try? Sys.rmdir(path)
            } else {
                try? Sys.unlink(path)
            }
        }
        remove(dir)
    }
}
