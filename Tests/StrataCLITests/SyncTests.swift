// `strata sync SRC DST`: a chain copied between a directory and a bucket and back, only what DST lacks,
// every point of the last copy restored bit for bit; a second sync copies nothing; refusals (another chain, a
// copy with points of its own, a damaged source) change nothing; what an interrupted sync published is kept.
import Foundation
import StrataS3
import TestSupport
import XCTest

final class SyncTests: GatewayTestCase {
    /// A sync's --json numbers.
    func sync(_ src: String, _ dst: String) throws -> [String: Int] {
        let r = try s3strata("sync", src, dst, "--json")
        XCTAssertEqual(r.status, 0, r.stderr)
        var out: [String: Int] = [:]
        for key in ["objectsCopied", "objectsKept", "objectsRemoved", "bytesCopied"] {
            if let range = r.stdout.range(of: "\"\(key)\":") { out[key] = Int(r.stdout[range.upperBound...].prefix { $0.isNumber }) }
        }
        return out
    }

    func assertRestores(_ chain: String, _ states: [Int: [UInt8]], file: StaticString = #filePath, line: UInt = #line) throws {
        for (p, bytes) in states {
            let out = "\(dir)/out-\(p).img"
            let r = try s3strata("restore", chain, out, "--point", "\(p)", "--quiet", "--force")
            XCTAssertEqual(r.status, 0, "\(chain) point \(p): \(r.stderr)", file: file, line: line)
            XCTAssertTrue(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(bytes), "\(chain) point \(p) differs", file: file, line: line)
        }
    }

