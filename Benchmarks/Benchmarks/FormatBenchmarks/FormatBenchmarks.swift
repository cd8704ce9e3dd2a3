// Encoding and decoding the on-disk structures: an image index of 100,000 extents (a heavily fragmented
// incremental), the image header, CRC-32C. Allocations are per structure, not per block: the index decoder
// allocates its two arrays once (reserved from the header's counts).
import Benchmark
import StrataFormat

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.throughput, .wallClock, .mallocCountTotal], warmupIterations: 2, maxDuration: .seconds(2), maxIterations: 200)

    let frames = (0..<4000).map {
        FrameRecord(offset: 4096 + UInt64($0) * 100_000, length: 100_000, blockCount: 25, codec: .zstd, checksum: UInt64($0))
    }
    var extents: [ExtentRecord] = []
    for i in 0..<100_000 {
        extents.append(ExtentRecord(firstBlock: UInt64(i) * 4, blockCount: 1, kind: .data, frame: UInt32(i / 25), frameBlock: UInt32(i % 25)))
    }
    let index = ImageIndex(frames: frames, extents: extents)
    let bytes = index.encode()
    var header = ImageHeader(
        kind: .incremental, blockSize: 4096, sourceSize: 400_000 * 4096, chainID: .random(), imageID: .random(), parentID: .random(),
        firstPoint: 2, lastPoint: 2, createdAt: 0)
    header.indexOffset = 4096 + 4000 * 100_000
    header.indexLength = UInt64(bytes.count)
    header.indexChecksum = CRC32C.checksum(bytes)
    header.fileSize = header.indexOffset + header.indexLength
    header.frameCount = 4000
    header.extentCount = 100_000
    header.dataBlocks = 100_000
    header.storedBytes = 4000 * 100_000
    let headerBytes = header.encode()

    Benchmark("decode_an_index_of_100000_extents") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! ImageIndex.decode(bytes, header: header)) }
    }
    Benchmark("encode_an_index_of_100000_extents") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(index.encode()) }
    }
    Benchmark("decode_an_image_header", configuration: .init(scalingFactor: .kilo)) { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! ImageHeader.decode(headerBytes)) }
    }
    Benchmark("CRC-32C_of_2.4_MB_(the_index)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(CRC32C.checksum(bytes)) }
    }
}
