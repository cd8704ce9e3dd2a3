// A new object in a bucket: a multipart upload, its part layout (where each part lies, which are filled, sent
// or copied inside the store) and the appender that fills it in order.
import NIOCore
import StrataIO

/// An object being written: a multipart upload whose parts are filled by writes at any offset and each uploaded
/// once full, a few at a time, from the buffer it was filled in (a ByteBuffer that async-http-client sends as it
/// is); part 1, which holds the header an image writes last, waits for `publish`; an object of one part is one PUT.
/// Parts are numbered from 1 in the order of their bytes: those below `tailNumber` have fixed places (`fixed`: a
/// range copied inside the store, or a buffered part cut short before one), and from `tailStart` on they lie on a
/// grid of `partSize`. A range `copyInStore` takes becomes parts of its own, UploadPartCopy from the source object.
final class S3NewObject: NewObject, @unchecked Sendable {  // the parts, tags and counts are guarded by `lock`; the upload id's start by `starting`
    let name: String
    private let key: String
    private let store: S3ChainStore
    /// The first part (which holds the header, written last) stays in memory until `publish`: small.
    static let firstPart = 8 << 20
    /// The other parts: 16 MiB, or larger for an object expected past 10,000 parts of that (S3's limit).
    let partSize: Int
    /// S3's smallest part (all but the last).
    static let minimumPart = 5 << 20
    /// A range copied in the store goes as parts of at most this, several at once.
    static let copyPartSize = 64 << 20
    /// Parts uploading at once: 3 of 16 MiB, fewer of larger parts (memory: about (2 + this) x `partSize`).
    let uploadsInFlight: Int
    static let copiesInFlight = 6
    /// S3's most parts in one upload.
    static let mostParts = 10_000
    private let lock = Condition()

    private struct Place {
        var start: UInt64
        var length: Int
        /// A part copied in the store: the source object's key and where its bytes start.
        var copy: (key: String, from: UInt64)?
    }
    /// Parts 1...fixed.count.
    private var fixed = [Place(start: 0, length: S3NewObject.firstPart)]
    private var tailStart = UInt64(S3NewObject.firstPart)
    private var tailNumber: Int { fixed.count + 1 }

    /// Buffered parts in memory, by number: their bytes and the ranges written so far (a header is written twice:
    /// counted once).
    private var parts: [Int: Part] = [:]
    private struct Part {
        var buffer: ByteBuffer
        var written: [Range<Int>] = []
        var filled: Int { written.reduce(0) { $0 + $1.count } }

        mutating func put(_ bytes: UnsafeRawPointer, count: Int, at within: Int) {
            buffer.withVeryUnsafeMutableBytes { ($0.baseAddress! + within).copyMemory(from: bytes, byteCount: count) }
            var merged = within..<(within + count)
            written.removeAll { w in
                guard w.overlaps(merged) || w.upperBound == merged.lowerBound || merged.upperBound == w.lowerBound else { return false }
                merged = min(w.lowerBound, merged.lowerBound)..<max(w.upperBound, merged.upperBound)
                return true
            }
            written.append(merged)
        }

        /// The first `length` bytes, to send.
        func bytes(_ length: Int) -> ByteBuffer {
            var b = buffer
            b.moveWriterIndex(to: length)
            return b
        }
    }
    private var etags: [Int: String] = [:]
    private var uploading = 0
    private var copying = 0
    private var end: UInt64 = 0
    private var uploadID: String?
    private var failure: Error?
    private var finished = false

    /// `expectedSize`: the most the object may grow to (0: unknown, small), which sets the part size.
    init(store: S3ChainStore, name: String, key: String, expectedSize: UInt64) {
        (self.store, self.name, self.key) = (store, name, key)
        let needed = ((expectedSize / UInt64(Self.mostParts - 500) + UInt64(1 << 20) - 1) >> 20) << 20  // in MiB
        partSize = Int(min(max(UInt64(16 << 20), needed), UInt64(5 << 30)))
        uploadsInFlight = max(1, min(3, (48 << 20) / partSize))
    }

    /// Past S3's most parts in one upload (10,000 of `partSize`).
    private var tooManyParts: StoreError {
        StoreError(.tooLarge, "write", "\(store.location)/\(name)", reason: "more than S3's \(Self.mostParts) parts of \(partSize >> 20) MiB")
    }

    func appender(start: UInt64, engine: IOEngineChoice) throws -> ObjectAppender { S3Appender(object: self, start: start) }

