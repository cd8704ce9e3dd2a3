// Appends a stream of variable-length records (an image's frames) to a file with large aligned O_DIRECT writes,
// several in flight, instead of buffered pwrite: the page-cache copy of buffered writes cost a capture a third of
// its CPU (measured with perf on the reference disk). Records are gathered into 1 MiB aligned buffers; the last,
// partial buffer is written through the ordinary descriptor when the stream is finished. Where O_DIRECT is
// refused (tmpfs), the same buffers are written through the ordinary descriptor, still asynchronously, so the
// caller's thread never does the page-cache copy. The stream may start (or, after `skip`, go on) off a page
// boundary: the first buffer then ends at the next boundary and goes through the ordinary descriptor, so direct
// writes never touch a page that other writers (merge's copying workers) are filling with buffered writes.
#if canImport(Glibc)
import Glibc
#endif
internal import CURing

public final class AppendWriter {
    public let path: String
    private let fd: Int32
    private let directFD: Int32?
    private let writeFD: Int32
    private let pump: IOPump?
    private let buffers: AlignedSlab?
    private var freeBuffers: [Int]
    private var current = -1
    private var fill = 0
    private var bufferStart: UInt64
    /// The file offset the next record goes to.
    public private(set) var offset: UInt64

    /// `fd` is the file's ordinary descriptor.
    public init(path: String, fd: Int32, start: UInt64, engine: IOEngineChoice, bufferSize: Int = 1 << 20, depth: Int = 4) throws {
        self.path = path
        self.fd = fd
        offset = start
        bufferStart = start
        directFD = try? Sys.open(path, O_WRONLY | strata_O_DIRECT)
        writeFD = directFD ?? fd
        // `uring` means io_uring or nothing (the error goes to the caller); `auto` and `pread` write through a pool
        // of threads when io_uring is refused, and only a pool that cannot start leaves plain pwrite.
        if let (queue, _) = engine == .uring ? try IOEngine.make(engine, depth: depth) : try? IOEngine.make(engine, depth: depth) {
            buffers = AlignedSlab(slotSize: bufferSize, slotCount: depth)
            pump = IOPump(queue: queue, maxTags: depth)
            freeBuffers = Array((0..<depth).reversed())
        } else {
            buffers = nil
            pump = nil
            freeBuffers = []
        }
    }

    deinit {
        if let pump { while pump.inFlight > 0 { _ = try? pump.next() } }
        if let directFD { Sys.close(directFD) }
    }

    public func append(_ bytes: UnsafeRawPointer, count: Int) throws {
        guard let buffers, let pump else {
            try Sys.pwriteAll(fd, bytes, count, offset, path: path)
            offset += UInt64(count)
            return
        }
        var done = 0
        while done < count {
            if current < 0 {
                while freeBuffers.isEmpty { freeBuffers.append(try pump.next().tag) }
                current = freeBuffers.removeLast()
                fill = 0
            }
            let head = Int(bufferStart % 4096)  // 0 but for a stream's first buffer off a page boundary
            let n = min(count - done, buffers.slotSize - head - fill)
            (buffers.slot(current) + fill).copyMemory(from: bytes + done, byteCount: n)
            fill += n
            done += n
            if fill == buffers.slotSize - head {
                pump.write(fd: head == 0 ? writeFD : fd, path: path, from: buffers.slot(current), length: fill, at: bufferStart, tag: current)
                bufferStart += UInt64(fill)
                current = -1
            }
        }
        offset += UInt64(count)
    }

    /// Leaves `count` bytes for someone else to write (merge's copied frames): what was appended before goes to
    /// the file first (a partial buffer through the ordinary descriptor), and the stream goes on after the gap.
    public func skip(_ count: UInt64) throws {
        if current >= 0 {
            if let buffers { try Sys.pwriteAll(fd, buffers.slot(current), fill, bufferStart, path: path) }
            freeBuffers.append(current)
            current = -1
        }
        offset += count
        bufferStart = offset
    }

    /// Waits for every write and writes the partial last buffer; afterwards the file holds every record.
    public func finish() throws {
        guard let buffers, let pump else { return }
        while pump.inFlight > 0 { freeBuffers.append(try pump.next().tag) }
        if current >= 0 {
            try Sys.pwriteAll(fd, buffers.slot(current), fill, bufferStart, path: path)
            bufferStart += UInt64(fill)
            freeBuffers.append(current)
            current = -1
        }
    }
}
