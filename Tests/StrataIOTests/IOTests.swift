import Foundation
import XCTest

@testable import StrataIO

/// A scratch directory on the real filesystem (O_DIRECT works on ext4, not on tmpfs).
func scratchDirectory() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("strata-io-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

final class IOTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try scratchDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// The pread engine, and io_uring wherever the machine allows it (then it must work: no silent fallback).
    private func engines() throws -> [IOQueue] {
        var q: [IOQueue] = [PreadQueue(threads: 4)]
        if URingQueue.unavailableReason() == nil { q.append(try URingQueue(depth: 8)) }
        return q
    }

    /// Reads a file whose size is not a multiple of the request size through each engine: the last read is
    /// short (end of file) and every byte arrives.
    func testReadsWholeFileThroughEachEngine() throws {
        let path = "\(dir)/data"
        let bytes = (0..<(3 * 65536 + 1000)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        for queue in try engines() {
            let source = try BlockSource(path: path)
            XCTAssertEqual(source.size, UInt64(bytes.count))
            let slab = AlignedSlab(slotSize: 65536, slotCount: 4)
            let pump = IOPump(queue: queue, maxTags: 4)
            for i in 0..<4 { pump.read(fd: source.fd, path: path, into: slab.slot(i), length: 65536, at: UInt64(i * 65536), tag: i) }
            var got = [Int: Int]()
            while pump.inFlight > 0 {
                let (tag, n) = try pump.next()
                got[tag] = n
            }
            XCTAssertEqual(got, [0: 65536, 1: 65536, 2: 65536, 3: 1000], queue.engineName)
            let back = UnsafeRawBufferPointer(start: slab.base, count: bytes.count)
            XCTAssertEqual(Array(back), bytes, queue.engineName)
        }
    }

    func testReadErrorIsThrownWithPath() throws {
        for queue in try engines() {
            let pump = IOPump(queue: queue, maxTags: 1)
            let slab = AlignedSlab(slotSize: 4096, slotCount: 1)
            let fd = try Sys.open(dir, O_RDONLY | O_DIRECTORY)
            defer { Sys.close(fd) }
            pump.read(fd: fd, path: dir, into: slab.slot(0), length: 4096, at: 0, tag: 0)
            XCTAssertThrowsError(try pump.next()) {
                XCTAssertEqual(($0 as? IOError)?.errno, EISDIR, queue.engineName)
                XCTAssertEqual(($0 as? IOError)?.path, self.dir)
            }
        }
    }

    func testSparseFileDataRanges() throws {
        let path = "\(dir)/sparse"
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let fd = try Sys.open(path, O_WRONLY)
        try Sys.ftruncate(fd, 64 << 20, path: path)
        let one = [UInt8](repeating: 1, count: 4096)
        try one.withUnsafeBytes { try Sys.pwriteAll(fd, $0.baseAddress!, 4096, 10 << 20, path: path) }
        try Sys.fsync(fd, path: path)
        Sys.close(fd)
        let ranges = try BlockSource(path: path).dataRanges(granule: 1 << 20)
        XCTAssertEqual(ranges, [UInt64(10 << 20)..<UInt64(11 << 20)])
    }

    func testMissingSourceThrowsENOENT() {
        XCTAssertThrowsError(try BlockSource(path: "\(dir)/nope")) { XCTAssertEqual(($0 as? IOError)?.errno, ENOENT) }
    }

    func testDirectoryLockIsExclusive() throws {
        let first = try DirectoryLock(directory: dir)
        XCTAssertNotNil(first)
        // flock locks belong to the open file description: a second open in this process conflicts as another
        // process would.
        XCTAssertNil(try DirectoryLock(directory: dir))
        _ = first
    }

    func testPublishReplacesAtomically() throws {
        try DurableFiles.publish(Array("one".utf8), dir: dir, name: "f")
        try DurableFiles.publish(Array("two".utf8), dir: dir, name: "f")
        XCTAssertEqual(try DurableFiles.readAll("\(dir)/f", limit: 100), Array("two".utf8))
        XCTAssertEqual(try Sys.listDirectory(dir).sorted(), ["f"])
    }

    /// The writer merge uses: a region left by `skip` for other threads' buffered writes (ending off a page
    /// boundary), then records of odd sizes across several buffers, through each engine. Every byte lands where
    /// it belongs, whichever finishes first.
    func testAppendWriterAfterASkippedRegion() throws {
        for engine in URingQueue.unavailableReason() == nil ? [IOEngineChoice.uring, .pread] : [.pread] {
            let path = "\(dir)/append-\(engine)"
            let fd = try Sys.open(path, O_RDWR | O_CREAT | O_TRUNC)
            defer { Sys.close(fd) }
            let start: UInt64 = 4096, skipped = 3 * 4096 + 123
            var expected = [UInt8](repeating: 0, count: Int(start) + skipped)
            for i in 0..<skipped { expected[Int(start) + i] = UInt8(truncatingIfNeeded: i &* 13 &+ 5) }
            let writer = try AppendWriter(path: path, fd: fd, start: start, engine: engine, bufferSize: 64 << 10, depth: 2)
            try writer.skip(UInt64(skipped))
            for n in [1, 4095, 70_000, 65_536, 200_001, 3] {
                let record = (0..<n).map { UInt8(truncatingIfNeeded: ($0 &+ n) &* 31) }
                try record.withUnsafeBytes { try writer.append($0.baseAddress!, count: n) }
                expected += record
            }
            // The skipped region is filled last, as a slow worker would.
            try expected[Int(start)...].withUnsafeBytes { try Sys.pwriteAll(fd, $0.baseAddress!, skipped, start, path: path) }
            try writer.finish()
            XCTAssertEqual(writer.offset, UInt64(expected.count))
            XCTAssertEqual(try DurableFiles.readAll(path, limit: 1 << 30), expected, "\(engine)")
        }
    }
}

final class DeviceUsageTests: XCTestCase {
    func testProcTablesAreDecoded() {
        XCTAssertEqual(BlockDevices.unescape("/mnt/my\\040disk\\011x"), "/mnt/my disk\tx")
        XCTAssertEqual(BlockDevices.unescape("/plain\\04"), "/plain\\04", "a truncated escape stays as it is")
        let loop0p1 = BlockDevices.parseNumbers("259:0\n")
        XCTAssertEqual(loop0p1.map(BlockDevices.major), 259)
        XCTAssertEqual(loop0p1.map(BlockDevices.minor), 0)
        let big = BlockDevices.parseNumbers("4095:1048575")
        XCTAssertEqual(big.map(BlockDevices.major), 4095)
        XCTAssertEqual(big.map(BlockDevices.minor), 1_048_575)
        XCTAssertNil(BlockDevices.parseNumbers(""))
        XCTAssertNil(BlockDevices.parseNumbers("8"))
    }

    func testParentsAndInsideness() throws {
        XCTAssertEqual(BlockDevices.parent(of: "/a/b/c"), "/a/b")
        XCTAssertEqual(BlockDevices.parent(of: "/a/b/"), "/a")
        XCTAssertEqual(BlockDevices.parent(of: "/a"), "/")
        XCTAssertEqual(BlockDevices.parent(of: "a"), ".")
        let dir = NSTemporaryDirectory() + "strata-inside-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: "\(dir)/chain/sub", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/chain/file", contents: Data([1])))
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(dir)/other", contents: Data([1])))
        let chain = FileIdentity(path: "\(dir)/chain")!
        for inside in ["\(dir)/chain", "\(dir)/chain/", "\(dir)/chain/file", "\(dir)/chain/sub/new/deeper", "\(dir)/chain/sub/../file"] {
            XCTAssertTrue(BlockDevices.isInside(inside, directory: chain, directoryPath: "\(dir)/chain"), inside)
        }
        for outside in [dir, "\(dir)/other", "\(dir)/new", "/", "\(dir)/chain/../other"] {
            XCTAssertFalse(BlockDevices.isInside(outside, directory: chain, directoryPath: "\(dir)/chain"), outside)
        }
    }
}

