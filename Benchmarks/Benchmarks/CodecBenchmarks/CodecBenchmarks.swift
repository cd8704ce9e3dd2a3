// The per-block work of capture and restore: hashing (with zero detection), compressing and decompressing a
// 1 MiB frame with a reused context. None of it may allocate: pinned by the allocation thresholds in
// Benchmarks/Thresholds (zero, with zero tolerance).
import Benchmark
import StrataCodec

let benchmarks: @Sendable () -> Void = {
    let frame = 1 << 20
    let blockSize = 4096
    // Text-like, compressible data, as on a real disk (zstd -1 ratio about 0.3).
    let data = UnsafeMutableRawPointer.allocate(byteCount: frame, alignment: 4096)
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    for i in 0..<frame {
        if i % 64 == 0 { state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407 }
        let byte = i % 64 < 48 ? UInt8(0x61 + (state >> 59)) : UInt8(truncatingIfNeeded: state >> UInt64(i % 56))
        data.storeBytes(of: byte, toByteOffset: i, as: UInt8.self)
    }
    let compressed = UnsafeMutableRawPointer.allocate(byteCount: FrameCompressor.storeBound(frame), alignment: 64)
    let decoded = UnsafeMutableRawPointer.allocate(byteCount: frame, alignment: 64)
    let detector = ZeroBlockDetector(blockSize: blockSize)
    let compressor = try! FrameCompressor(level: 1)
    let decompressor = try! FrameDecompressor()
    let stored = compressor.compressOrStore(data, count: frame, into: compressed, capacity: FrameCompressor.storeBound(frame))

    let zeroAllocations: [BenchmarkMetric: BenchmarkThresholds] = [.mallocCountTotal: .init(absolute: [.p90: 0])]
    Benchmark.defaultConfiguration = .init(
        metrics: [.throughput, .wallClock, .mallocCountTotal], warmupIterations: 3, maxDuration: .seconds(2), maxIterations: 1000,
        thresholds: zeroAllocations)

    // One iteration: the 256 blocks of a 1 MiB frame.
    Benchmark("hash_1_MiB_as_4_KiB_blocks_(XXH3-128_zero_detection)") { benchmark in
        for _ in benchmark.scaledIterations {
            for b in 0..<frame / blockSize { blackHole(detector.hash(data + b * blockSize)) }
        }
    }
    Benchmark("zstd_-1_compress_a_1_MiB_frame") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(compressor.compressOrStore(data, count: frame, into: compressed, capacity: FrameCompressor.storeBound(frame)))
        }
    }
    Benchmark("zstd_decompress_a_1_MiB_frame") { benchmark in
        for _ in benchmark.scaledIterations {
            try! decompressor.decompress(compressed, count: stored.length, into: decoded, expected: frame)
            blackHole(decoded)
        }
    }
    Benchmark("XXH3-64_frame_checksum_1_MiB") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(Checksum.xxh3(compressed, count: stored.length)) }
    }
}