    /// The part holding byte `at` (lock held): its number and place (a tail part's length is `partSize`).
    private func place(of at: UInt64) -> (number: Int, place: Place) {
        if at >= tailStart {
            let k = Int((at - tailStart) / UInt64(partSize))
            return (tailNumber + k, Place(start: tailStart + UInt64(k) * UInt64(partSize), length: partSize))
        }
        var lo = 0, hi = fixed.count - 1  // the last fixed part starting at or before `at`
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if fixed[mid].start <= at { lo = mid } else { hi = mid - 1 }
        }
        return (lo + 1, fixed[lo])
    }

    /// Part `number`'s place (lock held); the last tail part ends where the object does.
    private func place(number: Int) -> Place {
        if number < tailNumber { return fixed[number - 1] }
        let start = tailStart + UInt64(number - tailNumber) * UInt64(partSize)
        return Place(start: start, length: Int(min(UInt64(partSize), end - start)))
    }

    /// How many parts the object has now (lock held).
    private var partCount: Int {
        fixed.count + (end > tailStart ? Int((end - tailStart + UInt64(partSize) - 1) / UInt64(partSize)) : 0)
    }

    func write(_ bytes: UnsafeRawPointer, count: Int, at offset: UInt64) throws {
        var done = 0
        while done < count {
            let at = offset + UInt64(done)
            let (full, n): (Int?, Int) = try lock.withLock {
                if let failure { throw failure }
                let (number, p) = place(of: at)
                precondition(p.copy == nil && etags[number] == nil, "a write into a part already sent")
                guard number <= Self.mostParts else {
                    throw tooManyParts
                }
                let within = Int(at - p.start), n = min(count - done, p.length - within)
                if parts[number] == nil { parts[number] = Part(buffer: ByteBufferAllocator().buffer(capacity: p.length)) }
                parts[number]!.put(bytes + done, count: n, at: within)
                end = max(end, at + UInt64(n))
                return (parts[number]!.filled == p.length && number > 1 ? number : nil, n)
            }
            if let full { try send(full) }
            done += n
        }
    }

    /// Uploads a full part on a thread of its own, waiting while too many are in flight.
    private func send(_ number: Int) throws {
        let id = try uploadIDStarting()
        let bytes: ByteBuffer = try lock.withLock {
            while uploading >= uploadsInFlight && failure == nil { lock.wait() }
            if let failure { throw failure }
            uploading += 1
            return parts[number]!.bytes(place(number: number).length)
        }
        Threads.spawn("strata-s3-upload") { [self] in
            let result = Result { try store.client.uploadPart(bucket: store.place.bucket, key: key, uploadID: id, number: number, bytes) }
            sent(number, result) { uploading -= 1 }
        }
    }

    /// Copies a part inside the store on a thread of its own, waiting while too many copies are in flight.
    private func copy(_ number: Int, _ p: Place) throws {
        let id = try uploadIDStarting()
        try lock.withLock {
            while copying >= Self.copiesInFlight && failure == nil { lock.wait() }
            if let failure { throw failure }
            copying += 1
        }
        let source = p.copy!
        Threads.spawn("strata-s3-copy") { [self] in
            let result = Result {
                try store.client.uploadPartCopy(
                    bucket: store.place.bucket, key: key, uploadID: id, number: number, source: source.key,
                    range: source.from..<(source.from + UInt64(p.length)))
            }
            sent(number, result) { copying -= 1 }
        }
    }

    private func sent(_ number: Int, _ result: Result<String, Error>, _ done: () -> Void) {
        lock.withLock {
            switch result {
            case .success(let etag):
                etags[number] = etag
                parts.removeValue(forKey: number)
            case .failure(let e): if failure == nil { failure = S3ChainStore.failure(e, store.location) }
            }
            done()
            lock.broadcast()
        }
    }

    /// The upload's id, starting the upload at the first call (one at a time: two writers filling parts at once
    /// must not start two uploads).
    private func uploadIDStarting() throws -> String {
        try starting.withLock {
            if let id = lock.withLock({ uploadID }) { return id }
            let id = try store.run { try store.client.startMultipart(bucket: store.place.bucket, key: key) }
            lock.withLock { uploadID = id }
            return id
        }
    }
    private let starting = Condition()

    var smallestCopy: Int? { Self.minimumPart }

    /// A copy can start where the part it would follow is empty or at least `minimumPart` long.
    func bytesBeforeCopy(at offset: UInt64) -> UInt64 { lock.withLock { bytesBeforeCopyLocked(offset) } }

    func copyInStore(from source: StoredObject, at sourceOffset: UInt64, count: Int, to offset: UInt64) throws -> Bool {
        guard let source = source as? S3Object, source.store === store, count >= Self.minimumPart else { return false }
        let (first, pieces, completed): (Int, [Place], Int?) = try lock.withLock {
            if let failure { throw failure }
            guard end <= offset, bytesBeforeCopyLocked(offset) == 0 else { return (0, [], nil) }
            if offset < tailStart {
                // The first part, still held, ends where the copy starts (at least `minimumPart` in).
                fixed[0].length = Int(offset)
                tailStart = offset
            }
            // The tail's parts up to `offset` take their places (the last one cut short there).
            var s = tailStart
            while s < offset {
                let length = Int(min(UInt64(partSize), offset - s))
                fixed.append(Place(start: s, length: length))
                s += UInt64(length)
            }
            let before = fixed.count
            let n = (count + Self.copyPartSize - 1) / Self.copyPartSize
            var at = offset, from = sourceOffset
            var pieces: [Place] = []
            for k in 0..<n {
                let length = count / n + (k < count % n ? 1 : 0)
                pieces.append(Place(start: at, length: length, copy: (source.key, from)))
                at += UInt64(length)
                from += UInt64(length)
            }
            guard before + pieces.count < Self.mostParts else { throw tooManyParts }
            fixed += pieces
            tailStart = at
            end = at
            // The part cut short may be whole now.
            let completed = before > 1 && parts[before].map { $0.filled == fixed[before - 1].length } == true ? before : nil
            return (before + 1, pieces, completed)
        }
        guard !pieces.isEmpty else { return false }
        if let completed { try send(completed) }
        for (k, p) in pieces.enumerated() { try copy(first + k, p) }
        return true
    }

    /// Where a copy could start: after a part of at least `minimumPart`, the first part cut short there if need be.
    private func bytesBeforeCopyLocked(_ offset: UInt64) -> UInt64 {
        let least = UInt64(Self.minimumPart)
        if offset < tailStart {
            guard fixed.count == 1 else { return UInt64.max }  // inside a part already placed: never
            return offset >= least ? 0 : least - offset
        }
        let r = (offset - tailStart) % UInt64(partSize)
        return r == 0 || r >= least ? 0 : least - r
    }

    /// Waits for every upload and copy in flight; throws the first failure.
    func drain() throws {
        try lock.withLock {
            while uploading > 0 || copying > 0 { lock.wait() }
            if let failure { throw failure }
        }
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        try lock.withLock {
            let (number, p) = place(of: offset)
            let within = Int(offset - p.start)
            guard let part = parts[number], within + count <= p.length else {
                preconditionFailure("strata bug: a read back of \(name) at \(offset) outside the parts still held")
            }
            let n = Int(min(UInt64(count), end - offset))
            part.buffer.withVeryUnsafeBytes { buffer.copyMemory(from: $0.baseAddress! + within, byteCount: n) }
            return n
        }
    }

    func publish() throws {
        try drain()
        let (count, single) = lock.withLock { (partCount, uploadID == nil && end <= UInt64(Self.firstPart) ? parts[1] : nil) }
        if let single {
            // One part: a plain PUT of its bytes.
            let length = lock.withLock { Int(end) }
            precondition(single.filled == length, "strata bug: \(name) published with bytes never written")
            try store.run { try store.client.put(bucket: store.place.bucket, key: key, single.bytes(length)) }
        } else {
            let id = try uploadIDStarting()
            for number in 1...max(count, 1) where lock.withLock({ etags[number] == nil }) {
                let bytes = try lock.withLock { () -> ByteBuffer in
                    let p = place(number: number)
                    guard p.copy == nil, let part = parts[number], part.filled == p.length else {
                        preconditionFailure("strata bug: \(name) published with a part never written")
                    }
                    return part.bytes(p.length)
                }
                let etag = try store.run { try store.client.uploadPart(bucket: store.place.bucket, key: key, uploadID: id, number: number, bytes) }
                lock.withLock { etags[number] = etag }
            }
            let list = lock.withLock { (1...max(count, 1)).map { etags[$0]! } }
            try store.run { try store.client.completeMultipart(bucket: store.place.bucket, key: key, uploadID: id, parts: list) }
        }
        lock.withLock {
            finished = true
            parts = [:]
        }
        try store.published(name)
    }

    func abandon() {
        try? drain()
        if let id = lock.withLock({ uploadID }), !lock.withLock({ finished }) {
            try? store.client.abortMultipart(bucket: store.place.bucket, key: key, uploadID: id)
        }
        lock.withLock { parts = [:] }
    }
}

/// Appends to an `S3NewObject` at a moving offset; `skip` leaves room that `write(at:)` fills later.
final class S3Appender: ObjectAppender {
    private let object: S3NewObject
    private(set) var offset: UInt64

    fileprivate init(object: S3NewObject, start: UInt64) { (self.object, offset) = (object, start) }

    func append(_ bytes: UnsafeRawPointer, count: Int) throws {
        try object.write(bytes, count: count, at: offset)
        offset += UInt64(count)
    }

    func skip(_ count: UInt64) throws { offset += count }

    func finish() throws { try object.drain() }
}