    func files(_ path: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: path) { out[name] = try Data(contentsOf: URL(fileURLWithPath: "\(path)/\(name)")) }
        return out
    }

    func testLocalToBucketToLocalThenOnlyWhatIsMissing() throws {
        let local = "\(dir)/a", remote = "s3://\(bucket)/host1/sdb", back = "\(dir)/b", disk = "\(dir)/disk.img"
        // The full image is many upload parts, filled by the sync's threads at once.
        var model = RandomDisk(size: 96 << 20, seed: 11, random: 72 << 20)
        var states: [Int: [UInt8]] = [:]
        for night in 1...4 {
            if night > 1 { model.change(at: night * (4 << 20), count: 3 << 20) }
            try model.write(to: disk)
            XCTAssertEqual(try strata("capture", disk, local, "--quiet").status, 0)
            states[night] = model.bytes
        }
        let first = try sync(local, remote)
        XCTAssertEqual(first["objectsCopied"], 5, "4 images and the hash map")
        XCTAssertEqual(try sync(remote, back)["objectsCopied"], 5)
        try assertRestores(back, states)
        XCTAssertEqual(try s3strata("verify", back).status, 0)
        XCTAssertEqual(try sync(local, remote)["objectsCopied"], 0, "a second sync copies nothing")
        XCTAssertEqual(try sync(remote, back)["bytesCopied"], 0)
        XCTAssertEqual(try s3strata("sync", remote, back).stdout, "\(back) is up to date (4 points)\n")

        // A night and a merge in the source: the new image and the merged one are copied, the merged-away ones go.
        model.change(at: 0, count: 2 << 20)
        try model.write(to: disk)
        XCTAssertEqual(try strata("capture", disk, local, "--quiet").status, 0)
        states[5] = model.bytes
        XCTAssertEqual(try strata("merge", local, "--from", "2", "--to", "4", "--quiet").status, 0)
        states[2] = nil
        states[3] = nil
        let third = try sync(local, remote)
        XCTAssertEqual(third["objectsCopied"], 3, "the merged image, the new one and the new hash map")
        XCTAssertEqual(third["objectsRemoved"], 4, "p2, p3, p4 and the old map leave the chain's view")
        XCTAssertEqual(try sync(remote, back)["objectsCopied"], 3)
        try assertRestores(back, states)
        XCTAssertEqual(try s3strata("list", back).stdout, try s3strata("list", local).stdout)
        XCTAssertEqual(try files(back).keys.filter { $0 != ".lock" }.sorted(), try files(local).keys.filter { $0 != ".lock" }.sorted(), "the same files")
        for (name, bytes) in try files(local) where name != ".lock" { XCTAssertEqual(try files(back)[name], bytes, name) }
    }

    func testRefusalsChangeNothing() throws {
        let a = "\(dir)/a", other = "\(dir)/other", remote = "s3://\(bucket)/r", disk = "\(dir)/disk.img"
        try makeDisk(disk, size: 4 << 20, seed: 1)
        XCTAssertEqual(try strata("capture", disk, a, "--quiet").status, 0)
        XCTAssertEqual(try strata("capture", disk, other, "--quiet").status, 0)
        XCTAssertEqual(try sync(a, remote)["objectsCopied"], 2)

        let before = try files(other)
        let foreign = try s3strata("sync", a, other)
        XCTAssertEqual(foreign.status, 77)
        XCTAssertTrue(foreign.stderr.hasPrefix("strata: error: will not sync into \(other): it holds another chain ("), foreign.stderr)
        XCTAssertTrue(foreign.stderr.hasSuffix("; nothing was changed: sync into an empty place, or remove what is there first\n"), foreign.stderr)
        XCTAssertEqual(try files(other), before)

        // A capture into the copy: syncing the source over it would lose that point.
        try makeDisk(disk, size: 4 << 20, seed: 1, changes: 20)
        XCTAssertEqual(try s3strata("capture", disk, remote, "--quiet").status, 0)
        let ahead = try s3strata("sync", a, remote)
        XCTAssertEqual(ahead.status, 77)
        XCTAssertEqual(ahead.stderr, "strata: error: will not sync into \(remote): it has point 2, which \(a) has not seen (a capture into the copy); nothing was changed: sync into an empty place, or remove what is there first\n")
        XCTAssertEqual(try s3strata("list", remote, "--json").stdout.components(separatedBy: "\"point\":").count - 1, 2)
        // The other way round is an ordinary sync.
        XCTAssertEqual(try sync(remote, a)["objectsCopied"], 2, "the new image and its hash map")

        let same = try s3strata("sync", a, "\(dir)/./a")
        XCTAssertEqual(same.status, 64)
        XCTAssertEqual(same.stderr, "strata: error: \(a) and \(dir)/./a are the same chain: name two places\n")
        let none = try s3strata("sync", "\(dir)/nothing", "\(dir)/c")
        XCTAssertEqual(none.status, 65)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/c"))
    }

    func testADamagedSourceFailsBeforeTheCopyChanges() throws {
        let a = "\(dir)/a", remote = "s3://\(bucket)/d", disk = "\(dir)/disk.img"
        var model = RandomDisk(size: 8 << 20, seed: 12, random: 6 << 20)
        try model.write(to: disk)
        XCTAssertEqual(try strata("capture", disk, a, "--quiet").status, 0)
        XCTAssertEqual(try sync(a, remote)["objectsCopied"], 2)
        model.change(at: 0, count: 1 << 20)
        try model.write(to: disk)
        XCTAssertEqual(try strata("capture", disk, a, "--quiet").status, 0)
        // A flipped byte in the middle of the new image's frames.
        let image = "\(a)/p000002.strata"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: image))
        bytes[bytes.count / 2] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: image))
        let r = try s3strata("sync", a, remote)
        XCTAssertEqual(r.status, 65)
        XCTAssertTrue(r.stderr.hasPrefix("strata: error: corrupt data in p000002.strata: frame "), r.stderr)
        XCTAssertTrue(r.stderr.contains("fails its checksum"), r.stderr)
        XCTAssertEqual(try s3strata("list", remote, "--json").stdout.components(separatedBy: "\"point\":").count - 1, 1, "the copy as it was")
        XCTAssertEqual(try S3ClientProbe(rgw).unfinished(bucket), 0, "the failed upload was aborted")
    }

    func testWhatAnInterruptedSyncPublishedIsKept() throws {
        // An interrupted sync leaves whole objects no manifest names: copy an image by hand, as it would have.
        let a = "\(dir)/a", b = "\(dir)/b", disk = "\(dir)/disk.img"
        let model = RandomDisk(size: 8 << 20, seed: 13, random: 6 << 20)
        try model.write(to: disk)
        XCTAssertEqual(try strata("capture", disk, a, "--quiet").status, 0)
        try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        try FileManager.default.copyItem(atPath: "\(a)/p000001.strata", toPath: "\(b)/p000001.strata")
        try Data("half".utf8).write(to: URL(fileURLWithPath: "\(b)/map-p000001.strata"))  // not the source's: copied again
        let r = try sync(a, b)
        XCTAssertEqual(r["objectsKept"], 1)
        XCTAssertEqual(r["objectsCopied"], 1)
        try assertRestores(b, [1: model.bytes])
        XCTAssertEqual(try strata("verify", b).status, 0)
    }

    func testAnEncryptedChainIsCopiedSealedWithoutItsKey() throws {
        let a = "\(dir)/a", remote = "s3://\(bucket)/e", back = "\(dir)/b", disk = "\(dir)/disk.img", key = "\(dir)/k"
        XCTAssertEqual(try strata("keygen", key).status, 0)
        try makeDisk(disk, size: 4 << 20, seed: 2)
        XCTAssertEqual(try strata("capture", disk, a, "--encrypt", "--key-file", key, "--quiet").status, 0)
        XCTAssertEqual(try sync(a, remote)["objectsCopied"], 3, "the key file, the image, the hash map")
        XCTAssertEqual(try sync(remote, back)["objectsCopied"], 3)
        XCTAssertEqual(try s3strata("restore", back, "\(dir)/out.img", "--quiet").status, 67, "still needs its key")
        XCTAssertEqual(try s3strata("restore", back, "\(dir)/out.img", "--key-file", key, "--quiet").status, 0)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out.img")), try Data(contentsOf: URL(fileURLWithPath: disk)))
    }
}
