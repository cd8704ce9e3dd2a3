// Encrypted chains: every point restores bit for bit with the key, through captures, merges, prunes,
// a rebuilt head map and a served point; without it nothing of the source is in any file; a wrong, missing or
// foreign secret changes nothing; tampering is named as damage, never restored.
import Foundation
import StrataCodec
import StrataFormat
import XCTest

@testable import StrataChain

final class EncryptionTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try scratchDirectory("encrypt") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    let key = UserSecret.keyFile(KeyWrapping.random(32))

    func captureOptions(_ secret: UserSecret?, encrypt: Bool = true) -> CaptureOptions {
        var o = CaptureOptions()
        o.encrypt = encrypt
        o.secret = secret
        o.threads = 2
        return o
    }

    func restore(_ chain: String, _ point: UInt32, secret: UserSecret?) throws -> [UInt8] {
        var o = RestoreOptions.overwriting
        o.point = point
        o.secret = secret
        _ = try Restore.run(chain: chain, target: "\(dir)/out.img", options: o)
        defer { try? FileManager.default.removeItem(atPath: "\(dir)/out.img") }
        return try readFile("\(dir)/out.img")
    }

    func assertEveryPointRestores(_ chain: String, _ states: [UInt32: [UInt8]], _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
        for p in try ChainListing.read(chain: chain).points.map(\.point) {
            XCTAssertTrue(try restore(chain, p, secret: key) == states[p], "\(what): point \(p) differs", file: file, line: line)
        }
    }

    /// Every file of a chain, by name, with its bytes: "nothing written" is this, unchanged.
    func snapshot(_ chain: String) throws -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: chain) { out[name] = try readFile("\(chain)/\(name)") }
        return out
    }

    /// The nightly property with encryption on: random nights, merges and a calendar-free prune; every point
    /// restores after every step; verify with the key finds it whole, and so does verify without it (checksums).
    func testEncryptedNightsMergesAndPrunesKeepEveryPoint() throws {
        for seed: UInt64 in [31, 32] {
            var rng = SeededGenerator(seed: seed)
            var disk = DiskModel(size: 5 << 20 + 2048, rng: &rng)
            let source = "\(dir)/source-\(seed).img", chain = "\(dir)/chain-\(seed)"
            var states: [UInt32: [UInt8]] = [:]
            for night in 0..<7 {
                if night > 0 { disk.night(night + Int(seed), rng: &rng) }
                try disk.writeSparse(to: source)
                let r = try Capture.run(source: source, chain: chain, options: captureOptions(key, encrypt: night == 0))
                states[r.point] = disk.bytes
                if night == 4 {
                    var m = MergeOptions(to: 4)
                    m.from = 2
                    m.secret = key
                    _ = try Merge.run(chain: chain, options: m)
                    states[2] = nil
                    states[3] = nil
                    try assertEveryPointRestores(chain, states, "seed \(seed) after a merge")
                }
            }
            var m = MergeOptions(to: 0)
            m.secret = key
            let pruned = try Merge.prune(chain: chain, rules: RetentionRules(last: 2), options: m)
            for p in states.keys where !pruned.points.contains(p) { states[p] = nil }
            try assertEveryPointRestores(chain, states, "seed \(seed) after a prune")
            var v = VerifyOptions()
            v.secret = key
            XCTAssertTrue(try Verify.run(chain: chain, options: v).isWhole, "seed \(seed)")
            var blind = VerifyOptions()
            blind.checksumsOnly = true
            let b = try Verify.run(chain: chain, options: blind)
            XCTAssertTrue(b.isWhole, "seed \(seed): checksums check without the key")
            XCTAssertEqual(b.wholePoints, pruned.points)
            // The head map gone: the next capture rebuilds it from the sealed frames' hash tables.
            try FileManager.default.removeItem(atPath: "\(chain)/\(try ChainManifest.decode(readFile("\(chain)/chain.manifest")).hashMapFile)")
            disk.night(0, rng: &rng)
            try disk.writeSparse(to: source)
            let r = try Capture.run(source: source, chain: chain, options: captureOptions(key, encrypt: false))
            states[r.point] = disk.bytes
            XCTAssertLessThan(r.blocksChanged, UInt64(disk.bytes.count / 4096 / 2), "seed \(seed): the rebuilt map spared the unchanged blocks")
            try assertEveryPointRestores(chain, states, "seed \(seed) after a rebuilt map")
        }
    }

    /// Known text and random blocks in the source: no file of the encrypted chain holds any of the text, nor any
    /// 4 KiB block of the source; the same disk in a chain without encryption does hold source blocks (so the
    /// search finds what is there).
    func testNoChainFileHoldsTheSourceInTheClear() throws {
        var rng = SeededGenerator(seed: 41)
        var disk = DiskModel(size: 4 << 20, rng: &rng)
        disk.overwrite(at: 1 << 20, count: 1 << 20, rng: &rng)  // incompressible: a plain chain stores it raw
        let secrets = (0..<40).map { "password-hash-\($0)-\(UInt64.random(in: 0...UInt64.max, using: &rng))" }
        for (i, s) in secrets.enumerated() { disk.bytes.replaceSubrange((i * 50_000)..<(i * 50_000 + s.utf8.count), with: Array(s.utf8)) }
        let source = "\(dir)/source.img"
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: "\(dir)/encrypted", options: captureOptions(key))
        _ = try Capture.run(source: source, chain: "\(dir)/plain", options: captureOptions(nil, encrypt: false))
        disk.overwrite(at: 3 << 20, count: 100_000, rng: &rng)
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: "\(dir)/encrypted", options: captureOptions(key, encrypt: false))
        _ = try Capture.run(source: source, chain: "\(dir)/plain", options: captureOptions(nil, encrypt: false))

        // Source blocks of varied bytes, found by their first 8 bytes, then compared whole.
        var byPrefix: [UInt64: [Int]] = [:]
        let source8 = disk.bytes.withUnsafeBytes { b in (0..<(b.count / 4096)).map { b.loadUnaligned(fromByteOffset: $0 * 4096, as: UInt64.self) } }
        for (b, prefix) in source8.enumerated() where Set(disk.bytes[(b * 4096)..<((b + 1) * 4096)]).count > 16 { byPrefix[prefix, default: []].append(b) }
        func blocksIn(_ chain: String) throws -> Int {
            var found = 0
            for (_, bytes) in try snapshot(chain) where bytes.count >= 4096 {
                bytes.withUnsafeBytes { f in
                    disk.bytes.withUnsafeBytes { s in
                        for at in 0...(f.count - 4096) {
                            guard let candidates = byPrefix[f.loadUnaligned(fromByteOffset: at, as: UInt64.self)] else { continue }
                            for b in candidates where memcmp(f.baseAddress! + at, s.baseAddress! + b * 4096, 4096) == 0 { found += 1 }
                        }
                    }
                }
            }
            return found
        }
        XCTAssertGreaterThan(try blocksIn("\(dir)/plain"), 0, "the search finds source blocks where they are in the clear")
        XCTAssertEqual(try blocksIn("\(dir)/encrypted"), 0, "no 4 KiB block of the source verbatim in an encrypted chain")
        for (name, bytes) in try snapshot("\(dir)/encrypted") {
            for s in secrets { XCTAssertNil(bytes.firstRange(of: Array(s.utf8)), "\(name) holds \(s)") }
        }
        XCTAssertEqual(try restore("\(dir)/encrypted", 2, secret: key), disk.bytes)
    }

    func testWrongMissingAndForeignSecretsChangeNothing() throws {
        let source = "\(dir)/source.img", a = "\(dir)/a", b = "\(dir)/b"
        var rng = SeededGenerator(seed: 51)
        let disk = DiskModel(size: 2 << 20, rng: &rng)
        try disk.writeSparse(to: source)
        let other = UserSecret.keyFile(KeyWrapping.random(32))
        _ = try Capture.run(source: source, chain: a, options: captureOptions(key))
        _ = try Capture.run(source: source, chain: b, options: captureOptions(other))
        let before = try snapshot(a)
        let wrong = ChainError.wrongKey(path: a, detail: "a wrong key file or passphrase, or another chain's")
        // Another chain's key (b's) and a key no chain has: the same answer.
        for secret in [other, UserSecret.keyFile(KeyWrapping.random(32))] {
            XCTAssertThrowsError(try restore(a, 1, secret: secret)) { XCTAssertEqual($0 as? ChainError, wrong) }
            XCTAssertThrowsError(try Capture.run(source: source, chain: a, options: captureOptions(secret, encrypt: false))) { XCTAssertEqual($0 as? ChainError, wrong) }
        }
        XCTAssertThrowsError(try restore(a, 1, secret: .passphrase("guess"))) {
            XCTAssertEqual($0 as? ChainError, .wrongKey(path: a, detail: "the chain was encrypted with a key file, and a passphrase was given"))
        }
        XCTAssertThrowsError(try restore(a, 1, secret: nil)) { XCTAssertEqual($0 as? ChainError, .keyNeeded(path: a)) }
        XCTAssertThrowsError(try Capture.run(source: source, chain: a, options: captureOptions(nil, encrypt: false))) {
            XCTAssertEqual($0 as? ChainError, .keyNeeded(path: a))
        }
        XCTAssertThrowsError(try Merge.prune(chain: a, rules: RetentionRules(last: 1))) { XCTAssertEqual($0 as? ChainError, .keyNeeded(path: a)) }
        XCTAssertThrowsError(try Verify.run(chain: a, options: VerifyOptions())) { XCTAssertEqual($0 as? ChainError, .keyNeeded(path: a)) }
        XCTAssertThrowsError(try ServedChain(chain: a)) { XCTAssertEqual($0 as? ChainError, .keyNeeded(path: a)) }
        XCTAssertThrowsError(try Capture.run(source: source, chain: "\(dir)/plain", options: captureOptions(nil))) {
            XCTAssertEqual($0 as? ChainError, .invalidOption("--encrypt needs a key: --key-file FILE, or a passphrase in STRATA_PASSPHRASE"))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out.img"), "no target was made")
        XCTAssertEqual(try snapshot(a), before, "nothing in the chain changed")
        // A chain that is not encrypted stays so.
        _ = try Capture.run(source: source, chain: "\(dir)/plain2", options: captureOptions(nil, encrypt: false))
        XCTAssertThrowsError(try Capture.run(source: source, chain: "\(dir)/plain2", options: captureOptions(key))) {
            guard case .invalidOption(let m) = $0 as? ChainError else { return XCTFail("\($0)") }
            XCTAssertTrue(m.contains("is not encrypted"), m)
        }
    }

    func testKeyChangeThenTheNewSecretOnly() throws {
        let source = "\(dir)/source.img", chain = "\(dir)/chain"
        var rng = SeededGenerator(seed: 61)
        let disk = DiskModel(size: 2 << 20, rng: &rng)
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: chain, options: captureOptions(key))
        let image = try readFile("\(chain)/p000001.strata")
        let passphrase = UserSecret.passphrase("correct horse battery staple")
        XCTAssertThrowsError(try ChainSecrets.change(chain: chain, old: .keyFile(KeyWrapping.random(32)), new: passphrase)) {
            XCTAssertEqual($0 as? ChainError, .wrongKey(path: chain, detail: "a wrong key file or passphrase, or another chain's"))
        }
        try ChainSecrets.change(chain: chain, old: key, new: passphrase)
        XCTAssertEqual(try restore(chain, 1, secret: passphrase), disk.bytes)
        XCTAssertThrowsError(try restore(chain, 1, secret: key)) {
            XCTAssertEqual($0 as? ChainError, .wrongKey(path: chain, detail: "the chain was encrypted with a passphrase, and a key file was given"))
        }
        let newKey = UserSecret.keyFile(KeyWrapping.random(32))
        try ChainSecrets.change(chain: chain, old: passphrase, new: newKey)
        XCTAssertEqual(try restore(chain, 1, secret: newKey), disk.bytes)
        XCTAssertThrowsError(try restore(chain, 1, secret: passphrase))
        XCTAssertEqual(try readFile("\(chain)/p000001.strata"), image, "no image was rewritten")
    }

    /// A point served (mount, serve) from an encrypted chain reads as its restore does.
    func testServedPointReadsLikeRestore() throws {
        let source = "\(dir)/source.img", chain = "\(dir)/chain"
        var rng = SeededGenerator(seed: 71)
        var disk = DiskModel(size: 3 << 20, rng: &rng)
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: chain, options: captureOptions(key))
        disk.night(0, rng: &rng)
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: chain, options: captureOptions(key, encrypt: false))
        let r = try ServedChain(chain: chain, secret: key).reader(point: 2)
        var out = [UInt8](repeating: 0, count: disk.bytes.count)
        let n = try out.withUnsafeMutableBytes { try r.read(into: $0.baseAddress!, count: $0.count, at: 0) }
        XCTAssertEqual(n, disk.bytes.count)
        XCTAssertTrue(out == disk.bytes)
    }

    // MARK: Tampering

    /// A chain of one full image (several frames of random data, all the same length) and its source.
    func tamperFixture() throws -> (chain: String, disk: DiskModel, image: String) {
        let source = "\(dir)/source.img", chain = "\(dir)/chain"
        var rng = SeededGenerator(seed: 81)
        var disk = DiskModel(size: 4 << 20, rng: &rng)
        disk.overwrite(at: 0, count: 4 << 20, rng: &rng)
        try disk.writeSparse(to: source)
        _ = try Capture.run(source: source, chain: chain, options: captureOptions(key))
        return (chain, disk, "\(chain)/p000001.strata")
    }

    func write(_ bytes: [UInt8], to path: String, at offset: UInt64) throws {
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try h.seek(toOffset: offset)
        try h.write(contentsOf: Data(bytes))
        try h.close()
    }

    func testAFlippedCiphertextBitIsNamedWithAndWithoutTheKey() throws {
        let (chain, _, image) = try tamperFixture()
        var bytes = try readFile(image)
        bytes[4096 + 5000] ^= 0x10
        try write(bytes, to: image, at: 0)
        XCTAssertThrowsError(try restore(chain, 1, secret: key)) {
            XCTAssertEqual($0 as? ChainError, .corruptData(file: "p000001.strata", detail: "frame 0 at byte 4096 fails its checksum"))
        }
        var blind = VerifyOptions()
        blind.checksumsOnly = true
        let r = try Verify.run(chain: chain, options: blind)
        XCTAssertEqual(r.problems.map(\.file), ["p000001.strata"])
        XCTAssertEqual(r.affectedPoints, [1])
    }

    /// An attacker without the key swaps two frames of equal length and makes every checksum agree (records,
    /// chunk CRC, table CRC, header CRC): the frame chunk's keyed tag no longer matches, and nothing is restored.
    func testFramesSwappedWithTheirChecksumsFixedAreDamage() throws {
        let (chain, _, image) = try tamperFixture()
        var bytes = try readFile(image)
        var h = try ImageHeader.decode(Array(bytes[0..<ImageHeader.size]))
        let tableBytes = Array(bytes[Int(h.indexOffset)..<Int(h.fileSize)])
        var top = try TopIndex.decode(tableBytes, header: h)
        let entry = top.frameChunks[0]
        let stored = Array(bytes[Int(entry.offset)..<(Int(entry.offset) + Int(entry.length))])
        var frames = try IndexChunks.decodeFrames(stored, chunk: 0, of: top, header: h) { Array($0.dropLast(Sealing.chunkTagSize)) }
        XCTAssertGreaterThanOrEqual(frames.count, 3)
        XCTAssertEqual(frames[0].length, frames[1].length, "random data: frames of one length")
        let (a, b) = (frames[0], frames[1])
        let frameA = Array(bytes[Int(a.offset)..<(Int(a.offset) + Int(a.length))]), frameB = Array(bytes[Int(b.offset)..<(Int(b.offset) + Int(b.length))])
        bytes.replaceSubrange(Int(a.offset)..<(Int(a.offset) + frameB.count), with: frameB)
        bytes.replaceSubrange(Int(b.offset)..<(Int(b.offset) + frameA.count), with: frameA)
        (frames[0].checksum, frames[1].checksum) = (b.checksum, a.checksum)
        let forged = IndexChunks.encode(frames: frames[...]) + Array(stored.suffix(Sealing.chunkTagSize))
        bytes.replaceSubrange(Int(entry.offset)..<(Int(entry.offset) + forged.count), with: forged)
        top.frameChunks[0].checksum = CRC32C.checksum(forged)
        let table = top.encode()
        bytes.replaceSubrange(Int(h.indexOffset)..<Int(h.fileSize), with: table)
        h.indexChecksum = CRC32C.checksum(table)
        bytes.replaceSubrange(0..<ImageHeader.size, with: h.encode())
        try write(bytes, to: image, at: 0)
        XCTAssertNoThrow(try ImageHeader.decode(Array(bytes[0..<ImageHeader.size])), "every checksum agrees")

        XCTAssertThrowsError(try restore(chain, 1, secret: key)) {
            XCTAssertEqual($0 as? ChainError, .damaged(file: "p000001.strata", detail: "the image's header and index fail authentication with this chain's key"))
        }
        var v = VerifyOptions()
        v.secret = key
        XCTAssertEqual(try Verify.run(chain: chain, options: v).problems.map(\.file), ["p000001.strata"])
    }

    /// An image of another encrypted chain (the same disk, the same key file) put in place of this one's.
    func testAnImageFromAnotherChainIsDamage() throws {
        let (chain, disk, image) = try tamperFixture()
        try disk.writeSparse(to: "\(dir)/source.img")
        _ = try Capture.run(source: "\(dir)/source.img", chain: "\(dir)/other", options: captureOptions(key))
        try FileManager.default.removeItem(atPath: image)
        try FileManager.default.copyItem(atPath: "\(dir)/other/p000001.strata", toPath: image)
        XCTAssertThrowsError(try restore(chain, 1, secret: key)) {
            guard case .damaged(let file, let detail) = $0 as? ChainError else { return XCTFail("\($0)") }
            XCTAssertEqual(file, "p000001.strata")
            XCTAssertTrue(detail.hasPrefix("it belongs to another chain"), detail)
        }
    }
}
