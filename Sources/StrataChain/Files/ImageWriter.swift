// Writing one image through the chain store. The writer appends frames after a placeholder header, and with them
// the chunks of the index as they fill (frame records and extent records, IndexChunks.swift), so it holds one chunk
// of each and the table of those written, never a whole index; it then writes the table, rewrites the header with
// the table's place and checksum, re-reads the header to check it, and only then publishes the object under its
// name. Like restic's packer it has a sticky error: after the first failure it refuses more work and leaves only
// an unfinished object for the next writer to clean up.
import StrataCodec
import StrataFormat
import StrataIO

final class ImageWriter {
    let name: String
    private let object: NewObject
    private(set) var header: ImageHeader
    private let appender: ObjectAppender
    // Frames and extents apart: capture's writer thread appends frames while its coordinator adds extents; the
    // appender, which both reach (a full chunk goes into the file where the stream is), is used under `appending`.
    private let appending = Condition()
    private var frames: [FrameRecord] = []
    private var frameCount = 0
    private var frameBytes: UInt64 = 0
    private var extents: [ExtentRecord] = []
    private var extentCount = 0
    /// Records a chunk: the format's sizes (`tuning`'s; tests make them small to write many chunks).
    private var top: TopIndex
    private var failure: Error?
    private let reservedWrites = Condition()

    /// An encrypted chain's keys: frames come sealed (FrameBuffers), the index is sealed here (IndexSealing).
    let keys: ChainKeys?

    /// `expectedSize`: the most the image may grow to (a store that uploads parts sizes them by it).
    init(
        store: ChainStore, name: String, header: ImageHeader, keys: ChainKeys?, expectedSize: UInt64, engine: IOEngineChoice = .auto,
        tuning: Tuning = Tuning()
    ) throws {
        top = TopIndex(framesPerChunk: UInt32(tuning.framesPerIndexChunk), extentsPerChunk: UInt32(tuning.extentsPerIndexChunk))
        self.name = name
        self.header = header
        self.keys = keys
        self.header.incompatibleFeatures |= ImageFeatures.chunkedIndex
        if keys != nil { self.header.incompatibleFeatures |= ImageFeatures.encrypted }
        let object = try store.create(name, expectedSize: expectedSize)
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
        try appending.withLock {
            if let failure { throw failure }
            do { return try body() } catch {
                failure = error
                throw error
            }
        }
    }

    /// The number the next frame appended or reserved gets.
    var nextFrame: UInt32 { appending.withLock { UInt32(frameCount) } }

    private func addFrame(_ r: FrameRecord) throws {
        if frames.count == Int(top.framesPerChunk) { try flushFrames() }
        if r.codec == .zstdSubframes { header.incompatibleFeatures |= ImageFeatures.subframes }
        frames.append(r)
        frameCount += 1
        frameBytes += UInt64(r.length)
        top.maxFrameLength = max(top.maxFrameLength, r.length)
    }

    private func flushFrames() throws {
        guard let first = frames.first, let last = frames.last else { return }
        var bytes = IndexChunks.encode(frames: frames[...])
        if let keys { bytes = IndexSealing.sealFrameChunk(bytes, chunk: top.frameChunks.count, header: header, keys: keys) }
        top.frameChunks.append(
            TopIndex.FrameChunk(
                offset: appender.offset, length: UInt32(bytes.count), count: UInt32(frames.count), firstOffset: first.offset,
                endOffset: last.offset + UInt64(last.length), checksum: CRC32C.checksum(bytes)))
        try bytes.withUnsafeBytes { try appender.append($0.baseAddress!, count: $0.count) }
        frames.removeAll(keepingCapacity: true)
    }

    private func flushExtents() throws {
        guard let first = extents.first, let last = extents.last else { return }
        var bytes = IndexChunks.encode(extents: extents[...])
        if let keys { bytes = IndexSealing.sealExtentChunk(bytes, chunk: top.extentChunks.count, header: header, keys: keys) }
        var c = TopIndex.ExtentChunk(
            offset: appender.offset, length: UInt32(bytes.count), count: UInt32(extents.count), firstBlock: first.firstBlock, endBlock: last.endBlock,
            dataBlocks: 0, zeroBlocks: 0, unreadableBlocks: 0, checksum: CRC32C.checksum(bytes))
        for e in extents {
            switch e.kind {
            case .data: c.dataBlocks += UInt64(e.blockCount)
            case .zero, .free: c.zeroBlocks += UInt64(e.blockCount)
            case .unreadable: c.unreadableBlocks += UInt64(e.blockCount)
            }
        }
        top.extentChunks.append(c)
        try bytes.withUnsafeBytes { try appender.append($0.baseAddress!, count: $0.count) }
        extents.removeAll(keepingCapacity: true)
    }