/// A queue outlives the buffers registered on it: once a region is unregistered (as its owner does before
/// freeing it), a new buffer at the same address is read into itself, not into the old region's pinned pages.
final class RegisteredBufferTests: XCTestCase {
    /// A buffer registered with io_uring, unregistered and unmapped, then a new mapping at the very same address
    /// (the case that broke: glibc often hands the freed place out again): a read into the new mapping lands in
    /// it, not in the pages the old registration pinned.
    func testAQueueReusedAfterItsRegisteredBufferIsFreedReadsIntoTheNewBuffer() throws {
        if let reason = URingQueue.unavailableReason() { throw XCTSkip(reason) }
        let dir = NSTemporaryDirectory() + "strata-registered-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let length = 1 << 20
        let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try Data(bytes).write(to: URL(fileURLWithPath: "\(dir)/f"))
        let fd = try Sys.open("\(dir)/f", O_RDONLY)
        defer { Sys.close(fd) }
        let queue = try URingQueue(depth: 4)
        let pump = IOPump(queue: queue, maxTags: 1)
        let mapNoReplace: Int32 = 0x100000  // MAP_FIXED_NOREPLACE (Linux 4.17)
        guard let first = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), first != MAP_FAILED else {
            return XCTFail("mmap failed")
        }
        var base = first
        for round in 0..<4 {
            queue.register(base: base, length: length)
            pump.read(fd: fd, path: "f", into: base, length: length, at: 0, tag: 0)
            XCTAssertEqual(try pump.next().bytes, length)
            XCTAssertEqual(Array(UnsafeRawBufferPointer(start: base, count: length)), bytes, "round \(round)")
            queue.unregister(base: base)
            XCTAssertEqual(munmap(base, length), 0)
            let again = mmap(base, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | mapNoReplace, -1, 0)
            XCTAssertEqual(again, base, "round \(round): the new mapping sits where the freed one did")
            guard let again, again != MAP_FAILED else { return }
            base = again
            XCTAssertEqual(UnsafeRawBufferPointer(start: base, count: length).allSatisfy { $0 == 0 }, true, "a fresh mapping")
            pump.read(fd: fd, path: "f", into: base, length: length, at: 0, tag: 0)
            XCTAssertEqual(try pump.next().bytes, length)
            XCTAssertEqual(Array(UnsafeRawBufferPointer(start: base, count: length)), bytes, "round \(round): read into the new mapping")
        }
        munmap(base, length)
    }
}

