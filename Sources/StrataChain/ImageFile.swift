// Reading and writing one image file. The writer appends frames after a placeholder header, then writes the
// index, rewrites the header with the index's place and checksum, fsyncs, re-reads the header to check it, and
// only then renames the file into place. Like restic's packer it has a sticky error: after the first failure
// it refuses more work and leaves only a temporary file for the next run to clean up.
import StrataFormat
import StrataIO

#if canImport(Glibc)
import Glibc
#endif

final class ImageWriter {
    let directory: String
    let name: String
    let temporaryPath: String
    private let fd: Int32
    private(set) var header: ImageHeader
    private let appender: AppendWriter
    private var offset: UInt64 { appender.offset }
    // Frames and extents apart: capture's writer thread appends frames while its coordinator adds extents.
    private var frames: [FrameRecord] = []
    private var extents: [ExtentRecord] = []
    private var failure: Error?
    private let reservedWrites = Condition()

    init(directory: String, name: String, header: ImageHeader, engine: IOEngineChoice = .auto) throws {
        self.directory = directory
        self.name = name
        self.header = header
        let path = "\(directory)/\(DurableFiles.temporaryName(for: name))"
        temporaryPath = path
        let fd = try Sys.create(path, O_RDWR | O_TRUNC)
        self.fd = fd
        let placeholder = [UInt8](repeating: 0, count: ImageHeader.size)
        do {
            try placeholder.withUnsafeBytes { try Sys.pwriteAll(fd, $0.baseAddress!, $0.count, 0, path: path) }
            appender = try AppendWriter(path: path, fd: fd, start: UInt64(ImageHeader.size), engine: engine)
        } catch {
            Sys.close(fd)
            unlink(path)
            throw error
        }
    }

    deinit { Sys.close(fd) }

    private func guarded<T>(_ body: () throws -> T) throws -> T {
        if let failure { throw failure }
        do { return try body() } catch {
            failure = error
            throw error
        }
    }

    /// Appends one frame (block hashes then payload, contiguous in `bytes`) and returns its number.
    func appendFrame(_ bytes: UnsafeRawPointer, length: Int, blockCount: Int, codec: FrameCodec, checksum: UInt64) throws -> UInt32 {
        try guarded {
            let at = appender.offset
            try appender.append(bytes, count: length)
            frames.append(FrameRecord(offset: at, length: UInt32(length), blockCount: UInt32(blockCount), codec: codec, checksum: checksum))
            return UInt32(frames.count - 1)
        }
    }

    func appendFrame(_ frame: SealedFrame) throws -> UInt32 {
        try appendFrame(frame.start, length: frame.length, blockCount: frame.blockCount, codec: frame.codec, checksum: frame.checksum)
    }

    /// Places frames copied byte for byte from other images (merge) first in the image, before anything is
    /// appended, and returns the offset of the first; their bytes go in with `writeReserved`, by any thread.
    func reserveCopiedFrames(_ records: [FrameRecord]) -> UInt64 {
        precondition(frames.isEmpty, "copied frames come first")
        let start = appender.offset
        var at = start
        for r in records {
            frames.append(FrameRecord(offset: at, length: r.length, blockCount: r.blockCount, codec: r.codec, checksum: r.checksum))
            at += UInt64(r.length)
        }
        appender.skip(at - start)
        return start
    }

    /// Writes bytes into space reserved by `reserveCopiedFrames`; safe from several threads at once. One at a
    /// time: buffered writes to one file take its inode lock anyway, and the kernel's waiters spin on it (perf:
    /// 13% of a merge's CPU in rwsem_spin_on_owner with two workers writing); our waiters sleep instead.
    func writeReserved(_ bytes: UnsafeRawPointer, count: Int, at offset: UInt64) throws {
        try reservedWrites.withLock { try Sys.pwriteAll(fd, bytes, count, offset, path: temporaryPath) }
    }

    /// Lets frames hold blocks no extent uses (merge keeping a mostly live frame whole).
    func allowSparseFrames() { header.incompatibleFeatures |= ImageFeatures.sparseFrames }

