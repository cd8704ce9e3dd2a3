// zstd compression contexts, one per worker thread and reused for every frame (creating a context costs more
// than compressing a small frame). A frame that does not shrink is stored raw.
import CZstd

public enum CodecError: Error, Equatable, Sendable {
    case outOfMemory
    case corruptFrame(String)
}

/// Owns a `ZSTD_CCtx`. Not thread-safe: one per thread.
public final class FrameCompressor: @unchecked Sendable {  // a context is used by one thread at a time: each worker is handed its own
    private let context: OpaquePointer
    public let level: Int32

    public init(level: Int32) throws {
        guard let c = ZSTD_createCCtx() else { throw CodecError.outOfMemory }
        context = c
        self.level = level
        ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level)
        ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0)
        ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1)
    }

    deinit { ZSTD_freeCCtx(context) }

    public static func bound(_ count: Int) -> Int { ZSTD_compressBound(count) }

    /// Room `compressOrStore` needs for `count` bytes.
    public static func storeBound(_ count: Int) -> Int { max(bound(count), count) }

    /// Compresses `count` bytes into `destination` (capacity at least `storeBound(count)`), or copies them there
    /// unchanged when compression would not shrink them. Returns the stored length and whether it is compressed.
    public func compressOrStore(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutableRawPointer, capacity: Int) -> (length: Int, compressed: Bool) {
        if let n = compress(source, count: count, into: destination, capacity: capacity) { return (n, true) }
        destination.copyMemory(from: source, byteCount: count)
        return (count, false)
    }

    /// Compresses `count` bytes into `destination` (capacity at least `bound(count)`). Returns the compressed
    /// length, or nil when compression would not save anything and the caller should store the bytes raw.
    public func compress(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutableRawPointer, capacity: Int) -> Int? {
        guard let n = frame(source, count: count, into: destination, capacity: capacity), n < count else { return nil }
        return n
    }

    /// Compresses `count` bytes into one zstd frame in `destination` (capacity at least `bound(count)`), however
    /// long it comes out; nil only where zstd fails.
    public func frame(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutableRawPointer, capacity: Int) -> Int? {
        let n = ZSTD_compress2(context, destination, capacity, source, count)
        return ZSTD_isError(n) != 0 ? nil : n
    }
}

/// Owns a `ZSTD_DCtx`. Not thread-safe: one per thread.
public final class FrameDecompressor: @unchecked Sendable {  // a context is used by one thread at a time: each worker is handed its own
    private let context: OpaquePointer

    public init() throws {
        guard let d = ZSTD_createDCtx() else { throw CodecError.outOfMemory }
        context = d
    }

    deinit { ZSTD_freeDCtx(context) }

    /// Decompresses exactly `expected` bytes or throws: a frame that yields any other length is corrupt.
    public func decompress(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutableRawPointer, expected: Int) throws {
        let n = ZSTD_decompressDCtx(context, destination, expected, source, count)
        if ZSTD_isError(n) != 0 { throw CodecError.corruptFrame(String(cString: ZSTD_getErrorName(n))) }
        if n != expected { throw CodecError.corruptFrame("decompressed to \(n) bytes, expected \(expected)") }
    }
}
