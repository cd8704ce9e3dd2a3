// Chains in a bucket under faults, through the strata binary against a real store (Ceph's RADOS
// Gateway, started for this suite): writers killed at random moments (capture mid-upload, merge, sync), two
// captures at once, and the gateway killed mid-capture and started again. After each, every point the chain
// names restores bit for bit and verify passes; the next writer removes what the dead one left.
import Foundation
import StrataS3
import TestSupport
import XCTest

/// A disk image's bytes, changed night by night with incompressible data (so that images are many upload parts).
struct RandomDisk {
    var bytes: [UInt8]
    private var state: UInt64

    init(size: Int, seed: UInt64, random: Int) {
        bytes = [UInt8](repeating: 0, count: size)
        state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        for i in stride(from: random, to: size / 2, by: 512) { bytes[i] = UInt8(truncatingIfNeeded: i >> 9) }  // a little structure
        change(at: 0, count: random)
    }

    /// Overwrites `count` bytes at `at` with random bytes.
    mutating func change(at: Int, count: Int) {
        bytes.withUnsafeMutableBytes { raw in
            var i = at
            while i < min(at + count, raw.count) {
                state &+= 0x9E37_79B9_7F4A_7C15
                var z = state
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                z ^= z >> 31
                if i + 8 <= raw.count {
                    raw.storeBytes(of: z, toByteOffset: i, as: UInt64.self)
                } else {
                    for k in i..<raw.count { raw[k] = UInt8(truncatingIfNeeded: z >> (8 * (k - i))) }
                }
                i += 8
            }
        }
    }

    func write(to path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }
}

final class S3FaultTests: GatewayTestCase {
    /// The points a chain names (none when it is not a chain).
    func points(_ chain: String) throws -> [Int] {
        let r = try s3strata("list", chain, "--json")
        guard r.status == 0 else { return [] }
        return r.stdout.components(separatedBy: "\"point\":").dropFirst().compactMap { Int($0.prefix { $0.isNumber }) }
    }

    /// Every point of `chain` restores to the bytes it was captured from, and verify passes.
    func assertWhole(_ chain: String, _ states: [Int: [UInt8]], _ context: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let ps = try points(chain)
        XCTAssertFalse(ps.isEmpty, "\(context): \(chain) lists no point", file: file, line: line)
        for p in ps {
            let out = "\(dir)/out.img"
            try? FileManager.default.removeItem(atPath: out)
            let r = try s3strata("restore", chain, out, "--point", "\(p)", "--quiet")
            XCTAssertEqual(r.status, 0, "\(context): point \(p): \(r.stderr)", file: file, line: line)
            XCTAssertTrue(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(states[p] ?? []), "\(context): point \(p) differs", file: file, line: line)
        }
        let v = try s3strata("verify", chain, "--quiet")
        XCTAssertEqual(v.status, 0, "\(context): \(v.stdout) \(v.stderr)", file: file, line: line)
    }

