// The chain store's contract, as one suite every store must pass (restic runs one backend suite against each
// backend; proxmox-backup one datastore seam): the local directory today, an object store next. Each test is
// written against `ChainStore` alone; a new store adds one line to `stores`.
import Foundation
import StrataIO
import TestSupport
import XCTest

@testable import StrataChain

#if canImport(Glibc)
import Glibc
#endif

final class ChainStoreConformance: XCTestCase {
    var dir = ""

    /// Every store, by name, made at a location that does not exist yet, with what the suite asks of each that
    /// the seam does not say: the unfinished objects a writer left (a directory's temporary files; a bucket's
    /// multipart uploads, which no listing shows), and whether what it holds is private to its owner (a
    /// directory's modes; a bucket refusing a request without credentials). A new store adds one entry here.
    struct Kind {
        var name: String
        var make: (String) throws -> ChainStore
        var unfinished: (ChainStore) throws -> [String]
        var isPrivate: (ChainStore, _ object: String) throws -> Bool
    }

    static var stores: [Kind] {
        [
            Kind(
                name: "local directory", make: { LocalDirectoryStore(path: $0) },
                unfinished: { store in try store.list().filter { store.isTemporary($0) } },
                isPrivate: { store, object in
                    let dir = try Sys.stat(store.location), file = try Sys.stat("\(store.location)/\(object)")
                    return dir.permissions & 0o077 == 0 && file.permissions & 0o077 == 0
                }),
            Kind(
                name: "S3 (Ceph RGW)",
                make: { location in
                    guard let bucket else { throw XCTSkip("the S3 half: \(rgwFailure.map { "\($0)" } ?? "no gateway")") }
                    return try S3ChainStore(location: "s3://\(bucket)/\(BlockDevices.lastComponent(of: location))", options: StoreOptions())
                },
                unfinished: { store in
                    let s3 = store as! S3ChainStore
                    return try s3.client.unfinishedUploads(bucket: s3.place.bucket, prefix: s3.place.prefix).map(\.key)
                },
                isPrivate: { store, object in
                    // A GET without credentials, as anyone who can reach the store could send it.
                    let s3 = store as! S3ChainStore
                    let url = "\(s3.client.config.endpoint)/\(s3.place.bucket)/\(s3.place.prefix)\(object)"
                    let got = runProcess("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", url], deadline: 30)
                    XCTAssertEqual(got.status, 0, "curl: \(got.stderr)")
                    return got.stdout == "403"
                }),
        ]
    }

    /// The S3 store's gateway and bucket, for the whole suite.
    nonisolated(unsafe) static var rgw: RGW?
    nonisolated(unsafe) static var bucket: String?
    nonisolated(unsafe) static var rgwFailure: Error?
    override class func setUp() {
        do {
            let r = try RGW.start()
            r.export()
            rgw = r
            bucket = try r.makeBucket("conformance")
        } catch { rgwFailure = error }
    }
    override class func tearDown() { rgw?.stop() }

    /// Runs `body` once per store, each time at a fresh location; `another` opens that location again (as a
    /// second process would). The local half runs whatever the gateway did; where the gateway could not start,
    /// the S3 half is skipped afterwards with its reason (CI fails on that skip: its machine can run it).
    private func eachStore(_ body: (_ store: ChainStore, _ another: () throws -> ChainStore, _ kind: Kind) throws -> Void) throws {
        var skipped: XCTSkip?
        for (i, s) in Self.stores.enumerated() {
            let location = "\(dir)/store-\(i)-\(UUID().uuidString.prefix(6))"
            do { try body(s.make(location), { try s.make(location) }, s) } catch let skip as XCTSkip {
                skipped = skip
            } catch {
                XCTFail("\(s.name): \(error)")
            }
        }
        if let skipped { throw skipped }
    }

    override func setUpWithError() throws {
        dir = try scratchDirectory("store")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func bytes(_ n: Int, seed: UInt8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }

    /// Writes an object of `content` (appended in two pieces, the head placed by `write`) and publishes it.
    private func put(_ store: ChainStore, _ name: String, _ content: [UInt8]) throws {
        let object = try store.create(name)
        try content.withUnsafeBytes { raw in
            try object.write(raw.baseAddress!, count: min(100, raw.count), at: 0)
            let appender = try object.appender(start: UInt64(min(100, raw.count)), engine: .auto)
            let half = (raw.count - min(100, raw.count)) / 2
            try appender.append(raw.baseAddress! + min(100, raw.count), count: half)
            try appender.append(raw.baseAddress! + min(100, raw.count) + half, count: raw.count - min(100, raw.count) - half)
            try appender.finish()
        }
        try object.publish()
    }

    private func get(_ store: ChainStore, _ name: String) throws -> [UInt8] {
        let object = try store.open(name)
        var out = [UInt8](repeating: 0, count: Int(object.size))
        let n = try out.withUnsafeMutableBytes { try object.read(into: $0.baseAddress!, count: $0.count, at: 0) }
        XCTAssertEqual(n, out.count)
        return out
    }

    func testContainerIsMadePrivateAndEmpty() throws {
        let old = umask(0)  // a permissive umask: what the store makes must be private whatever it is
        defer { umask(old) }
        try eachStore { store, another, kind in
            XCTAssertFalse(store.containerExists())
            try store.makeContainer()
            XCTAssertTrue(store.containerExists())
            XCTAssertEqual(try store.list(), [])
            try put(store, "p000001.strata", bytes(5000, seed: 4))
            try store.commitManifest(bytes(100, seed: 5), expected: nil)
            for name in ["p000001.strata", "chain.manifest"] {
                XCTAssertTrue(try kind.isPrivate(store, name), "\(kind.name): \(name) is readable by others")
            }
        }
    }

    func testAnObjectIsInvisibleUntilPublishedThenReadsBackAtAnyOffset() throws {
        try eachStore { store, another, kind in
            try store.makeContainer()
            let content = bytes(3 << 20 | 12345, seed: 7)
            let object = try store.create("p000001.strata")
            try content.withUnsafeBytes { raw in
                let appender = try object.appender(start: 0, engine: .auto)
                try appender.append(raw.baseAddress!, count: raw.count)
                try appender.finish()
            }
            XCTAssertThrowsError(try store.open("p000001.strata")) { XCTAssertEqual(($0 as? StoreError)?.kind, .missing, "\($0)") }
            XCTAssertTrue(try store.list().allSatisfy { store.isTemporary($0) }, "only a temporary object so far")
            var head = [UInt8](repeating: 0, count: 64)
            _ = try head.withUnsafeMutableBytes { try object.read(into: $0.baseAddress!, count: 64, at: 0) }
            XCTAssertEqual(head, Array(content[0..<64]), "read back before publishing")
            try object.publish()
            try store.syncPublished()
            XCTAssertEqual(try store.list(), ["p000001.strata"])
            XCTAssertEqual(try get(store, "p000001.strata"), content)
            let opened = try store.open("p000001.strata")
            XCTAssertEqual(opened.size, UInt64(content.count))
            var middle = [UInt8](repeating: 0, count: 5000)
            let n = try middle.withUnsafeMutableBytes { try opened.read(into: $0.baseAddress!, count: 5000, at: 1_000_001) }
            XCTAssertEqual(n, 5000)
            XCTAssertEqual(middle, Array(content[1_000_001..<1_005_001]))
            let tail = try middle.withUnsafeMutableBytes { try opened.read(into: $0.baseAddress!, count: 5000, at: UInt64(content.count - 10)) }
            XCTAssertEqual(tail, 10, "a read past the end returns what there is")
        }
    }

    func testWritesAtReservedOffsetsBesideAppends() throws {
        try eachStore { store, another, kind in
            try store.makeContainer()
            let content = bytes(2 << 20, seed: 3)
            let object = try store.create("merged.strata")
            try content.withUnsafeBytes { raw in
                let appender = try object.appender(start: 4096, engine: .auto)
                try appender.skip(1 << 20)  // reserved for frames copied by other threads
                try appender.append(raw.baseAddress! + 4096 + (1 << 20), count: raw.count - 4096 - (1 << 20))
                DispatchQueue.concurrentPerform(iterations: 4) { i in
                    let at = 4096 + i * (1 << 18)
                    try? object.write(raw.baseAddress! + at, count: 1 << 18, at: UInt64(at))
                }
                try object.write(raw.baseAddress!, count: 4096, at: 0)
                try appender.finish()
            }
            try object.publish()
            XCTAssertEqual(try get(store, "merged.strata"), content)
        }
    }

    func testAbandonedObjectsLeaveNothing() throws {
        try eachStore { store, another, kind in
            try store.makeContainer()
            let object = try store.create("p000002.strata")
            // Past the first part of a bucket's object, so that an upload has begun (and must be aborted).
            let content = bytes(24 << 20, seed: 6)
            try content.withUnsafeBytes { raw in
                let appender = try object.appender(start: 0, engine: .auto)
                try appender.append(raw.baseAddress!, count: raw.count)
                try appender.finish()
            }
            XCTAssertFalse(try kind.unfinished(store).isEmpty, "\(kind.name): the object is under way before it is abandoned")
            object.abandon()
            XCTAssertEqual(try store.list(), [])
            XCTAssertEqual(try kind.unfinished(store), [], "\(kind.name): nothing unfinished is left")
        }
    }

    func testManifestIsReplacedOnlyIfUnchanged() throws {
        try eachStore { store, another, kind in
            try store.makeContainer()
            let name = "chain.manifest"
            XCTAssertThrowsError(try store.readSmall(name, limit: 1 << 20)) { XCTAssertEqual(($0 as? StoreError)?.kind, .missing, "\($0)") }
            try store.commitManifest(bytes(300, seed: 1), expected: nil)
            XCTAssertEqual(try store.readSmall(name, limit: 1 << 20), bytes(300, seed: 1))
            XCTAssertThrowsError(try store.commitManifest(bytes(200, seed: 2), expected: nil)) {
                XCTAssertEqual(($0 as? StoreError)?.kind, .changed, "\($0)")
                XCTAssertEqual(ChainError.lifting($0) as? ChainError, .chainChanged(store.location))
            }
            XCTAssertThrowsError(try store.commitManifest(bytes(200, seed: 2), expected: bytes(300, seed: 9))) {
                XCTAssertEqual(($0 as? StoreError)?.kind, .changed, "\($0)")
            }
            XCTAssertEqual(try store.readSmall(name, limit: 1 << 20), bytes(300, seed: 1), "a refused commit changes nothing")
            try store.commitManifest(bytes(200, seed: 2), expected: bytes(300, seed: 1))
            XCTAssertEqual(try store.readSmall(name, limit: 1 << 20), bytes(200, seed: 2))
            XCTAssertThrowsError(try store.readSmall(name, limit: 100), "a small object beyond its limit is refused") {
                XCTAssertEqual(($0 as? StoreError)?.kind, .tooLarge, "\($0)")
            }
            XCTAssertEqual(try store.list(), [name], "no temporary object is left")
        }
    }

    func testRemovedObjectsStayReadableToReadersThatOpenedThem() throws {
        try eachStore { store, another, kind in
            try store.makeContainer()
            let content = bytes(1 << 20, seed: 5)
            try put(store, "p000001.strata", content)
            let reader = try store.open("p000001.strata")
            try store.remove("p000001.strata")
            XCTAssertThrowsError(try store.open("p000001.strata")) { XCTAssertEqual(($0 as? StoreError)?.kind, .missing, "\($0)") }
            var back = [UInt8](repeating: 0, count: content.count)
            let n = try back.withUnsafeMutableBytes { try reader.read(into: $0.baseAddress!, count: $0.count, at: 0) }
            XCTAssertEqual(n, content.count)
            XCTAssertEqual(back, content)
            XCTAssertThrowsError(try store.remove("p000001.strata")) { XCTAssertEqual(($0 as? StoreError)?.kind, .missing, "\($0)") }
        }
    }

    func testOneWriterAtATime() throws {
        try eachStore { store, another, kind in
            try store.makeContainer()
            var first = try store.lockWriter()
            XCTAssertNotNil(first)
            // Another process: the lock is per open, so a second store on the same location stands for it.
            let other = try another()
            XCTAssertNil(try other.lockWriter(), "a second writer is refused at once")
            first = nil
            XCTAssertNotNil(try other.lockWriter(), "released with its lease")
            if store is LocalDirectoryStore { XCTAssertNotNil(store.freeSpace()) }
        }
    }

    /// S3 allows 10,000 parts an upload: an object expected larger than 10,000 parts of 16 MiB (160 GiB) gets larger
    /// parts, and fewer of them in flight; one larger than its expected size still uploads (parts of 18 MiB here).
    func testPartsGrowWithTheExpectedSize() throws {
        guard let bucket = Self.bucket else { throw XCTSkip("no gateway: \(Self.rgwFailure.map { "\($0)" } ?? "")") }
        let store = try S3ChainStore(location: "s3://\(bucket)/parts", options: StoreOptions())
        for (size, part, inFlight) in [(0, 16, 3), (UInt64(1) << 30, 16, 3), (UInt64(160) << 30, 18, 2), (UInt64(4) << 40, 442, 1), (UInt64(100) << 40, 5120, 1)] as [(UInt64, Int, Int)] {
            let object = try XCTUnwrap(try store.create("x", expectedSize: size) as? S3NewObject)
            XCTAssertEqual(object.partSize, part << 20, "expected \(size)")
            XCTAssertEqual(object.uploadsInFlight, inFlight, "expected \(size)")
            if size < UInt64(5) << 40 { XCTAssertGreaterThanOrEqual(UInt64(object.partSize) * 9_999 + UInt64(S3NewObject.firstPart), size) }
            object.abandon()
        }
        let content = bytes(40 << 20, seed: 9)
        let object = try store.create("grown", expectedSize: UInt64(160) << 30)
        try content.withUnsafeBytes { try object.write($0.baseAddress!, count: $0.count, at: 0) }
        try object.publish()
        XCTAssertEqual(try get(store, "grown"), content)
    }

    /// Reads the store schedules itself, several in flight, of two objects; direct where the store can (the
    /// range then lies `lead` bytes into the buffer); an object removed meanwhile still reads, and one that a
    /// read names past its end delivers what there is.
    func testReadsInFlightAreScheduledByTheStore() throws {
        try eachStore { store, another, kind in
            try store.makeContainer()
            let content = bytes(300_000, seed: 11), other = bytes(70_000, seed: 12)
            try put(store, "p000001.strata", content)
            try put(store, "p000002.strata", other)
            let a = try store.open("p000001.strata"), b = try store.open("p000002.strata")
            try store.remove("p000002.strata")
            let (reads, _) = try store.reads(engine: .auto, depth: 4, tags: 3)
            let room = (1 << 18) + 2 * StoredObjects.directAlignment
            let slab = AlignedSlab(slotSize: room, slotCount: 3)
            var lead: [Int: Int] = [:]
            lead[0] = reads.start(a, into: slab.slot(0), count: 1 << 18, at: 0, tag: 0, direct: false)
            lead[1] = reads.start(a, into: slab.slot(1), count: 1 << 18, at: 1 << 18, tag: 1, direct: false)
            lead[2] = reads.start(b, into: slab.slot(2), count: 50_000, at: 1_000, tag: 2, direct: true)
            XCTAssertEqual(reads.inFlight, 3)
            var got: [Int: Int] = [:]
            for _ in 0..<3 {
                let done = try reads.nextOrThrow()
                got[done.tag] = done.bytes - (lead[done.tag] ?? 0)
            }
            XCTAssertEqual(reads.inFlight, 0)
            XCTAssertEqual(got[0], 1 << 18)
            XCTAssertEqual(got[1], 300_000 - (1 << 18), "a read past the end delivers what there is")
            XCTAssertGreaterThanOrEqual(got[2]!, 50_000)
            XCTAssertEqual(Array(UnsafeRawBufferPointer(start: slab.slot(1), count: 300_000 - (1 << 18))), Array(content[(1 << 18)...]))
            let l = lead[2] ?? 0
            XCTAssertEqual(Array(UnsafeRawBufferPointer(start: slab.slot(2) + l, count: 50_000)), Array(other[1_000..<51_000]), "\(kind.name): lead \(l)")
        }
    }

    /// A store's reads, dropped, leave no thread behind (a pool's threads once held their pool, for good).
    func testDroppedReadsLeaveNoThreads() throws {
        func threads() -> Int { ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []).count }
        try eachStore { store, another, kind in
            try store.makeContainer()
            try put(store, "p000001.strata", bytes(20_000, seed: 14))
            let object = try store.open("p000001.strata")
            let before = threads()
            do {
                let (reads, _) = try store.reads(engine: .pread, depth: 8, tags: 1)
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: 20_000, alignment: 4096)
                defer { buffer.deallocate() }
                reads.start(object, into: buffer, count: 20_000, at: 0, tag: 0, direct: false)
                XCTAssertEqual(try reads.nextOrThrow().bytes, 20_000)
                XCTAssertGreaterThan(threads(), before, "\(kind.name): the reads run on threads of their own")
            }
            for _ in 0..<500 where threads() > before { usleep(10_000) }  // a bounded wait for them to end
            XCTAssertEqual(threads(), before, "\(kind.name): every thread of the dropped reads ended")
        }
    }

    /// A read of an object that is gone from the store comes back as the store's `.missing`, never as an errno.
    func testAFailedReadComesBackInStoreTerms() throws {
        try eachStore { store, another, kind in
            try store.makeContainer()
            try put(store, "p000001.strata", bytes(10_000, seed: 13))
            XCTAssertThrowsError(try store.open("p000009.strata")) { XCTAssertEqual(($0 as? StoreError)?.kind, .missing, "\($0)") }
            XCTAssertThrowsError(try store.remove("p000009.strata")) { XCTAssertEqual(($0 as? StoreError)?.kind, .missing, "\($0)") }
            XCTAssertEqual(ChainError.lifting(StoreError.missing("open", "x")) as? ChainError, .damaged(file: "x", detail: ChainError.missingDetail))
        }
    }
}

/// What is particular to the local directory: modes on disk, whatever the umask.
final class LocalDirectoryStoreTests: XCTestCase {
    func testFilesArePrivate() throws {
        let dir = try scratchDirectory("local-store")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = LocalDirectoryStore(path: "\(dir)/c")
        let old = umask(0)
        defer { umask(old) }
        try store.makeContainer()
        let object = try store.create("p000001.strata")
        try [UInt8(1), 2, 3].withUnsafeBytes { try object.write($0.baseAddress!, count: 3, at: 0) }
        try object.publish()
        try store.commitManifest([4, 5], expected: nil)
        var st = stat()
        XCTAssertEqual(stat("\(dir)/c", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o700)
        for name in ["p000001.strata", "chain.manifest"] {
            XCTAssertEqual(stat("\(dir)/c/\(name)", &st), 0)
            XCTAssertEqual(st.st_mode & 0o777, 0o600, name)
        }
    }
}
