// A chain opened for serving its points in place (`strata mount`, `strata serve`): each image is opened once,
// whichever points need it, and kept open for as long as the server runs, so a merge or prune that removes it
// from the chain does not break a point being read (the open file outlives its name). One cache of decoded
// frames and one read-ahead pool serve every point. Points are opened when first asked for (`reader(point:)`),
// from the manifest as it is then, or all at once (`openEveryPoint`, what mount does so that every point listed
// stays readable).
import StrataCodec
import StrataFormat
import StrataIO

public final class ServedChain: @unchecked Sendable {  // the readers opened are guarded by `lock`; the rest is set once
    public let location: String
    public let sourceSize: UInt64
    public let blockSize: Int
    let cache: SharedFrameCache
    let readAhead: ReadAhead
    /// Bytes read ahead of a sequential reader.
    let readAheadBytes: Int
    private let lock = Condition()
    private var images: [String: ImageFile] = [:]
    /// An encrypted chain's secret (each reopening of the manifest unlocks the key again).
    private let secret: UserSecret?
    /// Points opened, while someone reads them (a reader holds its chain; the chain does not hold its readers).
    private var readers: [UInt32: Weak<PointReader>] = [:]

    /// Opens the chain at `location` for serving, with about `cacheBytes` of decoded frames (`readAheadBytes` of
    /// them may be read ahead of a sequential reader, by `readAheadThreads` threads; 0 turns read-ahead off).
    public init(
        chain location: String, cacheBytes: Int = 64 << 20, readAheadBytes: Int? = nil, readAheadThreads: Int? = nil, secret: UserSecret? = nil
    ) throws {
        self.location = location
        self.secret = secret
        let (chain, m) = try ServedChain.current(location, secret: secret)
        sourceSize = m.sourceSize
        blockSize = Int(m.blockSize)
        // Entries sized for the largest frame the format allows: images opened later fit too.
        let maxDecoded = Int(ImageHeader.maxBlockSize)
        let newest = try chain.openPoint(m.points.last!)
        let maxStored = max(FrameReader(newest).largest.stored, maxDecoded + maxDecoded / Int(m.blockSize) * 16 + 4096)
        let threads = readAheadThreads ?? min(4, Sys.onlineCores)
        cache = SharedFrameCache(
            bytes: cacheBytes, maxStored: maxStored, maxBlocks: maxDecoded / Int(m.blockSize), blockSize: Int(m.blockSize), minEntries: 2 * threads + 16)
        self.readAheadBytes = threads == 0 ? 0 : min(readAheadBytes ?? 16 << 20, cache.capacity / 2 * maxDecoded)
        readAhead = ReadAhead(cache: cache, threads: threads)
        for image in newest { images[image.name] = image }
    }

    deinit { readAhead.stop() }

    /// The reader of `point` (nil: the newest point now), opened from the manifest as it is now when it was not
    /// open yet; throws `noSuchPoint` for a point the chain does not hold.
    public func reader(point: UInt32?) throws -> PointReader {
        try lock.withLock {
            if let point, let r = readers[point]?.value { return r }
            let (chain, m) = try ServedChain.current(location, secret: secret)
            guard let p = point ?? m.points.last else { throw ChainError.notAChain(path: location) }
            if let r = readers[p]?.value { return r }
            return try open(p, in: chain)
        }
    }

    /// Opens every point the chain holds now, oldest first.
    public func openEveryPoint() throws -> [PointReader] {
        try lock.withLock {
            let (chain, m) = try ServedChain.current(location, secret: secret)
            return try m.points.map { p in try readers[p]?.value ?? open(p, in: chain) }
        }
    }

    /// The chain at `location` as its manifest is now.
    private static func current(_ location: String, secret: UserSecret?) throws -> (Chain, ChainManifest) {
        let chain = try Chain(location: location, access: .read, secret: secret)
        guard let m = chain.manifest else { throw ChainError.notAChain(path: location) }
        _ = try chain.dataKeys()
        return (chain, m)
    }

    private func open(_ point: UInt32, in chain: Chain) throws -> PointReader {
        let list = try chain.openImages(forPoint: point) { e in
            self.images[e.file].flatMap { $0.header.imageID == e.imageID ? $0 : nil }
        }
        for image in list { images[image.name] = image }
        let r = PointReader(chain: self, point: point, images: list)
        readers[point] = Weak(r)
        return r
    }
}

private struct Weak<T: AnyObject> {
    weak var value: T?
    init(_ value: T) { self.value = value }
}

/// Threads that read and decode frames into the cache ahead of sequential readers. The queue is bounded: when
/// readers ask for more than the threads keep up with, the oldest wishes go (their readers have passed them).
final class ReadAhead: @unchecked Sendable {  // the queue is guarded by `condition`
    private let cache: SharedFrameCache
    private let condition = Condition()
    private var queue: [(FrameRef, FrameReader)] = []
    private var head = 0
    private var stopped = false
    /// Frames waiting at most.
    static let maxQueued = 64

    init(cache: SharedFrameCache, threads: Int) {
        self.cache = cache
        for i in 0..<threads { Threads.spawn("strata-ahead-\(i)", stackSize: 256 << 10) { self.work() } }
    }

    /// Queues frames to read unless they are cached or on their way (their order is kept).
    func want(_ frames: [FrameRef], of reader: FrameReader) {
        let todo = frames.filter { !cache.holds($0, of: reader) }
        guard !todo.isEmpty else { return }
        condition.publish {
            queue.append(contentsOf: todo.map { ($0, reader) })
            if queue.count - head > Self.maxQueued { head = queue.count - Self.maxQueued }
            if head > 1024 {
                queue.removeFirst(head)
                head = 0
            }
        }
    }

    func stop() { condition.publish { stopped = true } }

    private func work() {
        while true {
            condition.lock()
            while head == queue.count && !stopped { condition.wait() }
            if stopped {
                condition.unlock()
                return
            }
            let (f, reader) = queue[head]
            head += 1
            condition.unlock()
            // A frame that fails here fails again, with its message, for the read that wants it.
            if let e = try? cache.get(f, of: reader) { cache.release(e) }
        }
    }
}
