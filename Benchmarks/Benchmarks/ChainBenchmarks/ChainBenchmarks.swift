// Whole captures and restores of 16 MiB and 64 MiB image files (in /var/tmp, O_DIRECT). The allocation
// counts pin "nothing per block": both sizes must stay at the same fixed count (thread and buffer set-up,
// index arrays), so a per-block or per-chunk allocation in the hot path breaks the thresholds at once
// (64 MiB is 16,384 blocks and 64 chunks).
import Benchmark
import Foundation
import StrataChain

let benchmarks: @Sendable () -> Void = {
    let dir = "/var/tmp/strata-chain-bench"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    func makeSource(_ mib: Int) -> String {
        let path = "\(dir)/source-\(mib).img"
        guard !FileManager.default.fileExists(atPath: path) else { return path }
        var block = [UInt8](repeating: 0, count: 1 << 20)
        FileManager.default.createFile(atPath: path, contents: nil)
        let h = FileHandle(forWritingAtPath: path)!
        for m in 0..<mib {
            for i in block.indices { block[i] = i % 4096 < 3000 ? UInt8(truncatingIfNeeded: (i >> 7) &+ m) : UInt8(truncatingIfNeeded: i &* 131 &+ m &* 7) }
            h.write(Data(block))
        }
        h.closeFile()
        return path
    }

    var options = CaptureOptions()
    options.threads = 2
    Benchmark.defaultConfiguration = .init(
        metrics: [.throughput, .wallClock, .mallocCountTotal, .peakMemoryResident], warmupIterations: 1, maxDuration: .seconds(4),
        maxIterations: 10, thresholds: [.mallocCountTotal: .init(relative: [.p90: 5.0])])

    for mib in [16, 64] {
        let source = makeSource(mib)
        let chain = "\(dir)/chain-\(mib)"
        // One iteration: remove the previous chain (a fixed cost), capture the whole source into a new one.
        Benchmark("full_capture_\(mib)_MiB") { benchmark in
            for _ in benchmark.scaledIterations {
                try? FileManager.default.removeItem(atPath: chain)
                blackHole(try! Capture.run(source: source, chain: chain, options: options))
            }
        }
        let restoreChain = "\(dir)/restore-chain-\(mib)"
        if !FileManager.default.fileExists(atPath: restoreChain) { _ = try! Capture.run(source: source, chain: restoreChain, options: options) }
        Benchmark("restore_\(mib)_MiB") { benchmark in
            for _ in benchmark.scaledIterations {
                var r = RestoreOptions()
                r.threads = 2
                r.force = true  // each iteration replaces the last one's file
                blackHole(try! Restore.run(chain: restoreChain, target: "\(dir)/restored-\(mib).img", options: r))
            }
        }
    }
}