    /// Appends one frame (block hashes then payload, contiguous in `bytes`) and returns its number.
    func appendFrame(_ bytes: UnsafeRawPointer, length: Int, blockCount: Int, codec: FrameCodec, checksum: UInt64, sealed: Bool) throws -> UInt32 {
        precondition(sealed == (keys != nil), "an encrypted image holds sealed frames only")
        return try guarded {
            let at = appender.offset
            try appender.append(bytes, count: length)
            try addFrame(FrameRecord(offset: at, length: UInt32(length), blockCount: UInt32(blockCount), codec: codec, checksum: checksum, sealed: sealed))
            return UInt32(frameCount - 1)
        }
    }

    func appendFrame(_ frame: SealedFrame) throws -> UInt32 {
        try appendFrame(frame.start, length: frame.length, blockCount: frame.blockCount, codec: frame.codec, checksum: frame.checksum, sealed: frame.sealed)
    }

    /// Frames of one source image, for `reserveCopiedFrames`: `records[range]` lie in `object` in this order, with
    /// at most a little between them (which a copy inside the store carries along, unused).
    struct CopySource {
        var object: StoredObject
        var range: Range<Int>
    }

    /// Whether the store can copy frames itself (`reserveCopiedFrames` with sources).
    var copiesInStore: Bool { object.smallestCopy != nil }

    /// Bytes `reserveCopiedFrames` may still leave unused in the image so that the store can copy frames rather
    /// than have them written here (read from the source first: in a bucket, downloaded): zeros that fill a part
    /// up to the store's smallest before a copy, and a source's bytes around a piece too short to be a copy of its
    /// own. None unless the caller grants some.
    var unusedAllowed: UInt64 = 0
    /// The bytes left unused that way so far.
    private(set) var unusedBytes: UInt64 = 0

    /// Places frames copied byte for byte from other images (merge) where the stream is, numbered from
    /// `nextFrame` on, and returns where each goes; their bytes go in with `writeReserved`, by any thread, except
    /// those the store copied itself (`inStore`): where the store can, each of `sources` (in order, apart) goes as
    /// copies inside the store. Before a copy the part being filled must reach the store's smallest: with zeros
    /// where `unusedAllowed` lets, else with the piece's first frames written here.
    func reserveCopiedFrames(_ records: [FrameRecord], sources: [CopySource] = []) throws -> (offsets: [UInt64], inStore: [Bool]) {
        try guarded {
            var offsets: [UInt64] = []
            offsets.reserveCapacity(records.count)
            var inStore = [Bool](repeating: false, count: records.count)
            func place(_ k: Int) throws {
                // A frame chunk that fills goes into the file first, between reserved frames.
                if frames.count == Int(top.framesPerChunk) { try flushFrames() }
                try placeHere(records[k])
                offsets.append(appender.offset - UInt64(records[k].length))
            }
            var k = 0
            for run in sources {
                while k < run.range.lowerBound { try place(k); k += 1 }
                while k < run.range.upperBound {
                    // The frames that fit before the next index chunk, as one piece of the source.
                    if frames.count == Int(top.framesPerChunk) { try flushFrames() }
                    func piece() -> Piece? {
                        Piece(records, k..<min(run.range.upperBound, k + Int(top.framesPerChunk) - frames.count), in: run.object, smallest: object.smallestCopy)
                    }
                    var needed = object.bytesBeforeCopy(at: appender.offset)
                    if needed > 0, let p = piece(), needed + p.unused <= unusedAllowed - unusedBytes {
                        try pad(needed)
                        needed = object.bytesBeforeCopy(at: appender.offset)
                    }
                    while k < run.range.upperBound && needed > 0 {
                        var written: UInt64 = 0
                        while k < run.range.upperBound && written < needed {
                            written += UInt64(records[k].length)
                            try place(k)
                            k += 1
                        }
                        needed = object.bytesBeforeCopy(at: appender.offset)  // a frame may have crossed into a part too short
                    }
                    if frames.count == Int(top.framesPerChunk) { try flushFrames() }
                    guard let p = piece(), p.unused <= unusedAllowed - unusedBytes,
                        try object.copyInStore(from: run.object, at: p.from, count: p.count, to: appender.offset)
                    else {
                        while k < run.range.upperBound { try place(k); k += 1 }
                        break
                    }
                    unusedBytes += p.unused
                    let start = appender.offset
                    for i in p.frames {
                        try appender.skip(start + (records[i].offset - p.from) - appender.offset)
                        try placeHere(records[i])
                        offsets.append(appender.offset - UInt64(records[i].length))
                        inStore[i] = true
                    }
                    try appender.skip(start + UInt64(p.count) - appender.offset)
                    k = p.frames.upperBound
                }
            }
            while k < records.count { try place(k); k += 1 }
            return (offsets, inStore)
        }
    }

