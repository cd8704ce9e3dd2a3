// Hashing: XXH3-128 identifies a block's content (change detection and restore verification), XXH3-64
// checksums bulk bytes on disk (frames, hash-map chunks). This file and Compression.swift are the only code
// that touches xxHash (CXXH3: its header compiled in, AVX2 where the CPU has it) and libzstd.
import CXXH3

/// The XXH3-128 of one block. All-zero blocks get `.zero` instead, which XXH3 never yields in practice, so a
/// zero block in the hash map needs no separate flag.
public struct BlockHash: Equatable, Hashable, Sendable {
    public var low: UInt64
    public var high: UInt64

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    public static let zero = BlockHash(low: 0, high: 0)

    /// Marks, in a hash map, a block the source could not deliver at capture; restored as zeros. Like `.zero`
    /// it is a value XXH3 never yields in practice, so a block that becomes readable again differs from it.
    public static let unreadable = BlockHash(low: .max, high: .max)

    /// Marks, in a hash map, a block no filesystem on the source used at capture (a chain of used blocks): it
    /// restores as zeros, and `restore --delta` leaves it as the target has it. Unlike `.zero`, so that a block
    /// turning from free to used (zeros or not) is stored, and one staying free is not.
    public static let free = BlockHash(low: .max, high: .max - 2)

    /// Marks, in the old hash map a capture compares with (in memory only, never on disk), a block whose stored
    /// copy lies in a damaged frame: it equals no block's hash, so the capture stores the block anew (heals it).
    public static let damaged = BlockHash(low: .max, high: .max - 1)

    @inline(__always)
    public static func of(_ p: UnsafeRawPointer, count: Int) -> BlockHash {
        let h = strata_xxh3_128(p, count)
        return BlockHash(low: h.low64, high: h.high64)
    }
}

public enum Checksum {
    /// XXH3-64 of a byte range.
    @inline(__always)
    public static func xxh3(_ p: UnsafeRawPointer, count: Int) -> UInt64 { strata_xxh3_64(p, count) }

    public static func xxh3(_ bytes: [UInt8]) -> UInt64 { bytes.withUnsafeBytes { strata_xxh3_64($0.baseAddress, $0.count) } }
}

/// Recognises all-zero blocks cheaply: hash first (needed anyway), and compare bytes only when the hash equals
/// the hash of a zero block of that size.
public struct ZeroBlockDetector: Sendable {
    public let blockSize: Int
    let zeroHash: BlockHash
    let hasher: BlockHasher

    /// `hasher`: keyed for an encrypted chain.
    public init(blockSize: Int, hasher: BlockHasher = .plain) {
        self.blockSize = blockSize
        self.hasher = hasher
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 64)
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: blockSize)
        zeroHash = hasher.hash(zeros, count: blockSize)
        zeros.deallocate()
    }

    /// The block's hash, or `.zero` when every byte is zero.
    @inline(__always)
    public func hash(_ p: UnsafeRawPointer) -> BlockHash {
        let h = hasher.hash(p, count: blockSize)
        if h == zeroHash && isAllZero(p, count: blockSize) { return .zero }
        return h
    }
}

@inline(__always)
public func isAllZero(_ p: UnsafeRawPointer, count: Int) -> Bool {
    var i = 0
    while i + 8 <= count {
        if p.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
        i += 8
    }
    while i < count {
        if p.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
        i += 1
    }
    return true
}
