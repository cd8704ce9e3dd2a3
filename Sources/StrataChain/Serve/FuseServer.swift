// `strata mount`'s file system: the points of a chain as read-only files (`point-N.img`), served from the point
// readers on libfuse's multithreaded loop (StrataIO's FuseFiles, which holds the libfuse binding). A sequential
// reader's frames are decoded ahead in parallel by the point reader's read-ahead. A read that fails its check
// gets EIO, never bytes, and one line on the log names the image and frame.
import StrataIO

final class FuseServer: Sendable {
    private let files: FuseFiles
    /// Bytes the kernel reads ahead of a sequential reader.
    static let readAheadKiB = 8192
    /// Threads serving requests: as many as the machine has cores where reads wait on little but decoding (a
    /// chain on local storage), more where they wait on the network (a chain in a bucket). More threads than cores
    /// decoding at once made random reads' tails long: the scheduler shares the cores out in slices of
    /// milliseconds, and a read whose thread lost its core waited behind all the others (fio, 16 random 4 KiB reads
    /// in flight, 2 cores, seekable chain: p99 0.84 ms and 31-33k reads a second with 2 threads, 2.7-3.1 ms and
    /// 27-29k with 4, 4.6-9.9 ms with 8-32; a gate letting 2 decode at a time in order under 32 threads: 1.1-1.2
    /// ms, 22k). A sequential reader is decoded ahead by the read-ahead threads whatever the number.
    static func threads(remote: Bool) -> Int { remote ? 16 : max(2, Sys.onlineCores) }

    /// Mounts the point files read-only at `dir` (an empty directory); the file system's source shows as `source`.
    init(
        files: [(name: String, reader: PointReader)], at dir: String, source: String, pageCache: Bool,
        log: @escaping @Sendable (String) -> Void
    ) throws {
        let served = files.map { name, reader in
            FuseFile(name: name, size: reader.size) { buffer, count, offset in
                do {
                    return try reader.read(into: buffer, count: count, at: offset)
                } catch {
                    log("\(name): read of \(count) bytes at \(offset) failed (EIO): \(PointReader.describe(error))")
                    throw error
                }
            }
        }
        do {
            self.files = try FuseFiles(files: served, at: dir, source: source, pageCache: pageCache)
        } catch let e as FuseFiles.Failure {
            throw ChainError.machineLacks(e.description)
        }
    }

    func run(threads: Int) { files.run(threads: threads) }
    func stop() { files.stop() }
    func close() { files.close() }
    func widenReadAhead() { files.widenReadAhead(kiB: Self.readAheadKiB) }
}