    /// What the bucket holds under `prefix` beside the objects the manifest names and those removed and waiting
    /// out their grace period: what a dead writer left and nobody removed.
    func strays(_ prefix: String) throws -> [String] {
        let s = try S3ClientProbe(rgw)
        let manifest = try s.text(bucket, "\(prefix)/chain.manifest")
        var named = Set(["chain.manifest", ".strata-removed"])
        for line in manifest.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.first == "image" { named.insert(String(f.last!)) }
            if f.first == "hash-map" || f.first == "key" { named.insert(String(f[1])) }
        }
        let removed = (try? s.text(bucket, "\(prefix)/.strata-removed")) ?? ""
        for line in removed.split(separator: "\n") { named.insert(String(line.split(separator: " ")[1])) }
        return try s.keys(bucket, "\(prefix)/").map { String($0.dropFirst(prefix.count + 1)) }.filter { !named.contains($0) }
    }

    func testKilledWritersLeaveTheChainAsBeforeOrAfter() throws {
        let chain = "s3://\(bucket)/k", copy = "s3://\(bucket)/copy", disk = "\(dir)/disk.img"
        var model = RandomDisk(size: 40 << 20, seed: 5, random: 28 << 20)
        var states: [Int: [UInt8]] = [:]
        for night in 1...3 {
            if night > 1 { model.change(at: night * (5 << 20), count: 6 << 20) }
            try model.write(to: disk)
            XCTAssertEqual(try s3strata("capture", disk, chain, "--quiet").status, 0)
            states[night] = model.bytes
        }
        var rng = SystemRandomNumberGenerator()
        for round in 0..<9 {
            let next = (try points(chain).max() ?? 0) + 1
            var args: [String]
            switch round % 3 {
            case 0:
                model.change(at: Int.random(in: 0..<(30 << 20), using: &rng), count: 10 << 20)
                try model.write(to: disk)
                states[next] = model.bytes  // if the capture commits, this is its point
                args = ["capture", disk, chain, "--quiet"]
            case 1:
                let ps = try points(chain)
                args = ["merge", chain, "--from", "\(ps[max(0, ps.count - 3)])", "--to", "\(ps.last!)", "--quiet"]
            default:
                args = ["sync", chain, copy, "--quiet"]
            }
            let child = try ChildProcess("/usr/bin/env", s3args(args), quiet: true)
            usleep(UInt32.random(in: 20_000...900_000, using: &rng))
            kill(child.pid, SIGKILL)
            _ = child.finish()
            let what = "round \(round), \(args[0]) killed"
            try assertWhole(chain, states, what)
            if try !points(copy).isEmpty { try assertWhole(copy, states, "the copy, \(what)") }
        }
        // The next writers finish the work and remove what the dead ones left: no unfinished upload, no stray object.
        model.change(at: 0, count: 1 << 20)
        try model.write(to: disk)
        XCTAssertEqual(try s3strata("capture", disk, chain, "--quiet").status, 0)
        states[try points(chain).max()!] = model.bytes
        XCTAssertEqual(try s3strata("sync", chain, copy, "--quiet").status, 0)
        try assertWhole(chain, states, "after the last capture")
        try assertWhole(copy, states, "the copy after the last sync")
        XCTAssertEqual(try points(copy), try points(chain))
        XCTAssertEqual(try S3ClientProbe(rgw).unfinished(bucket), 0)
        XCTAssertEqual(try strays("k"), [])
        XCTAssertEqual(try strays("copy"), [])
    }

    func testTwoCapturesAtOnceOneIsRefused() throws {
        let chain = "s3://\(bucket)/two", disk = "\(dir)/disk.img"
        var model = RandomDisk(size: 40 << 20, seed: 6, random: 8 << 20)
        try model.write(to: disk)
        XCTAssertEqual(try s3strata("capture", disk, chain, "--quiet").status, 0)
        let first = model.bytes
        model.change(at: 8 << 20, count: 30 << 20)
        try model.write(to: disk)
        let a = try ChildProcess("/usr/bin/env", s3args(["capture", disk, chain, "--quiet"]))
        let b = try ChildProcess("/usr/bin/env", s3args(["capture", disk, chain, "--quiet"]))
        let ra = a.finish(), rb = b.finish()
        XCTAssertEqual([ra.status, rb.status].sorted(), [0, 75], "\(ra.stderr) \(rb.stderr)")
        XCTAssertEqual(
            (ra.status == 75 ? ra : rb).stderr,
            "strata: error: chain \(chain) is being changed by another strata process (a capture, merge or prune); wait for it to finish and try again\n")
        XCTAssertEqual(try points(chain), [1, 2])
        try assertWhole(chain, [1: first, 2: model.bytes], "after two captures at once")
    }

    func testTheStoreGoingDownMidCaptureLeavesTheChainAsBefore() throws {
        let chain = "s3://\(bucket)/down", disk = "\(dir)/disk.img"
        var model = RandomDisk(size: 128 << 20, seed: 7, random: 4 << 20)
        try model.write(to: disk)
        XCTAssertEqual(try s3strata("capture", disk, chain, "--quiet").status, 0)
        let probe = try S3ClientProbe(rgw)
        let before = try probe.keys(bucket, "down/")
        let first = model.bytes
        model.change(at: 4 << 20, count: 124 << 20)
        try model.write(to: disk)
        let capture = try ChildProcess("/usr/bin/env", s3args(["capture", disk, chain]))
        // Mid-upload: once the image's multipart upload has begun.
        var polls = 0
        while (try? probe.unfinished(bucket)) ?? 0 == 0 && capture.isRunning && polls < 4000 {
            usleep(2_000)
            polls += 1
        }
        rgw.killGateway()
        let r = capture.finish()
        XCTAssertEqual(r.status, 69, r.stderr)
        XCTAssertTrue(r.stderr.hasPrefix("strata: error: cannot reach the store of \(chain): "), r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").filter { $0.hasPrefix("strata:") }.count, 1, "one line: \(r.stderr)")
        try rgw.restartGateway()
        XCTAssertEqual(try points(chain), [1], "as before")
        XCTAssertEqual(try S3ClientProbe(rgw).keys(bucket, "down/").filter { $0 != "down/.strata-lease" }, before)
        try assertWhole(chain, [1: first], "after the store came back")
        // The failed capture could not delete its lease: its process is gone, so the next capture takes it over.
        let again = try s3strata("capture", disk, chain, "--quiet")
        XCTAssertEqual(again.status, 0, again.stderr)
        try assertWhole(chain, [1: first, 2: model.bytes], "after the next capture")
        XCTAssertEqual(try S3ClientProbe(rgw).unfinished(bucket), 0, "the dead capture's upload was aborted")
        XCTAssertEqual(try strays("down"), [])
    }
}

