// Encrypted chains' cryptography (ChainKeys, KeyWrapping): what opens, what must not, and golden values that pin
// the construction (subkeys, per-seal keys, AES-256-GCM, keyed hashes) for a fixed key, chain id and salt.
import Foundation
import XCTest

@testable import StrataCodec

final class SealingTests: XCTestCase {
    static let master = Array(UInt8(0)..<32)
    static let chainID = Array(UInt8(0x10)..<0x20)
    static let salt = Array(UInt8(0x40)..<0x58)

    func keys(_ master: [UInt8] = SealingTests.master, chain: [UInt8] = SealingTests.chainID) -> ChainKeys { ChainKeys(master: master, chainID: chain) }

    /// A frame laid out as FrameBuffers leaves it: the plain bytes, then 40 bytes of room.
    func sealedFrame(_ plain: [UInt8], _ k: ChainKeys, salt: [UInt8]? = nil) -> [UInt8] {
        var buffer = plain + [UInt8](repeating: 0, count: 40)
        let n = buffer.withUnsafeMutableBytes { k.sealFrame($0.baseAddress!, plainLength: plain.count, salt: salt) }
        XCTAssertEqual(n, plain.count + 40)
        return buffer
    }

    func open(_ stored: [UInt8], _ k: ChainKeys) -> [UInt8]? {
        var copy = stored
        let ok = copy.withUnsafeMutableBytes { k.openFrame($0.baseAddress!, storedLength: stored.count) }
        return ok ? Array(copy[0..<(stored.count - 40)]) : nil
    }

    func testFrameOpensOnlyUntouchedUnderItsChain() {
        let plain = Array("block hashes, then a payload: SECRET TEXT".utf8) + Array(repeating: 7, count: 5000)
        let k = keys()
        let stored = sealedFrame(plain, k)
        XCTAssertEqual(open(stored, k), plain)
        XCTAssertNil(stored.firstRange(of: Array("SECRET".utf8)), "sealed bytes hold no plain text")
        XCTAssertNil(open(stored, keys(chain: Array(repeating: 1, count: 16))), "a frame moved to another chain does not open")
        XCTAssertNil(open(stored, keys(Array(repeating: 9, count: 32))), "nor under another master key")
        for at in [0, 23, 24, 100, stored.count - 17, stored.count - 1] {
            var flipped = stored
            flipped[at] ^= 0x01
            XCTAssertNil(open(flipped, k), "a flipped bit at \(at) (salt, ciphertext or tag) fails")
        }
        XCTAssertNotEqual(sealedFrame(plain, k), sealedFrame(plain, k), "a random salt each time: equal frames do not look equal")
    }

    func testChunksAreBoundToTheirKindAndPlace() throws {
        let k = keys()
        let plain = Array("extent records".utf8)
        let sealed = k.seal(plain, .extentChunk, context: [1, 2, 3])
        XCTAssertEqual(k.open(sealed, .extentChunk, context: [1, 2, 3]), plain)
        XCTAssertNil(k.open(sealed, .extentChunk, context: [1, 2, 4]), "another place")
        XCTAssertNil(k.open(sealed, .hashMapChunk, context: [1, 2, 3]), "another kind of structure (another subkey)")
        XCTAssertNil(keys(chain: Array(repeating: 3, count: 16)).open(sealed, .extentChunk, context: [1, 2, 3]), "another chain")
        XCTAssertNil(k.open(Array(sealed.dropLast()), .extentChunk, context: [1, 2, 3]), "cut short")
        XCTAssertEqual(k.authenticator([[1], [2, 3]], length: 16), k.authenticator([[1], [2, 3]], length: 16))
        XCTAssertNotEqual(k.authenticator([[1], [2, 3]], length: 16), k.authenticator([[1, 2], [3]], length: 16), "parts are length-prefixed")
    }

    func testKeyedBlockHashesDependOnTheKey() {
        let block = [UInt8](repeating: 0x5A, count: 4096)
        let plain = block.withUnsafeBytes { BlockHash.of($0.baseAddress!, count: 4096) }
        let a = block.withUnsafeBytes { keys().blockHash($0.baseAddress!, count: 4096) }
        let again = block.withUnsafeBytes { keys().blockHash($0.baseAddress!, count: 4096) }
        let b = block.withUnsafeBytes { keys(Array(repeating: 9, count: 32)).blockHash($0.baseAddress!, count: 4096) }
        XCTAssertEqual(a, again)
        XCTAssertNotEqual(a, plain, "an encrypted chain's hashes are not XXH3's of the content")
        XCTAssertNotEqual(a, b, "nor another chain's")
        let zeros = [UInt8](repeating: 0, count: 4096)
        let detector = ZeroBlockDetector(blockSize: 4096, hasher: BlockHasher(keys()))
        XCTAssertEqual(zeros.withUnsafeBytes { detector.hash($0.baseAddress!) }, .zero, "zero blocks are still recognised")
        XCTAssertEqual(block.withUnsafeBytes { detector.hash($0.baseAddress!) }, a)
    }