    /// A piece of a source image a store copies in one: frames `frames` and what lies between them, and where the
    /// store's smallest copy asks for more, the source's bytes after them (or before, at the source's end).
    private struct Piece {
        let frames: Range<Int>
        let from: UInt64
        let count: Int
        /// Bytes of the piece no frame of it holds beyond those between its frames.
        let unused: UInt64

        init?(_ records: [FrameRecord], _ frames: Range<Int>, in source: StoredObject, smallest: Int?) {
            guard let smallest, !frames.isEmpty else { return nil }
            let first = records[frames.lowerBound].offset, last = records[frames.upperBound - 1]
            let span = last.offset + UInt64(last.length) - first
            self.frames = frames
            if span >= UInt64(smallest) {
                (from, count, unused) = (first, Int(span), 0)
            } else {
                guard source.size >= UInt64(smallest) else { return nil }
                (from, count, unused) = (min(first, source.size - UInt64(smallest)), smallest, UInt64(smallest) - span)
            }
        }
    }

    /// Fills `count` bytes where the stream is with zeros no frame or chunk names.
    private func pad(_ count: UInt64) throws {
        let zeros = [UInt8](repeating: 0, count: Int(count))
        try zeros.withUnsafeBytes { try appender.append($0.baseAddress!, count: $0.count) }
        unusedBytes += count
    }

    /// Skips a copied frame's bytes where the stream is and records it there.
    private func placeHere(_ r: FrameRecord) throws {
        guard r.sealed == (keys != nil) else {
            throw ChainError.damaged(file: name, detail: "a frame to copy is \(r.sealed ? "" : "not ")sealed, and this image is \(keys != nil ? "" : "not ")encrypted")
        }
        let at = appender.offset
        try appender.skip(UInt64(r.length))
        try addFrame(FrameRecord(offset: at, length: r.length, blockCount: r.blockCount, codec: r.codec, checksum: r.checksum, sealed: r.sealed))
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
    func addExtent(block: UInt64, count: UInt32, kind: ExtentKind, frame: UInt32 = 0, frameBlock: UInt32 = 0) throws {
        switch kind {
        case .data: header.dataBlocks += UInt64(count)
        case .zero, .free: header.zeroBlocks += UInt64(count)
        case .unreadable: header.unreadableBlocks += UInt64(count)
        }
        if var last = extents.last, last.kind == kind, last.endBlock == block, last.blockCount <= UInt32.max - count,
            kind != .data || (last.frame == frame && last.frameBlock + last.blockCount == frameBlock)
        {
            last.blockCount += count
            extents[extents.count - 1] = last
            return
        }
        if extents.count == Int(top.extentsPerChunk) { try guarded { try flushExtents() } }
        extents.append(ExtentRecord(firstBlock: block, blockCount: count, kind: kind, frame: frame, frameBlock: frameBlock))
        extentCount += 1
    }

    /// Writes index and header, checks the header reads back, and publishes the image under its name (the
    /// caller syncs the store's published objects once, before committing a manifest that names them).
    func finish() throws -> ImageHeader {
        try guarded {
            try flushFrames()
            try flushExtents()
            try appender.finish()
            let offset = appender.offset
            let indexBytes = top.encode()
            header.indexOffset = offset
            header.indexLength = UInt64(indexBytes.count)
            header.indexChecksum = CRC32C.checksum(indexBytes)
            header.fileSize = offset + UInt64(indexBytes.count)
            header.frameCount = UInt64(frameCount)
            header.extentCount = UInt64(extentCount)
            header.storedBytes = frameBytes
            if let keys { header.authenticator = keys.authenticator(IndexSealing.headerParts(header, table: indexBytes), length: 32) }
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