/// A store that ignores conditional writes (Tests/Fixtures/unconditional-s3.py: the one behaviour Ceph's gateway
/// cannot show): writers are refused with a clear line unless --allow-unconditional-writes; readers work.
final class UnconditionalStoreTests: XCTestCase {
    func testWritersAreRefusedUnlessTheRiskIsAccepted() throws {
        let dir = try scratchDirectory("strata-unconditional")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Fixtures/unconditional-s3.py").standardized.path
        let server = try ChildProcess("/usr/bin/python3", [fixture, "\(dir)/port"], quiet: true)
        defer {
            kill(server.pid, SIGKILL)
            _ = server.finish()
        }
        var port = ""
        for _ in 0..<500 where port.isEmpty {
            port = (try? String(contentsOfFile: "\(dir)/port", encoding: .utf8)) ?? ""
            if port.isEmpty { usleep(10_000) }
        }
        XCTAssertFalse(port.isEmpty, "the fixture store did not start")
        let env = ["AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=b", "AWS_ENDPOINT_URL=http://127.0.0.1:\(port)", "AWS_REGION=us-east-1"]
        func s3strata(_ args: String...) throws -> Run { Run(try ChildProcess("/usr/bin/env", env + [strataBinary] + args).finish()) }
        let chain = "s3://bkt/c", disk = "\(dir)/disk.img"
        try makeDisk(disk, size: 2 << 20, seed: 8)

        let refused = try s3strata("capture", disk, chain)
        XCTAssertEqual(refused.status, 77)
        XCTAssertEqual(refused.stderr, "strata: error: the store of \(chain) refused: it does not honour conditional writes (If-None-Match, If-Match), which keep two writers from both committing; nothing was done: use a store that does, or pass --allow-unconditional-writes if only one writer at a time ever writes this chain\n")
        XCTAssertEqual(try s3strata("list", chain).status, 65, "nothing was written: no chain")

        XCTAssertEqual(try s3strata("capture", disk, chain, "--allow-unconditional-writes", "--quiet").status, 0)
        let restored = try s3strata("restore", chain, "\(dir)/out.img", "--quiet")
        XCTAssertEqual(restored.status, 0, "reading needs no condition: \(restored.stderr)")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out.img")), try Data(contentsOf: URL(fileURLWithPath: disk)))
        XCTAssertEqual(try s3strata("verify", chain, "--quiet").status, 0)
        XCTAssertEqual(try s3strata("capture", disk, chain, "--quiet").status, 77, "each writing run is refused without the flag")
        XCTAssertEqual(try s3strata("capture", disk, chain, "--allow-unconditional-writes", "--quiet").status, 0)
        XCTAssertEqual(try s3strata("prune", chain, "--keep-last", "1", "--quiet").status, 77)
        XCTAssertEqual(try s3strata("prune", chain, "--keep-last", "1", "--allow-unconditional-writes", "--quiet").status, 0)
    }
}
