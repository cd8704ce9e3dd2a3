// Chains in a bucket, through the strata binary against a real store (Ceph's RADOS Gateway, started
// for this suite): every command on an s3:// chain, every point restored bit for bit after captures, a merge and
// a prune; a chain of used blocks synced, pruned, served and mounted, its free blocks zeros; an encrypted chain in a bucket; a second writer, wrong credentials, an unreachable store, a missing
// bucket and a prefix that holds no chain: one line each, their exit codes, the chain untouched.
import Foundation
import StrataS3
import TestSupport
import XCTest

final class S3CLITests: GatewayTestCase {
    func testEveryCommandOnAChainInABucket() throws {
        let chain = "s3://\(bucket)/host1/sdb", disk = "\(dir)/disk.img"
        var points: [Int: Data] = [:]
        for night in 0..<4 {
            try makeDisk(disk, size: 24 << 20, seed: 9, changes: 300 * night)
            let r = try s3strata("capture", disk, chain, "--json")
            XCTAssertEqual(r.status, 0, r.stderr)
            points[night + 1] = try Data(contentsOf: URL(fileURLWithPath: disk))
        }
        let list = try s3strata("list", chain, "--json")
        XCTAssertEqual(list.status, 0, list.stderr)
        XCTAssertTrue(list.stdout.contains("\"point\":4"), list.stdout)
        for (p, bytes) in points {
            let r = try s3strata("restore", chain, "\(dir)/out-\(p).img", "--point", "\(p)", "--quiet")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out-\(p).img")), bytes, "point \(p)")
        }
        XCTAssertEqual(try s3strata("merge", chain, "--from", "2", "--to", "3", "--quiet").status, 0)
        XCTAssertEqual(try s3strata("prune", chain, "--keep-last", "2", "--quiet").status, 0)
        let v = try s3strata("verify", chain)
        XCTAssertEqual(v.status, 0, v.stderr)
        for p in [3, 4] {
            XCTAssertEqual(try s3strata("restore", chain, "\(dir)/after-\(p).img", "--point", "\(p)", "--quiet").status, 0)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/after-\(p).img")), points[p], "point \(p) after merge and prune")
        }
        // The bucket holds the chain's files, and those merges and prunes replaced until their grace period ends (in
        // .strata-removed); no unfinished upload, no lease left behind.
        let s = try S3ClientProbe(rgw)
        let removed = Set(try s.text(bucket, "host1/sdb/.strata-removed").split(separator: "\n").map { "host1/sdb/" + $0.split(separator: " ")[1] })
        XCTAssertEqual(Set(try s.keys(bucket, "host1/sdb/")).subtracting(removed).sorted(), [
            "host1/sdb/.strata-removed", "host1/sdb/chain.manifest", "host1/sdb/map-p000004.strata", "host1/sdb/p000001-000003.strata", "host1/sdb/p000004.strata",
        ])
        XCTAssertEqual(removed.count, 7, "the replaced images and the old maps, deleted after their grace period")
        XCTAssertEqual(try s.unfinished(bucket), 0)
    }

