// Encrypted chains from the command line: keygen, --encrypt, --key-file, STRATA_PASSPHRASE, key change; the exact
// line and exit code (67) for a missing or wrong secret, nothing written, and the secret in no output.
import Foundation
import TestSupport
import XCTest

final class EncryptionCLITests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("strata-enc-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// strata with environment variables set.
    func strata(env: [String: String], _ args: String...) throws -> Run {
        let r = try ChildProcess("/usr/bin/env", env.map { "\($0)=\($1)" } + [strataBinary] + args).finish()
        XCTAssertFalse(r.timedOut)
        return Run(r)
    }

    func testKeyFileChainFromKeygenToKeyChange() throws {
        let key = "\(dir)/k1", disk = "\(dir)/disk.img", chain = "\(dir)/chain"
        try makeDisk(disk, size: 3 << 20, seed: 5)
        XCTAssertEqual(try StrataCLITests.strata("keygen", key).status, 0)
        let st = try FileManager.default.attributesOfItem(atPath: key)
        XCTAssertEqual(st[.size] as? Int, 32)
        XCTAssertEqual((st[.posixPermissions] as? Int).map { $0 & 0o777 }, 0o600)
        let again = try StrataCLITests.strata("keygen", key)
        XCTAssertEqual(again.status, 67)
        XCTAssertEqual(again.stderr, "strata: error: key file \(key): it exists; strata keygen never replaces a key (remove it yourself, or name another file)\n")

        let noKey = try StrataCLITests.strata("capture", disk, chain, "--encrypt", "--quiet")
        XCTAssertEqual(noKey.status, 64)
        XCTAssertEqual(noKey.stderr, "strata: error: --encrypt needs a key: --key-file FILE, or a passphrase in STRATA_PASSPHRASE\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: chain), "nothing made")

        let cap = try StrataCLITests.strata("capture", disk, chain, "--encrypt", "--key-file", key, "--json")
        XCTAssertEqual(cap.status, 0, cap.stderr)
        let keyHex = try Data(contentsOf: URL(fileURLWithPath: key)).map { String(format: "%02x", $0) }.joined()
        XCTAssertFalse((cap.stdout + cap.stderr).contains(keyHex), "the key is in no output")
        XCTAssertEqual(try StrataCLITests.strata("list", chain).status, 0, "list needs no key")
        let before = try chainFiles(chain)

        let missing = try StrataCLITests.strata("restore", chain, "\(dir)/out.img")
        XCTAssertEqual(missing.status, 67)
        XCTAssertEqual(missing.stderr, "strata: error: chain \(chain) is encrypted: give its key with --key-file FILE, or its passphrase in STRATA_PASSPHRASE; nothing was done\n")
        XCTAssertEqual(try StrataCLITests.strata("keygen", "\(dir)/k2").status, 0)
        let wrong = try StrataCLITests.strata("restore", chain, "\(dir)/out.img", "--key-file", "\(dir)/k2")
        XCTAssertEqual(wrong.status, 67)
        XCTAssertEqual(
            wrong.stderr,
            "strata: error: the key does not open chain \(chain): a wrong key file or passphrase, or another chain's; nothing was done: give the key file or passphrase this chain was made with\n")
        let wrongCapture = try StrataCLITests.strata("capture", disk, chain, "--key-file", "\(dir)/k2", "--quiet")
        XCTAssertEqual(wrongCapture.status, 67)
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: "\(dir)/short.key"))
        chmod("\(dir)/short.key", 0o600)
        let short = try StrataCLITests.strata("restore", chain, "\(dir)/out.img", "--key-file", "\(dir)/short.key")
        XCTAssertEqual(short.status, 67)
        XCTAssertEqual(short.stderr, "strata: error: key file \(dir)/short.key: it holds 3 bytes, not the 32 of a key strata keygen makes\n")
        XCTAssertEqual(try StrataCLITests.strata("verify", chain).status, 67)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out.img"))
        XCTAssertEqual(try chainFiles(chain), before, "nothing in the chain changed")

        let blind = try StrataCLITests.strata("verify", chain, "--checksums-only")
        XCTAssertEqual(blind.status, 0, "the storage host checks integrity without the key: \(blind.stderr)")
        chmod(key, 0o644)
        let exposed = try StrataCLITests.strata("restore", chain, "\(dir)/out.img", "--key-file", key)
        XCTAssertEqual(exposed.status, 0)
        XCTAssertTrue(exposed.stderr.contains("strata: warning: key file \(key) can be read by others (mode 644); chmod 600 it"), exposed.stderr)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out.img")), try Data(contentsOf: URL(fileURLWithPath: disk)))

        XCTAssertEqual(try StrataCLITests.strata("key", "change", chain, "--key-file", key, "--new-key-file", "\(dir)/k2").status, 0)
        XCTAssertEqual(try StrataCLITests.strata("restore", chain, "\(dir)/out2.img", "--key-file", key).status, 67, "the old key no longer opens it")
        XCTAssertEqual(try StrataCLITests.strata("restore", chain, "\(dir)/out2.img", "--key-file", "\(dir)/k2").status, 0)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out2.img")), try Data(contentsOf: URL(fileURLWithPath: disk)))
    }

    func testPassphraseChain() throws {
        let disk = "\(dir)/disk.img", chain = "\(dir)/chain"
        try makeDisk(disk, size: 2 << 20, seed: 6)
        let pass = "correct horse battery staple"
        XCTAssertEqual(try strata(env: ["STRATA_PASSPHRASE": pass], "capture", disk, chain, "--encrypt", "--quiet").status, 0)
        XCTAssertTrue(try String(contentsOfFile: "\(chain)/chain.key", encoding: .utf8).contains("wrapping argon2id"))
        let wrong = try strata(env: ["STRATA_PASSPHRASE": "hunter2-not-it"], "restore", chain, "\(dir)/out.img")
        XCTAssertEqual(wrong.status, 67)
        XCTAssertFalse(wrong.stderr.contains("hunter2"), "the secret is in no message")
        XCTAssertEqual(try strata(env: ["STRATA_PASSPHRASE": pass], "restore", chain, "\(dir)/out.img").status, 0)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out.img")), try Data(contentsOf: URL(fileURLWithPath: disk)))
        let change = try strata(env: ["STRATA_PASSPHRASE": pass, "STRATA_NEW_PASSPHRASE": "new one"], "key", "change", chain)
        XCTAssertEqual(change.status, 0, change.stderr)
        XCTAssertEqual(try strata(env: ["STRATA_PASSPHRASE": pass], "verify", chain).status, 67)
        XCTAssertEqual(try strata(env: ["STRATA_PASSPHRASE": "new one"], "verify", chain).status, 0)
    }
}