    /// Adds `count` blocks starting at `block`, merging with the previous extent where they continue it.
    func addExtent(block: UInt64, count: UInt32, kind: ExtentKind, frame: UInt32 = 0, frameBlock: UInt32 = 0) {
        switch kind {
        case .data: header.dataBlocks += UInt64(count)
        case .zero: header.zeroBlocks += UInt64(count)
        case .unreadable: header.unreadableBlocks += UInt64(count)
        }
        if var last = extents.last, last.kind == kind, last.endBlock == block, last.blockCount <= UInt32.max - count,
            kind != .data || (last.frame == frame && last.frameBlock + last.blockCount == frameBlock)
        {
            last.blockCount += count
            extents[extents.count - 1] = last
            return
        }
        extents.append(ExtentRecord(firstBlock: block, blockCount: count, kind: kind, frame: frame, frameBlock: frameBlock))
    }

    /// Writes index and header, makes the file durable and renames it to its final name.
    func finish() throws -> ImageHeader {
        try guarded {
            try appender.finish()
            let indexBytes = ImageIndex(frames: frames, extents: extents).encode()
            header.indexOffset = offset
            header.indexLength = UInt64(indexBytes.count)
            header.indexChecksum = CRC32C.checksum(indexBytes)
            header.fileSize = offset + UInt64(indexBytes.count)
            header.frameCount = UInt64(frames.count)
            header.extentCount = UInt64(extents.count)
            header.storedBytes = offset - UInt64(ImageHeader.size)
            try indexBytes.withUnsafeBytes { try Sys.pwriteAll(fd, $0.baseAddress!, $0.count, offset, path: temporaryPath) }
            let headerBytes = header.encode()
            try headerBytes.withUnsafeBytes { try Sys.pwriteAll(fd, $0.baseAddress!, $0.count, 0, path: temporaryPath) }
            try Sys.fsync(fd, path: temporaryPath)
            var check = [UInt8](repeating: 0, count: ImageHeader.size)
            _ = try check.withUnsafeMutableBytes { try Sys.preadFully(fd, $0.baseAddress!, $0.count, 0, path: temporaryPath) }
            guard (try? ImageHeader.decode(check)) == header else {
                throw ChainError.damaged(file: temporaryPath, detail: "header did not read back as written")
            }
            try Sys.rename(temporaryPath, "\(directory)/\(name)")
            try DurableFiles.fsyncDirectory(directory)
            return header
        }
    }

    /// Removes the temporary file after a failure.
    func abandon() { try? Sys.unlink(temporaryPath) }
}

/// An image opened for reading, header and index validated.
final class ImageFile {
    let path: String
    let name: String
    let fd: Int32
    let header: ImageHeader
    let index: ImageIndex

    init(directory: String, name: String) throws {
        self.name = name
        let path = "\(directory)/\(name)"
        self.path = path
        let fd: Int32
        do {
            fd = try Sys.open(path, O_RDONLY)
        } catch { throw damaged(name, error) }
        self.fd = fd
        do {
            let size = UInt64(try Sys.fstat(fd, path: path).st_size)
            var bytes = [UInt8](repeating: 0, count: ImageHeader.size)
            let n = try bytes.withUnsafeMutableBytes { try Sys.preadFully(fd, $0.baseAddress!, $0.count, 0, path: path) }
            guard n == ImageHeader.size else { throw FormatError.truncated("image header", at: UInt64(n)) }
            let h = try ImageHeader.decode(bytes)
            guard size == h.fileSize else {
                throw FormatError.truncated("image file (\(size) bytes, header says \(h.fileSize))", at: size)
            }
            var indexBytes = [UInt8](repeating: 0, count: Int(h.indexLength))
            _ = try indexBytes.withUnsafeMutableBytes { try Sys.preadFully(fd, $0.baseAddress!, $0.count, h.indexOffset, path: path) }
            index = try ImageIndex.decode(indexBytes, header: h)
            header = h
        } catch {
            Sys.close(fd)
            throw damaged(name, error)
        }
    }

    deinit { Sys.close(fd) }
}
