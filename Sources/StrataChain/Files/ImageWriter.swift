// Writing one image through the chain store. The writer appends frames after a placeholder header, then writes
// the index, rewrites the header with the index's place and checksum, re-reads the header to check it, and only
// then publishes the object under its name. Like restic's packer it has a sticky error: after the first failure
// it refuses more work and leaves only an unfinished object for the next writer to clean up.
import StrataFormat
import StrataIO

final class ImageWriter {
    let name: String
    private let object: NewObject
    private(set) var header: ImageHeader
    private let appender: ObjectAppender
    private var offset: UInt64 { appender.offset }
    // Frames and extents apart: capture's writer thread appends frames while its coordinator adds extents.
    private var frames: [FrameRecord] = []
    private var extents: [ExtentRecord] = []
    private var failure: Error?
    private let reservedWrites = Condition()

    init(store: ChainStore, name: String, header: ImageHeader, engine: IOEngineChoice = .auto) throws {
        self.name = name
        self.header = header
        let object = try store.create(name)
        self.object = object
        let placeholder = [UInt8](repeating: 0, count: ImageHeader.size)
        do {
            try placeholder.withUnsafeBytes { try object.write($0.baseAddress!, count: $0.count, at: 0) }
            appender = try object.appender(start: UInt64(ImageHeader.size), engine: engine)
        } catch {
            object.abandon()
            throw error
        }
    }

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
        try reservedWrites.withLock { try object.write(bytes, count: count, at: offset) }
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

    /// Writes index and header, checks the header reads back, and publishes the image under its name (the
    /// caller syncs the store's published objects once, before committing a manifest that names them).
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
            try indexBytes.withUnsafeBytes { try object.write($0.baseAddress!, count: $0.count, at: offset) }
            let headerBytes = header.encode()
            try headerBytes.withUnsafeBytes { try object.write($0.baseAddress!, count: $0.count, at: 0) }
            var check = [UInt8](repeating: 0, count: ImageHeader.size)
            _ = try check.withUnsafeMutableBytes { try object.read(into: $0.baseAddress!, count: $0.count, at: 0) }
            guard (try? ImageHeader.decode(check)) == header else {
                throw ChainError.damaged(file: name, detail: "header did not read back as written")
            }
            try object.publish()
            return header
        }
    }

    /// Discards the unfinished image after a failure.
    func abandon() { object.abandon() }
}
