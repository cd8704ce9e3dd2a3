// The frame cache of a chain being served: a bounded set of decoded frames, least
// recently used out, but shared by every point served, every thread serving reads and read-ahead (frames are
// known by their image, opened once for all points, and their number). A frame is read and decoded
// once however many threads want it (the others wait for it), outside the lock, so reads of different frames
// decode in parallel; an entry in use (pinned) is never evicted under its reader. Entries hold a frame's block
// hashes (the reader checks each block it hands out against them) and its decoded blocks; the stored bytes are
// read into a scratch buffer of the loading thread, so an entry costs its decoded size and 16 bytes a block.
// A frame whose every block has been handed out since it was loaded goes first (a sequential reader is done
// with it), then the least recently used: least recently used alone would evict frames read ahead before the
// ones a sequential reader has finished with (they were loaded earlier), and it would find them gone.
// A reader that wants only some blocks of a frame stored in sub-frames or raw (a random read) gets an entry with
// only the sub-frames or runs of blocks holding them (`FrameReader.readPart`), completed as other blocks of it are
// asked for.
import StrataCodec
import StrataFormat
import StrataIO

final class SharedFrameCache: @unchecked Sendable {  // the entries and their pins are guarded by `lock`; an entry's bytes change only while one reader loads it
    private enum State { case empty, loading, ready }

    /// A frame of an opened image (images stay open as long as the cache).
    private struct Key: Hashable {
        let image: ObjectIdentifier
        let frame: UInt32
    }

    /// What a thread loading a frame needs: room for its stored bytes, and a decompressor.
    private struct Loader {
        let stored: UnsafeMutableRawPointer
        let decompressor: FrameDecompressor
    }

    private let hashes: AlignedSlab
    private let decoded: AlignedSlab
    private let maxStored: Int
    private var keys: [Key?]
    private var state: [State]
    private var pins: [Int]
    private var age: [Int]
    /// Blocks handed out from the entry since it was loaded, and the frame's block count.
    private var taken: [Int]
    private var blocks: [Int]
    /// The sub-frames decoded (bit i) of an entry read in part, and the blocks a sub-frame holds; 0 where the
    /// whole frame is decoded.
    private var parts: [UInt64]
    private var blocksPerPart: [Int]
    private var slotOf: [Key: Int] = [:]
    private var clock = 0
    private var loaders: [Loader] = []
    private let lock = Condition()
    /// Entries.
    let capacity: Int
    private(set) var hits = 0
    private(set) var misses = 0

    /// A pinned entry: its bytes stay valid until `release`. `hashes` is the frame's block-hash table (what
    /// `FrameReader.checkBlocks` takes as its stored bytes). A frame larger than the cache's entries is read into
    /// buffers of its own (slot -1), freed on release.
    struct Entry {
        let slot: Int
        let hashes: UnsafeRawPointer
        let decoded: UnsafeRawPointer
    }

    /// Room for about `bytes` of frames of at most `maxStored` stored and `maxBlocks` blocks of `blockSize`, and at
    /// least `minEntries` entries (the threads that may pin one each, plus read-ahead).
    init(bytes: Int, maxStored: Int, maxBlocks: Int, blockSize: Int, minEntries: Int) {
        let entry = max(maxBlocks * 16, 16) + max(maxBlocks * blockSize, 1)
        capacity = max(minEntries, bytes / entry)
        self.maxStored = max(maxStored, 1)
        hashes = AlignedSlab(slotSize: max(maxBlocks * 16, 16), slotCount: capacity, alignment: 64)
        decoded = AlignedSlab(slotSize: max(maxBlocks * blockSize, 1), slotCount: capacity, alignment: 64)
        keys = Array(repeating: nil, count: capacity)
        state = Array(repeating: .empty, count: capacity)
        pins = Array(repeating: 0, count: capacity)
        age = Array(repeating: 0, count: capacity)
        taken = Array(repeating: 0, count: capacity)
        blocks = Array(repeating: 0, count: capacity)
        parts = Array(repeating: 0, count: capacity)
        blocksPerPart = Array(repeating: 0, count: capacity)
    }

    deinit { for l in loaders { l.stored.deallocate() } }

    /// Whether the frame is cached whole or being read (read-ahead skips it; one read in part it completes).
    func holds(_ f: FrameRef, of reader: FrameReader) -> Bool {
        let key = Key(image: ObjectIdentifier(reader.image(f)), frame: f.frame)
        return lock.withLock { slotOf[key].map { state[$0] == .loading || blocksPerPart[$0] == 0 } ?? false }
    }

    /// The frame, pinned: read through `reader`, checksummed and decoded on a miss (by this thread; a thread
    /// wanting a frame another is loading waits for it). With `blocks`, only they need be decoded (the rest of
    /// the entry may not be: take only them). Throws what the read or the check threw, naming the image and frame.
    func get(_ f: FrameRef, of reader: FrameReader, blocks wanted: Range<Int>? = nil) throws -> Entry {
        try get(f, of: reader, blocks: wanted, waitForRoom: true)!
    }