    func testWrappingOpensOnlyWithTheSecretAndChain() throws {
        let secret = KeyWrapping.random(32), nonce = KeyWrapping.random(24)
        let wrapped = KeyWrapping.wrap(master: Self.master, under: secret, nonce: nonce, associated: [1])
        XCTAssertEqual(wrapped.count, KeyWrapping.wrappedSize)
        XCTAssertEqual(KeyWrapping.unwrap(wrapped, under: secret, nonce: nonce, associated: [1]), Self.master)
        XCTAssertNil(KeyWrapping.unwrap(wrapped, under: KeyWrapping.random(32), nonce: nonce, associated: [1]), "wrong secret")
        XCTAssertNil(KeyWrapping.unwrap(wrapped, under: secret, nonce: nonce, associated: [2]), "another chain's key file")
        let cheap = KeyWrapping.Cost(operations: 1, memory: 8192)
        let p1 = KeyWrapping.wrappingKey(.passphrase("correct horse"), salt: Array(repeating: 1, count: 16), cost: cheap)
        let p2 = KeyWrapping.wrappingKey(.passphrase("correct horse"), salt: Array(repeating: 1, count: 16), cost: cheap)
        let p3 = KeyWrapping.wrappingKey(.passphrase("correct horsf"), salt: Array(repeating: 1, count: 16), cost: cheap)
        let p4 = KeyWrapping.wrappingKey(.passphrase("correct horse"), salt: Array(repeating: 2, count: 16), cost: cheap)
        XCTAssertNotNil(p1)
        XCTAssertEqual(p1, p2)
        XCTAssertNotEqual(p1, p3)
        XCTAssertNotEqual(p1, p4, "the salt matters")
    }

    /// The construction, pinned: the same key, chain id and salt give these bytes on every machine and build. A change
    /// here makes every encrypted chain unreadable: it needs a new cipher name in chain.key, not a new golden value.
    func testGoldenValues() {
        let k = keys()
        let frame = sealedFrame(Array("strata golden frame".utf8), k, salt: Self.salt)
        XCTAssertEqual(hex(frame), Self.goldenFrame)
        XCTAssertEqual(hex(k.seal(Array("chunk".utf8), .extentChunk, context: [7], salt: Self.salt)), Self.goldenExtentChunk)
        XCTAssertEqual(hex(k.seal(Array("chunk".utf8), .hashMapChunk, context: [7], salt: Self.salt)), Self.goldenMapChunk)
        XCTAssertEqual(hex(k.authenticator([[1, 2, 3]], length: 32)), Self.goldenAuthenticator)
        let h = Array(UInt8(0)..<255).withUnsafeBytes { k.blockHash($0.baseAddress!, count: 255) }
        XCTAssertEqual(String(h.high, radix: 16) + "-" + String(h.low, radix: 16), Self.goldenBlockHash)
        let cheap = KeyWrapping.Cost(operations: 1, memory: 8192)
        XCTAssertEqual(KeyWrapping.wrappingKey(.passphrase("strata"), salt: Array(repeating: 1, count: 16), cost: cheap).map(hex), Self.goldenPassphraseKey)
        XCTAssertEqual(hex(KeyWrapping.wrap(master: Self.master, under: Self.master, nonce: Self.salt, associated: [1])), Self.goldenWrapped)
    }

    /// The same values from an implementation written apart from this one (Tools/seal-reference.py: Python's
    /// hashlib and the cryptography package), so the golden values are the documented construction's, not only
    /// this code's.
    func testGoldenValuesMatchAnIndependentImplementation() throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Tools/seal-reference.py").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [script]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "Tools/seal-reference.py failed (Tools/setup installs python3-cryptography)")
        XCTAssertEqual(text.split(separator: "\n").map(String.init), [Self.goldenFrame, Self.goldenExtentChunk, Self.goldenMapChunk, Self.goldenAuthenticator])
    }

    func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

    static let goldenFrame = "12601080f7d263a149ba9d169c490bfdfd0cf4404142434445464748494a4b4c4d4e4f50515253545556570d1c85e9fb4a5b1081c659bc54858f24"
    static let goldenExtentChunk = "2df2f1def4404142434445464748494a4b4c4d4e4f5051525354555657999a04abe143f290aeee8a38b6a542bb"
    static let goldenMapChunk = "352140930b404142434445464748494a4b4c4d4e4f5051525354555657a6e8b7adfe4ef15ed4b7cda4785f78d5"
    static let goldenAuthenticator = "8358e3b209fc80382d0806cf94935b21f9609b87d5b06d33c1fb0bc220a4a5b2"
    static let goldenBlockHash = "7a497e68214fb50a-6d6025b2da1141c0"
    static let goldenPassphraseKey: String? = "ba0435e7caf83ffe2a4551cd39a185a224593fb681f49c66fe767feb9f978a8d"
    static let goldenWrapped = "d4380773d4e57f1187fd8db5a3916b9d82abbfd7074c458d7228e75e15193d8f562b2ba8207f6b971d080a14ab2975b8"
}
