// The frame cache of a chain being served (issue 11): like FrameCache, a bounded set of decoded frames, least
// recently used out, but shared by every point served, every thread serving reads and read-ahead (frames are
// known by their image, opened once for all points, and their number). A frame is read and decoded
// once however many threads want it (the others wait for it), outside the lock, so reads of different frames
// decode in parallel; an entry in use (pinned) is never evicted under its reader. Entries hold a frame's stored
// bytes (its block hashes: the reader checks each block it hands out) and its decoded blocks.
import StrataCodec
import StrataFormat
import StrataIO

final class SharedFrameCache: @unchecked Sendable {
    private enum State { case empty, loading, ready }

    /// A frame of an opened image (images stay open as long as the cache).
    private struct Key: Hashable {
        let image: ObjectIdentifier
        let frame: UInt32
    }

    private let stored: AlignedSlab
    private let decoded: AlignedSlab
    private var keys: [Key?]
    private var state: [State]
    private var pins: [Int]
    private var age: [Int]
    private var slotOf: [Key: Int] = [:]
    private var clock = 0
    private var decompressors: [FrameDecompressor] = []
    private let lock = Condition()
    /// Entries.
    let capacity: Int
    private(set) var hits = 0
    private(set) var misses = 0

    /// A pinned entry: its bytes stay valid until `release`. A frame larger than the cache's entries (of an image
    /// opened after the cache was sized) is read into buffers of its own (slot -1), freed on release.
    struct Entry {
        let slot: Int
        let stored: UnsafeRawPointer
        let decoded: UnsafeRawPointer
    }

    /// Room for about `bytes` of frames of at most `maxStored` stored and `maxDecoded` decoded bytes, and at
    /// least `minEntries` entries (the threads that may pin one each, plus read-ahead).
    init(bytes: Int, maxStored: Int, maxDecoded: Int, minEntries: Int) {
        let entry = max(maxStored, 1) + max(maxDecoded, 1)
        capacity = max(minEntries, bytes / entry)
        stored = AlignedSlab(slotSize: max(maxStored, 1), slotCount: capacity, alignment: 64)
        decoded = AlignedSlab(slotSize: max(maxDecoded, 1), slotCount: capacity, alignment: 64)
        keys = Array(repeating: nil, count: capacity)
        state = Array(repeating: .empty, count: capacity)
        pins = Array(repeating: 0, count: capacity)
        age = Array(repeating: 0, count: capacity)
    }

    /// Whether the frame is cached or being read (read-ahead skips it).
    func holds(_ f: FrameRef, of reader: FrameReader) -> Bool {
        let key = Key(image: ObjectIdentifier(reader.image(f)), frame: f.frame)
        return lock.withLock { slotOf[key] != nil }
    }

    /// The frame, pinned: read through `reader`, checksummed and decoded on a miss (by this thread; a thread
    /// wanting a frame another is loading waits for it). Throws what the read or the check threw, naming the
    /// image and frame.
    func get(_ f: FrameRef, of reader: FrameReader) throws -> Entry {
        let r = try reader.record(f)
        let blockSize = Int(reader.image(f).header.blockSize)
        guard Int(r.length) <= stored.slotSize, Int(r.blockCount) * blockSize <= decoded.slotSize else {
            return try loadAlone(f, of: reader, stored: Int(r.length), decoded: Int(r.blockCount) * blockSize)
        }
        let f0 = f
        let f = Key(image: ObjectIdentifier(reader.image(f0)), frame: f0.frame)
        lock.lock()
        while true {
            if let i = slotOf[f] {
                if state[i] == .loading {
                    lock.wait()
                    continue
                }
                hits += 1
                clock += 1
                age[i] = clock
                pins[i] += 1
                lock.unlock()
                return entry(i)
            }
            // A slot no one uses, the least recently used first; all pinned or loading: wait for one.
            var victim = -1
            for i in 0..<capacity where pins[i] == 0 && state[i] != .loading {
                if victim < 0 || state[i] == .empty && state[victim] != .empty || state[i] == state[victim] && age[i] < age[victim] {
                    victim = i
                }
            }
            guard victim >= 0 else {
                lock.wait()
                continue
            }
            misses += 1
            if let old = keys[victim] { slotOf[old] = nil }
            keys[victim] = f
            slotOf[f] = victim
            state[victim] = .loading
            pins[victim] = 1
            let decompressor = decompressors.popLast()
            lock.unlock()
            return try load(f0, of: reader, key: f, into: victim, decompressor: decompressor)
        }
    }

    private func load(_ f: FrameRef, of reader: FrameReader, key: Key, into i: Int, decompressor: FrameDecompressor?) throws -> Entry {
        var decompressor = decompressor
        do {
            let d = try decompressor ?? FrameDecompressor()
            decompressor = d
            try reader.read(f, into: stored.slot(i))
            try reader.check(f, stored: stored.slot(i), .decodeOnly, decoded: decoded.slot(i), decompressor: d)
        } catch {
            lock.publish {
                if let decompressor { decompressors.append(decompressor) }
                slotOf[key] = nil
                keys[i] = nil
                state[i] = .empty
                pins[i] = 0
            }
            throw error
        }
        lock.publish {
            decompressors.append(decompressor!)
            clock += 1
            age[i] = clock
            state[i] = .ready
        }
        return entry(i)
    }

    private func loadAlone(_ f: FrameRef, of reader: FrameReader, stored: Int, decoded: Int) throws -> Entry {
        let s = UnsafeMutableRawPointer.allocate(byteCount: max(stored, 1), alignment: 64)
        let d = UnsafeMutableRawPointer.allocate(byteCount: max(decoded, 1), alignment: 64)
        do {
            try reader.read(f, into: s)
            try reader.check(f, stored: s, .decodeOnly, decoded: d, decompressor: FrameDecompressor())
        } catch {
            s.deallocate()
            d.deallocate()
            throw error
        }
        return Entry(slot: -1, stored: UnsafeRawPointer(s), decoded: UnsafeRawPointer(d))
    }

    /// Unpins an entry `get` returned.
    func release(_ e: Entry) {
        guard e.slot >= 0 else {
            e.stored.deallocate()
            e.decoded.deallocate()
            return
        }
        lock.publish { pins[e.slot] -= 1 }
    }

    private func entry(_ i: Int) -> Entry {
        Entry(slot: i, stored: UnsafeRawPointer(stored.slot(i)), decoded: UnsafeRawPointer(decoded.slot(i)))
    }
}