    /// `get`, or nil without `waitForRoom` when every entry is pinned or loading: a thread holding entries pinned
    /// must not wait for one to be released (the threads holding the others may be waiting for it).
    func get(_ f: FrameRef, of reader: FrameReader, blocks wanted: Range<Int>?, waitForRoom: Bool) throws -> Entry? {
        let r = try reader.record(f)
        let blockSize = Int(reader.image(f).header.blockSize)
        guard Int(r.length) <= maxStored, Int(r.blockCount) * blockSize <= decoded.slotSize, r.hashesLength <= hashes.slotSize else {
            return try loadAlone(f, of: reader, stored: Int(r.length), decoded: Int(r.blockCount) * blockSize)
        }
        let key = Key(image: ObjectIdentifier(reader.image(f)), frame: f.frame)
        lock.lock()
        while true {
            if let i = slotOf[key] {
                if state[i] == .loading {
                    lock.wait()
                    continue
                }
                clock += 1
                age[i] = clock
                pins[i] += 1
                if covers(i, wanted) {
                    hits += 1
                    lock.unlock()
                    return entry(i)
                }
                // Read in part, and this read wants more of it: this thread decodes what is missing.
                misses += 1
                state[i] = .loading
                let loader = loaders.popLast(), have = parts[i]
                lock.unlock()
                return try load(f, record: r, of: reader, key: key, into: i, loader: loader, blocks: wanted, have: have)
            }
            guard let victim = victim() else {
                guard waitForRoom else {
                    lock.unlock()
                    return nil
                }
                lock.wait()
                continue
            }
            misses += 1
            if let old = keys[victim] { slotOf[old] = nil }
            keys[victim] = key
            slotOf[key] = victim
            state[victim] = .loading
            pins[victim] = 1
            taken[victim] = 0
            blocks[victim] = Int(r.blockCount)
            let loader = loaders.popLast()
            lock.unlock()
            return try load(f, record: r, of: reader, key: key, into: victim, loader: loader, blocks: wanted)
        }
    }

    /// Whether entry `i` has blocks `wanted` (nil: all) decoded. Holding the lock.
    private func covers(_ i: Int, _ wanted: Range<Int>?) -> Bool {
        guard blocksPerPart[i] > 0 else { return true }
        guard let wanted, !wanted.isEmpty else { return false }
        return SubframeTable.subframes(holding: wanted, blocksPerSubframe: blocksPerPart[i]).allSatisfy { parts[i] & (1 << UInt64($0)) != 0 }
    }

    /// The entry to replace: an empty one, else one whose blocks have all been handed out, else the least
    /// recently used; none while every entry is pinned or loading. Holding the lock.
    private func victim() -> Int? {
        var best: Int?
        func rank(_ i: Int) -> (Int, Int) { (state[i] == .empty ? 0 : taken[i] >= blocks[i] ? 1 : 2, age[i]) }
        for i in 0..<capacity where pins[i] == 0 && state[i] != .loading {
            if best == nil || rank(i) < rank(best!) { best = i }
        }
        return best
    }

    /// Loads the frame into entry `i` (pinned, loading): only the sub-frames holding `wanted` where the frame is
    /// stored in sub-frames (with those of `have` there already), else the whole frame, read, checked and decoded.
    private func load(
        _ f: FrameRef, record r: FrameRecord, of reader: FrameReader, key: Key, into i: Int, loader: Loader?, blocks wanted: Range<Int>? = nil,
        have: UInt64 = 0
    ) throws -> Entry {
        var loader = loader
        var part: (parts: UInt64, blocksPerPart: Int)?
        do {
            let l = try loader ?? Loader(
                stored: UnsafeMutableRawPointer.allocate(byteCount: maxStored, alignment: 64), decompressor: FrameDecompressor())
            loader = l
            // The rest of an entry read in part is decoded in part too: readers may be copying out of it.
            if let wanted = wanted ?? (have != 0 ? 0..<Int(r.blockCount) : nil) {
                part = try reader.readPart(
                    f, record: r, blocks: wanted, have: have, scratch: l.stored, hashes: hashes.slot(i), decoded: decoded.slot(i), decompressor: l.decompressor)
            }
            if part == nil {
                try reader.read(f, into: l.stored)
                try reader.check(f, stored: l.stored, .decodeOnly, decoded: decoded.slot(i), decompressor: l.decompressor)
                hashes.slot(i).copyMemory(from: l.stored, byteCount: r.hashesLength)
            }
        } catch {
            lock.publish {
                if let loader { loaders.append(loader) }
                if have != 0 {
                    // Completing an entry read in part: what it had stays, for the readers holding it.
                    state[i] = .ready
                    pins[i] -= 1
                } else {
                    slotOf[key] = nil
                    keys[i] = nil
                    state[i] = .empty
                    pins[i] = 0
                }
            }
            throw error
        }
        lock.publish {
            loaders.append(loader!)
            clock += 1
            age[i] = clock
            state[i] = .ready
            (parts[i], blocksPerPart[i]) = part ?? (0, 0)
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
        return Entry(slot: -1, hashes: UnsafeRawPointer(s), decoded: UnsafeRawPointer(d))
    }

    /// Unpins an entry `get` returned, counting the blocks the caller handed out from it (read-ahead: none).
    func release(_ e: Entry, blocksTaken: Int = 0) {
        guard e.slot >= 0 else {
            e.hashes.deallocate()
            e.decoded.deallocate()
            return
        }
        lock.publish {
            pins[e.slot] -= 1
            taken[e.slot] += blocksTaken
        }
    }

    private func entry(_ i: Int) -> Entry {
        Entry(slot: i, hashes: UnsafeRawPointer(hashes.slot(i)), decoded: UnsafeRawPointer(decoded.slot(i)))
    }
}
