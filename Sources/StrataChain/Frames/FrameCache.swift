// A bounded cache of decoded frames, least recently used out: each entry holds a frame's stored bytes (its
// block hashes, needed to check the blocks taken from it) and its decoded blocks. Merge gives each worker one
// (the blocks surviving a merge interleave across the source images, so a packed frame draws on about one live
// frame per image: without a cache, frames were decoded over and over); random reads of a point will use it to
// serve neighbouring reads from one decode. One owner at a time: an entry stays valid until the owner's next
// `get`.
import StrataCodec
import StrataFormat
import StrataIO

final class FrameCache {
    private let stored: AlignedSlab
    private let decoded: AlignedSlab
    private var keys: [FrameRef?]
    private var age: [Int]
    private var clock = 0
    /// Entries, and bytes held.
    let capacity: Int
    var bytes: Int { stored.slotSize * capacity + decoded.slotSize * capacity }
    private(set) var hits = 0
    private(set) var misses = 0

    /// Room for `bytes` of frames of at most `maxStored` stored bytes and `maxDecoded` decoded bytes each (at
    /// least one entry).
    init(bytes: Int, maxStored: Int, maxDecoded: Int) {
        let entry = max(maxStored, 1) + max(maxDecoded, 1)
        capacity = max(1, bytes / entry)
        stored = AlignedSlab(slotSize: max(maxStored, 1), slotCount: capacity, alignment: 64)
        decoded = AlignedSlab(slotSize: max(maxDecoded, 1), slotCount: capacity, alignment: 64)
        keys = Array(repeating: nil, count: capacity)
        age = Array(repeating: 0, count: capacity)
    }

    /// The frame's stored bytes and decoded blocks, read and checked by `reader` on a miss (`.decodeOnly`: the
    /// caller checks the blocks it takes).
    func get(_ f: FrameRef, reader: FrameReader, decompressor: FrameDecompressor) throws -> (stored: UnsafeRawPointer, decoded: UnsafeRawPointer) {
        clock += 1
        if let i = keys.firstIndex(of: f) {
            hits += 1
            age[i] = clock
            return (UnsafeRawPointer(stored.slot(i)), UnsafeRawPointer(decoded.slot(i)))
        }
        misses += 1
        let i = age.indices.min { age[$0] < age[$1] }!
        keys[i] = nil
        try reader.read(f, into: stored.slot(i))
        try reader.check(f, stored: stored.slot(i), .decodeOnly, decoded: decoded.slot(i), decompressor: decompressor)
        keys[i] = f
        age[i] = clock
        return (UnsafeRawPointer(stored.slot(i)), UnsafeRawPointer(decoded.slot(i)))
    }
}
