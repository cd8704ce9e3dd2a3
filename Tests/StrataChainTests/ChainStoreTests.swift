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

    /// Every store, by name, made at a location that does not exist yet. A new store adds one line here.
    static var stores: [(kind: String, make: (String) -> ChainStore)] {
        [
            ("local directory", { LocalDirectoryStore(path: $0) }),
            ("S3 (Ceph RGW)", { try! S3ChainStore(location: "s3://\(bucket!)/\(BlockDevices.lastComponent(of: $0))") }),
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
    /// second process would).
    private func eachStore(_ body: (_ store: ChainStore, _ another: () -> ChainStore) throws -> Void) {
        for (i, s) in Self.stores.enumerated() {
            let location = "\(dir)/store-\(i)-\(UUID().uuidString.prefix(6))"
            do { try body(s.make(location), { s.make(location) }) } catch {
                XCTFail("\(s.kind): \(error)")
            }
        }
    }

    override func setUpWithError() throws {
        if let e = Self.rgwFailure { throw e }
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
        eachStore { store, another in
            XCTAssertFalse(store.containerExists())
            try store.makeContainer()
            XCTAssertTrue(store.containerExists())
            XCTAssertEqual(try store.list(), [])
        }
    }

    func testAnObjectIsInvisibleUntilPublishedThenReadsBackAtAnyOffset() throws {
        eachStore { store, another in
            try store.makeContainer()
            let content = bytes(3 << 20 | 12345, seed: 7)
            let object = try store.create("p000001.strata")
            try content.withUnsafeBytes { raw in
                let appender = try object.appender(start: 0, engine: .auto)
                try appender.append(raw.baseAddress!, count: raw.count)
                try appender.finish()
            }
            XCTAssertThrowsError(try store.open("p000001.strata")) { XCTAssertTrue($0.isMissing, "\($0)") }
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
        eachStore { store, another in
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
        eachStore { store, another in
            try store.makeContainer()
            let object = try store.create("p000002.strata")
            try [1, 2, 3].withUnsafeBytes { try object.write($0.baseAddress!, count: 3, at: 0) }
            object.abandon()
            XCTAssertEqual(try store.list(), [])
        }
    }

    func testManifestIsReplacedOnlyIfUnchanged() throws {
        eachStore { store, another in
            try store.makeContainer()
            let name = "chain.manifest"
            XCTAssertThrowsError(try store.readSmall(name, limit: 1 << 20)) { XCTAssertTrue($0.isMissing) }
            try store.commitManifest(bytes(300, seed: 1), expected: nil)
            XCTAssertEqual(try store.readSmall(name, limit: 1 << 20), bytes(300, seed: 1))
            XCTAssertThrowsError(try store.commitManifest(bytes(200, seed: 2), expected: nil)) {
                XCTAssertEqual($0 as? ChainError, .chainChanged(store.location))
            }
            XCTAssertThrowsError(try store.commitManifest(bytes(200, seed: 2), expected: bytes(300, seed: 9))) {
                XCTAssertEqual($0 as? ChainError, .chainChanged(store.location))
            }
            XCTAssertEqual(try store.readSmall(name, limit: 1 << 20), bytes(300, seed: 1), "a refused commit changes nothing")
            try store.commitManifest(bytes(200, seed: 2), expected: bytes(300, seed: 1))
            XCTAssertEqual(try store.readSmall(name, limit: 1 << 20), bytes(200, seed: 2))
            XCTAssertThrowsError(try store.readSmall(name, limit: 100), "a small object beyond its limit is refused")
            XCTAssertEqual(try store.list(), [name], "no temporary object is left")
        }
    }

    func testRemovedObjectsStayReadableToReadersThatOpenedThem() throws {
        eachStore { store, another in
            try store.makeContainer()
            let content = bytes(1 << 20, seed: 5)
            try put(store, "p000001.strata", content)
            let reader = try store.open("p000001.strata")
            try store.remove("p000001.strata")
            XCTAssertThrowsError(try store.open("p000001.strata")) { XCTAssertTrue($0.isMissing) }
            var back = [UInt8](repeating: 0, count: content.count)
            let n = try back.withUnsafeMutableBytes { try reader.read(into: $0.baseAddress!, count: $0.count, at: 0) }
            XCTAssertEqual(n, content.count)
            XCTAssertEqual(back, content)
            XCTAssertThrowsError(try store.remove("p000001.strata")) { XCTAssertTrue($0.isMissing) }
        }
    }

    func testOneWriterAtATime() throws {
        eachStore { store, another in
            try store.makeContainer()
            var first = try store.lockWriter()
            XCTAssertNotNil(first)
            // Another process: the lock is per open, so a second store on the same location stands for it.
            let other = another()
            XCTAssertNil(try other.lockWriter(), "a second writer is refused at once")
            first = nil
            XCTAssertNotNil(try other.lockWriter(), "released with its lease")
            if store is LocalDirectoryStore { XCTAssertNotNil(store.freeSpace()) }
        }
    }

    /// S3 allows 10,000 parts an upload: an object expected larger than 10,000 parts of 16 MiB (160 GiB) gets larger
    /// parts, and fewer of them in flight; one larger than its expected size still uploads (parts of 18 MiB here).
    func testPartsGrowWithTheExpectedSize() throws {
        let store = try S3ChainStore(location: "s3://\(Self.bucket!)/parts")
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

    func testReadQueueReadsObjectsByHandle() throws {
        eachStore { store, another in
            try store.makeContainer()
            let content = bytes(300_000, seed: 11)
            try put(store, "p000001.strata", content)
            let object = try store.open("p000001.strata")
            let (queue, _) = try store.readQueue(engine: .auto, depth: 4)
            let pump = IOPump(queue: queue, maxTags: 2)
            let slab = AlignedSlab(slotSize: 1 << 18, slotCount: 2)
            pump.read(fd: object.handle, path: object.name, into: slab.slot(0), length: 1 << 18, at: 0, tag: 0)
            pump.read(fd: object.handle, path: object.name, into: slab.slot(1), length: 1 << 18, at: 1 << 18, tag: 1)
            var got: [Int: Int] = [:]
            for _ in 0..<2 {
                let done = try pump.next()
                got[done.tag] = done.bytes
            }
            XCTAssertEqual(got, [0: 1 << 18, 1: 300_000 - (1 << 18)])
            XCTAssertEqual(Array(UnsafeRawBufferPointer(start: slab.slot(1), count: 300_000 - (1 << 18))), Array(content[(1 << 18)...]))
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