    /// `serve` reads a bucket's points through the same point reader as a directory's: nbdcopy of each point
    /// gives its bytes (the frames fetched with ranged GETs).
    func testServedPointsOfABucketReadLikeTheirCapture() throws {
        let chain = "s3://\(bucket)/served", disk = "\(dir)/disk.img", socket = "\(dir)/nbd.sock"
        var states: [Int: Data] = [:]
        for night in 0..<3 {
            try makeDisk(disk, size: 16 << 20, seed: 5, changes: 200 * night)
            XCTAssertEqual(try s3strata("capture", disk, chain, "--quiet").status, 0)
            states[night + 1] = try Data(contentsOf: URL(fileURLWithPath: disk))
        }
        let server = try ChildProcess("/usr/bin/env", s3args(["serve", chain, "--socket", socket]), deadline: 300, quiet: true)
        defer {
            kill(server.pid, SIGTERM)
            _ = server.finish()
        }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: socket) { usleep(50_000) }
        for (point, bytes) in states {
            XCTAssertEqual(runTool("/usr/bin/env", ["nbdcopy", "nbd+unix:///\(point)?socket=\(socket)", "\(dir)/copy-\(point).img"]), 0)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/copy-\(point).img")), bytes, "point \(point) served from the bucket")
        }
    }

    func testAnEncryptedChainInABucket() throws {
        let chain = "s3://\(bucket)/secret", disk = "\(dir)/disk.img", key = "\(dir)/k"
        XCTAssertEqual(try strata("keygen", key).status, 0)
        try makeDisk(disk, size: 8 << 20, seed: 3)
        XCTAssertEqual(try s3strata("capture", disk, chain, "--encrypt", "--key-file", key, "--quiet").status, 0)
        XCTAssertEqual(try s3strata("restore", chain, "\(dir)/out.img", "--quiet").status, 67)
        XCTAssertEqual(try s3strata("verify", chain, "--checksums-only").status, 0)
        XCTAssertEqual(try s3strata("restore", chain, "\(dir)/out.img", "--key-file", key, "--quiet").status, 0)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out.img")), try Data(contentsOf: URL(fileURLWithPath: disk)))
    }

    /// A chain of used blocks (an ext4 in a file, made with `mkfs.ext4 -d` over random bytes and changed with
    /// debugfs, so that its free blocks hold stale bytes), synced to a bucket, pruned there, served from it and
    /// mounted: every point reads as its restore from the directory, byte for byte, its free blocks zeros where the
    /// source's were not, and NBD block status calls them zero.
    func testAChainOfUsedBlocksSyncsPrunesServesAndMounts() throws {
        if getuid() != 0 || !FileManager.default.fileExists(atPath: "/dev/fuse") { throw XCTSkip("mounting needs root and /dev/fuse") }
        let disk = "\(dir)/fs.img", local = "\(dir)/chain", chain = "s3://\(bucket)/used", files = "\(dir)/files"
        func sh(_ script: String) throws {
            let r = runProcess("/bin/sh", ["-c", script], deadline: 120)
            guard r.status == 0 else { throw TestFailure("\(script): exit \(r.status): \(r.stdout) \(r.stderr)") }
        }
        func contents(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }
        try sh("mkdir -p \(files) && for i in 1 2 3 4 5 6 7 8; do head -c 1000000 /dev/urandom > \(files)/f$i; done")
        try sh("head -c \(32 << 20) /dev/urandom > \(disk) && mkfs.ext4 -q -F -E nodiscard -b 4096 -d \(files) \(disk)")
        let nights = ["rm /f2; rm /f5", "rm /f3; write \(files)/f1 /n2", "rm /f4; rm /n2; write \(files)/f6 /n3"]
        var sources: [Int: Data] = [:], restores: [Int: Data] = [:]
        for (k, commands) in nights.enumerated() {
            for command in commands.split(separator: ";") { try sh("debugfs -w -R '\(command)' \(disk) > /dev/null 2>&1") }
            let r = try strata(["capture", disk, local, "--quiet"] + (k == 0 ? ["--used-blocks"] : []))
            XCTAssertEqual(r.status, 0, r.stderr)
            sources[k + 1] = try contents(disk)
        }
        // The free blocks of each point, from dumpe2fs of its restore: zeros there, stale bytes in the source.
        var free: [Int: [Range<Int>]] = [:]
        for k in 1...3 {
            let out = "\(dir)/restore-\(k).img"
            XCTAssertEqual(try strata("restore", local, out, "--point", String(k), "--quiet").status, 0)
            restores[k] = try contents(out)
            XCTAssertEqual(runTool("/usr/bin/env", ["e2fsck", "-fn", out]), 0, "point \(k)")
            let ranges = ext4FreeRanges(out)
            free[k] = ranges
            XCTAssertGreaterThan(ranges.reduce(0) { $0 + $1.count }, 8 << 20, "point \(k) is a third free and more")
            XCTAssertTrue(ranges.allSatisfy { restores[k]![$0].allSatisfy { $0 == 0 } }, "point \(k): free blocks are zeros")
            XCTAssertTrue(ranges.contains { !sources[k]![$0].allSatisfy { $0 == 0 } }, "point \(k): the source's free blocks held stale bytes")
        }

        // Synced to the bucket, each point restores from it as from the directory; pruned there, the kept ones still.
        let synced = try s3strata("sync", local, chain, "--quiet")
        XCTAssertEqual(synced.status, 0, synced.stderr)
        let listed = jsonObject(try s3strata("list", chain, "--json").stdout)
        XCTAssertEqual(listed["usedBlocks"] as? Bool, true)
        for k in 1...3 {
            XCTAssertEqual(try s3strata("restore", chain, "\(dir)/s3-\(k).img", "--point", String(k), "--quiet").status, 0)
            XCTAssertEqual(try contents("\(dir)/s3-\(k).img"), restores[k], "point \(k) from the bucket")
        }
        XCTAssertEqual(try s3strata("prune", chain, "--keep-last", "2", "--quiet").status, 0)
        XCTAssertEqual(try s3strata("verify", chain, "--quiet").status, 0)
        for k in 2...3 {
            XCTAssertEqual(try s3strata("restore", chain, "\(dir)/pruned-\(k).img", "--point", String(k), "--quiet").status, 0)
            XCTAssertEqual(try contents("\(dir)/pruned-\(k).img"), restores[k], "point \(k) from the bucket after prune")
        }

        // Served from the bucket: each kept point reads as its restore, and block status calls its free blocks zero.
        let socket = "\(dir)/nbd.sock"
        let server = try ChildProcess("/usr/bin/env", s3args(["serve", chain, "--socket", socket]), deadline: 300, quiet: true)
        defer {
            kill(server.pid, SIGTERM)
            _ = server.finish()
        }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: socket) { usleep(50_000) }
        for k in 2...3 {
            let uri = "nbd+unix:///\(k)?socket=\(socket)"
            XCTAssertEqual(runTool("/usr/bin/env", ["nbdcopy", uri, "\(dir)/served-\(k).img"]), 0)
            XCTAssertEqual(try contents("\(dir)/served-\(k).img"), restores[k], "point \(k) served")
            // nbdinfo --map: offset, length, type (bit 1: zero), description.
            var zero: [Range<Int>] = []
            for line in toolOutput(["nbdinfo", "--map", uri]).split(separator: "\n") {
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                if f.count >= 3, let o = Int(f[0]), let n = Int(f[1]), let t = Int(f[2]), t & 2 != 0 { zero.append(o..<(o + n)) }
            }
            for r in free[k]! {
                let covered = zero.reduce(0) { $0 + max(0, min($1.upperBound, r.upperBound) - max($1.lowerBound, r.lowerBound)) }
                XCTAssertEqual(covered, r.count, "point \(k): free bytes \(r) are zero to block status")
            }
        }

        // Mounted from the directory: each point file reads as its restore.
        let m = "\(dir)/points"
        try FileManager.default.createDirectory(atPath: m, withIntermediateDirectories: true)
        let mounted = try strata("mount", local, m)
        XCTAssertEqual(mounted.status, 0, mounted.stderr)
        defer { _ = try? strata("unmount", m) }
        for k in 1...3 { XCTAssertEqual(try contents("\(m)/point-\(k).img"), restores[k], "point \(k) mounted") }
    }

    func testRefusalsAreOneLineAndChangeNothing() throws {
        let chain = "s3://\(bucket)/c", disk = "\(dir)/disk.img"
        try makeDisk(disk, size: 4 << 20, seed: 4)
        XCTAssertEqual(try s3strata("capture", disk, chain, "--quiet").status, 0)
        let s = try S3ClientProbe(rgw)
        let before = try s.keys(bucket, "c/")

        // Another writer holds the lease.
        try s.put(bucket, "c/.strata-lease", "strata-lease 1\nholder elsewhere pid 1\nexpires \(Int(Date().timeIntervalSince1970) + 600)\n")
        let busy = try s3strata("capture", disk, chain, "--quiet")
        XCTAssertEqual(busy.status, 75)
        XCTAssertEqual(busy.stderr, "strata: error: chain \(chain) is being changed by another strata process (a capture, merge or prune); wait for it to finish and try again\n")
        XCTAssertEqual(try s3strata("restore", chain, "\(dir)/beside.img", "--quiet").status, 0, "readers run beside a writer")
        // Its holder died: the lease expired, and the next writer takes it over.
        try s.put(bucket, "c/.strata-lease", "strata-lease 1\nholder elsewhere pid 1\nexpires 1000\n")
        XCTAssertEqual(try s3strata("capture", disk, chain, "--quiet").status, 0)
        XCTAssertFalse(try s.keys(bucket, "c/").contains("c/.strata-lease"), "released")
        let after = try s.keys(bucket, "c/")

        let wrong = try s3strata("list", chain, extra: ["AWS_SECRET_ACCESS_KEY": "wrong"])
        XCTAssertEqual(wrong.status, 77)
        XCTAssertEqual(wrong.stderr, "strata: error: the store of \(chain) refused: the store refused these credentials (HTTP 403); nothing was done: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY\n")
        let missing = try s3strata("list", "s3://strata-no-such-bucket/c")
        XCTAssertEqual(missing.status, 77)
        XCTAssertTrue(missing.stderr.hasPrefix("strata: error: the store of s3://strata-no-such-bucket/c refused: bucket strata-no-such-bucket does not exist at "), missing.stderr)
        let none = try s3strata("restore", "s3://\(bucket)/nothing-here", "\(dir)/none.img")
        XCTAssertEqual(none.status, 65)
        XCTAssertEqual(none.stderr, "strata: error: s3://\(bucket)/nothing-here is not a Strata chain (no chain.manifest); name the directory of an existing chain\n")
        let down = try s3strata("list", chain, extra: ["AWS_ENDPOINT_URL": "http://127.0.0.1:9"])
        XCTAssertEqual(down.status, 69)
        XCTAssertTrue(down.stderr.hasPrefix("strata: error: cannot reach the store of \(chain): "), down.stderr)
        XCTAssertEqual(down.stderr.split(separator: "\n").count, 1, "one line")
        let bad = try s3strata("list", "s3://\(bucket)")
        XCTAssertEqual(bad.status, 64)
        XCTAssertEqual(try s.keys(bucket, "c/"), after, "nothing changed by the refusals")
        XCTAssertEqual(before.count, 3, "manifest, image, map")
    }
}

/// Direct requests to the gateway, to look at and set up a bucket.
struct S3ClientProbe {
    let client: S3Client
    init(_ rgw: RGW) throws { client = S3Client(rgw.config) }

    func keys(_ bucket: String, _ prefix: String) throws -> [String] { try client.list(bucket: bucket, prefix: prefix).map(\.key) }

    func text(_ bucket: String, _ key: String) throws -> String { String(decoding: try client.get(bucket: bucket, key: key).bytes, as: UTF8.self) }

    func unfinished(_ bucket: String) throws -> Int { try client.unfinishedUploads(bucket: bucket, prefix: "").count }

    func put(_ bucket: String, _ key: String, _ text: String) throws {
        _ = try Array(text.utf8).withUnsafeBytes { try client.put(bucket: bucket, key: key, $0) }
    }
}
