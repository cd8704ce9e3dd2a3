// `restore --delta`: onto a target that holds some state (another night, nothing, random bytes, a longer or a
// shorter file), the result is exactly the point, and exactly the blocks that differ are written, counted from
// the two states themselves. Plain, encrypted and seekable chains; small windows and slots (extents split across
// windows, frames leaving their slots); a loop device (zeros by BLKZEROOUT); blocks smaller than a direct write.
import Foundation
import StrataCodec
import StrataFormat
import StrataIO
import XCTest

@testable import StrataChain

#if canImport(Glibc)
import Glibc
#endif

final class DeltaRestoreTests: XCTestCase {
    var dir: String!
    let key = UserSecret.keyFile(KeyWrapping.random(32))
    static let size = 3 << 20 + 40960

    override func setUp() { dir = try! scratchDirectory("delta") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A chain of six nights (every kind of night the model makes, and a large overwrite), with the state of each.
    func nights(seed: UInt64, blockSize: UInt32 = 4096, configure: (inout CaptureOptions) -> Void = { _ in }) throws -> (String, [UInt32: [UInt8]]) {
        let chain = "\(dir!)/chain-\(seed)", source = "\(dir!)/source-\(seed).img"
        let n = Nights(chain: chain, source: source, seed: seed, size: Self.size, random: 1 << 20)
        for night in 0..<6 {
            if night > 0 { n.disk.night(night, rng: &n.rng) }
            if night == 5 { n.overwrite(at: Self.size / 3, count: 700_000) }
            try n.disk.writeSparse(to: source)
            var o = CaptureOptions()
            o.blockSize = blockSize
            o.threads = 2
            configure(&o)
            n.states[try Capture.run(source: source, chain: chain, options: o).point] = n.disk.bytes
        }
        return (chain, n.states)
    }

    /// Blocks of `blockSize` in which `a` and `b` differ (the shorter read as zeros to the other's length).
    func differing(_ a: [UInt8], _ b: [UInt8], blockSize: Int = 4096) -> UInt64 {
        let n = max(a.count, b.count)
        var count: UInt64 = 0
        var at = 0
        while at < n {
            let end = min(at + blockSize, n)
            for i in at..<end where (i < a.count ? a[i] : 0) != (i < b.count ? b[i] : 0) {
                count += 1
                break
            }
            at = end
        }
        return count
    }

    func deltaOptions(_ point: UInt32, configure: (inout RestoreOptions) -> Void = { _ in }) -> RestoreOptions {
        var o = RestoreOptions.overwriting
        o.point = point
        o.delta = true
        o.threads = 2
        configure(&o)
        return o
    }

    /// Puts `state` in the target file (nil: no file), restores `point` with --delta, and checks the result and
    /// what was written.
    func check(
        _ chain: String, point: UInt32, over state: [UInt8]?, expected: [UInt8], blockSize: Int = 4096, what: String,
        configure: (inout RestoreOptions) -> Void = { _ in }, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let target = "\(dir!)/target.img"
        unlink(target)
        if let state { try Data(state).write(to: URL(fileURLWithPath: target)) }
        let r = try Restore.run(chain: chain, target: target, options: deltaOptions(point, configure: configure))
        XCTAssertTrue(try readFile(target) == expected, "\(what): the target is not point \(point)", file: file, line: line)
        let differ = differing(Array((state ?? []).prefix(expected.count)), expected, blockSize: blockSize)
        XCTAssertEqual(r.blocksDiffering, differ, "\(what): blocks differing", file: file, line: line)
        XCTAssertEqual(r.bytesWritten, differ * UInt64(blockSize), "\(what): bytes written", file: file, line: line)
        XCTAssertEqual(r.bytesCompared, UInt64(expected.count), "\(what): bytes compared", file: file, line: line)
    }

    func testEveryPairOfNightsGivesThePointAndWritesWhatDiffers() throws {
        let (chain, states) = try nights(seed: 3801)
        var rng = SeededGenerator(seed: 3802)
        let noise = (0..<Self.size).map { _ in UInt8.random(in: 0...255, using: &rng) }
        for tuning in [Tuning(), MergeTests.small] {
            for p in states.keys.sorted() {
                for q in states.keys.sorted() {
                    try check(chain, point: p, over: states[q]!, expected: states[p]!, what: "point \(p) over \(q)") { $0.tuning = tuning }
                }
                try check(chain, point: p, over: nil, expected: states[p]!, what: "point \(p) onto no file") { $0.tuning = tuning }
                try check(chain, point: p, over: noise, expected: states[p]!, what: "point \(p) over random bytes") { $0.tuning = tuning }
            }
        }
        // A target longer than the point is cut to its size; a shorter one is compared as zeros beyond its end.
        try check(chain, point: 3, over: states[4]! + [UInt8](repeating: 7, count: 90_000), expected: states[3]!, what: "a longer file")
        try check(chain, point: 3, over: Array(states[4]!.prefix(Self.size / 2 + 1000)), expected: states[3]!, what: "a shorter file")
    }

    func testEncryptedAndSeekableChains() throws {
        let (encrypted, states) = try nights(seed: 3803) {
            $0.encrypt = true
            $0.secret = key
        }
        for (p, q) in [(UInt32(6), UInt32(2)), (2, 6), (4, 4), (1, 5)] {
            try check(encrypted, point: p, over: states[q]!, expected: states[p]!, what: "encrypted: \(p) over \(q)") { $0.secret = key }
        }
        var o = deltaOptions(2)
        o.secret = nil
        XCTAssertThrowsError(try Restore.run(chain: encrypted, target: "\(dir!)/none.img", options: o))  // no key: nothing compared
        let (seekable, seekStates) = try nights(seed: 3804) { $0.seekable = true }
        for (p, q) in [(UInt32(6), UInt32(1)), (1, 6), (3, 5)] {
            try check(seekable, point: p, over: seekStates[q]!, expected: seekStates[p]!, what: "seekable: \(p) over \(q)") { $0.tuning = MergeTests.small }
        }
    }

    /// 512-byte blocks on a target that takes direct writes of 4096: a differing block is written with the seven
    /// others of its unit (all the point's), so counts are of units.
    func testBlocksSmallerThanADirectWrite() throws {
        let (chain, states) = try nights(seed: 3805, blockSize: 512)
        for (p, q) in [(UInt32(6), UInt32(1)), (2, 5), (5, 5)] {
            let target = "\(dir!)/target.img"
            try Data(states[q]!).write(to: URL(fileURLWithPath: target))
            let r = try Restore.run(chain: chain, target: target, options: deltaOptions(p))
            XCTAssertTrue(try readFile(target) == states[p]!, "512-byte blocks: \(p) over \(q)")
            XCTAssertEqual(r.blocksDiffering, differing(states[q]!, states[p]!, blockSize: 512))
            XCTAssertEqual(r.bytesWritten, differing(states[q]!, states[p]!, blockSize: 4096) * 4096)
        }
    }

    func testOntoALoopDeviceWithVerify() throws {
        if let reason = LoopDevice.unavailableReason() { throw XCTSkip(reason) }
        let (chain, states) = try nights(seed: 3806)
        let loop = try LoopDevice(size: Self.size + (1 << 20), in: dir)
        try states[2]!.withUnsafeBytes { b in
            let fd = open(loop.path, O_WRONLY)
            defer { close(fd) }
            XCTAssertEqual(pwrite(fd, b.baseAddress!, b.count, 0), b.count)
            fsync(fd)
        }
        for (p, was) in [(UInt32(6), UInt32(2)), (1, 6), (1, 1)] {
            let r = try Restore.run(chain: chain, target: loop.path, options: deltaOptions(p) { $0.verify = true })
            XCTAssertTrue(r.verified)
            XCTAssertTrue(try readFile(loop.path, count: Self.size) == states[p]!, "loop device: \(p) over \(was)")
            let differ = differing(states[was]!, states[p]!)
            XCTAssertEqual(r.blocksDiffering, differ)
            XCTAssertEqual(r.bytesWritten, differ * 4096)
        }
    }

    /// A target in use is refused with --delta as without; an existing file needs --force.
    func testSafetyChecksApply() throws {
        let (chain, states) = try nights(seed: 3807)
        let target = "\(dir!)/kept.img"
        try Data(states[1]!).write(to: URL(fileURLWithPath: target))
        var o = deltaOptions(6)
        o.force = false
        XCTAssertThrowsError(try Restore.run(chain: chain, target: target, options: o)) { error in
            guard case ChainError.targetExists = error else { return XCTFail("\(error)") }
        }
        XCTAssertTrue(try readFile(target) == states[1]!)
        XCTAssertThrowsError(try Restore.run(chain: chain, target: "/dev/null", options: deltaOptions(6))) { error in
            guard case ChainError.targetUnavailable = error else { return XCTFail("\(error)") }
        }
    }
}