/// The pread engine's threads end with their queue (they once held it, and every queue and its threads lived
/// for the rest of the process).
final class ThreadPoolTests: XCTestCase {
    static func threadCount() -> Int { ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []).count }

    func testADroppedQueueStopsItsThreads() throws {
        let dir = NSTemporaryDirectory() + "strata-pool-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(repeating: 7, count: 8192).write(to: URL(fileURLWithPath: "\(dir)/f"))
        let fd = try Sys.open("\(dir)/f", O_RDONLY)
        defer { Sys.close(fd) }
        let before = Self.threadCount()
        do {
            let queue = PreadQueue(threads: 8)
            let pump = IOPump(queue: queue, maxTags: 1)
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
            defer { buffer.deallocate() }
            pump.read(fd: fd, path: "f", into: buffer, length: 8192, at: 0, tag: 0)
            XCTAssertEqual(try pump.next().bytes, 8192)
            XCTAssertGreaterThanOrEqual(Self.threadCount(), before + 8, "the pool's threads run")
        }
        // Bounded wait for the threads to see the stop (not a measure of speed).
        for _ in 0..<500 where Self.threadCount() > before { usleep(10_000) }
        XCTAssertEqual(Self.threadCount(), before, "every thread of the dropped queue ended")
    }
}

/// A group's join returns only once its threads hold nothing of what their bodies captured: a capture's chain
/// (and its writer's lock) is let go before the capture returns, so that the same process can capture again at
/// once (`strata bench` does; it once found its own chain "in use by another process", now and then).
final class ThreadGroupTests: XCTestCase {
    private final class Held: @unchecked Sendable {}

    func testJoinReturnsOnlyOnceTheBodiesAreLetGo() {
        var kept = 0
        for _ in 0..<300 {
            weak var watched: Held?
            let group = ThreadGroup()
            do {
                let held = Held()
                watched = held
                for t in 0..<2 { group.spawn("strata-test-\(t)") { _ = held } }
            }
            group.join()
            if watched != nil { kept += 1 }
        }
        XCTAssertEqual(kept, 0, "runs whose threads still held what their bodies captured after join")
    }
}

final class SocketTests: XCTestCase {
    /// A reply's header and its data written as one gather of parts arrive whole and in order: parts larger than
    /// the socket's buffer (the rest is written as the reader drains it, resuming inside a part), empty parts, and
    /// more parts than one sendmsg takes.
    func testAHeaderAndItsPartsArriveWholeAndInOrder() throws {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
        let writer = Connection(fd: fds[0]), reader = Connection(fd: fds[1])
        let head: [UInt8] = Array("HEADER:".utf8)
        let data = (0..<(3 << 20) + 123).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 12) }
        // A 2 MiB part, 1500 small ones of 0-99 bytes (some empty), and the rest in one.
        var cuts = [0, 2 << 20]
        for i in 0..<1500 { cuts.append(cuts.last! + (i * 37) % 100) }
        cuts.append(data.count)
        var sent = false
        let t = Thread {
            sent = data.withUnsafeBytes { d in
                writer.write(head, then: (1..<cuts.count).map { UnsafeRawBufferPointer(rebasing: d[cuts[$0 - 1]..<cuts[$0]]) })
            }
        }
        t.start()
        let got = reader.read(head.count + data.count)
        while t.isExecuting || !t.isFinished { usleep(1000) }
        XCTAssertTrue(sent)
        XCTAssertGreaterThan(cuts.count - 1, Connection.maxParts, "more parts than one message takes")
        XCTAssertEqual(got.map { Array($0.prefix(head.count)) }, head)
        XCTAssertTrue(got.map { $0.dropFirst(head.count).elementsEqual(data) } ?? false, "the data, after the header")
    }
}
