// The I/O engines on their own: sequential 1 MiB O_DIRECT reads of a 256 MiB file through io_uring and through
// the pread threads, 32 in flight, as capture issues them. A read's completion path (IOPump, the engine's
// wait) allocates nothing: the allocation threshold holds the whole 256-read pass to a fixed count.
import Benchmark
import Foundation
import StrataIO

let benchmarks: @Sendable () -> Void = {
    let size = 256 << 20, request = 1 << 20, depth = 32
    let path = "/var/tmp/strata-engine-bench.img"
    if (try? Sys.stat(path)).map({ $0.size }) != UInt64(size) {
        var block = [UInt8](repeating: 0, count: request)
        for i in block.indices { block[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 12) }
        FileManager.default.createFile(atPath: path, contents: nil)
        let h = FileHandle(forWritingAtPath: path)!
        for _ in 0..<(size / request) { h.write(Data(block)) }
        h.synchronizeFile()
        h.closeFile()
    }
    let source = try! BlockSource(path: path)
    let slab = AlignedSlab(slotSize: request, slotCount: depth, alignment: 4096)

    func readAll(_ queue: IOQueue) throws {
        let pump = IOPump(queue: queue, maxTags: depth)
        var next: UInt64 = 0
        var free = Array(0..<depth)
        while next < UInt64(size) || pump.inFlight > 0 {
            while next < UInt64(size), let slot = free.popLast() {
                pump.read(fd: source.fd, path: path, into: slab.slot(slot), length: request, at: next, tag: slot)
                next += UInt64(request)
            }
            let (slot, _) = try pump.next()
            free.append(slot)
        }
    }

    Benchmark.defaultConfiguration = .init(
        metrics: [.throughput, .wallClock, .mallocCountTotal, .syscalls], warmupIterations: 1, maxDuration: .seconds(3), maxIterations: 20,
        thresholds: [.mallocCountTotal: .init(absolute: [.p90: 8])])

    let uring = try? URingQueue(depth: depth)
    if let uring {
        uring.register(base: slab.base, length: slab.byteCount)
        Benchmark("io_uring:_read_256_MiB_1_MiB_O_DIRECT_requests_32_in_flight") { benchmark in
            for _ in benchmark.scaledIterations { try! readAll(uring) }
        }
    }
    let pread = PreadQueue(threads: depth)
    Benchmark("pread_threads:_read_256_MiB_1_MiB_O_DIRECT_requests_32_in_flight") { benchmark in
        for _ in benchmark.scaledIterations { try! readAll(pread) }
    }
}
