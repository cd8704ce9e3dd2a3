// What encryption adds to the format (feature bit 2; docs/FORMAT.md, "Encrypted chains"): the key file, the header's
// authenticator, the sealed bit of frame records and hash-map chunks, and the lengths sealed chunks take. Pinned
// by golden files; the cryptography itself is pinned in StrataCodecTests/SealingTests.
import XCTest

@testable import StrataFormat

final class EncryptionFormatTests: XCTestCase {
    static var keyFile: ChainKeyFile {
        ChainKeyFile(
            chainID: Fixtures.chainID, wrapping: .passphrase, operations: 3, memory: 268_435_456, salt: Array(0..<16), nonce: Array(16..<40),
            wrapped: Array(40..<88))
    }

    func testKeyFileRoundTripAndGolden() throws {
        let bytes = Self.keyFile.encode()
        XCTAssertEqual(try ChainKeyFile.decode(bytes), Self.keyFile)
        try assertGolden(bytes, "chain-key-v1.txt")
        XCTAssertEqual(Self.keyFile.associatedData, Array("strata-key 1".utf8) + Fixtures.chainID.bytes)
        var k = Self.keyFile
        k.wrapping = .keyFile
        (k.operations, k.memory) = (0, 0)
        XCTAssertEqual(try ChainKeyFile.decode(k.encode()), k)
    }

    func testKeyFileRefusesWhatItCannotUse() {
        let text = String(decoding: Self.keyFile.encode(), as: UTF8.self)
        func reencoded(_ edit: (String) -> String) -> [UInt8] {
            SealedText.seal(edit(String(text[..<text.range(of: "crc32c ")!.lowerBound])))
        }
        XCTAssertThrowsError(try ChainKeyFile.decode(Array(text.replacingOccurrences(of: "aes-256-gcm", with: "aes-256-gcn").utf8))) { e in
            XCTAssertEqual(e as? FormatError, .checksumMismatch("chain key file"), "an edited file fails its CRC")
        }
        XCTAssertThrowsError(try ChainKeyFile.decode(reencoded { $0.replacingOccurrences(of: "aes-256-gcm", with: "chacha20") })) { e in
            XCTAssertEqual(e as? FormatError, .unsupported("cipher chacha20"))
        }
        XCTAssertThrowsError(try ChainKeyFile.decode(reencoded { $0.replacingOccurrences(of: "argon2id-ops 3", with: "argon2id-ops 0") })) { e in
            XCTAssertEqual(e as? FormatError, .invalid("chain key file lacks a field or has a malformed one"), "a passphrase needs a cost")
        }
        XCTAssertThrowsError(try ChainKeyFile.decode(reencoded { $0.replacingOccurrences(of: "salt 00", with: "salt ") })) { e in
            XCTAssertEqual(e as? FormatError, .invalid("chain key file lacks a field or has a malformed one"))
        }
    }

    static var encryptedHeader: ImageHeader {
        var h = Fixtures.header
        h.incompatibleFeatures = ImageFeatures.chunkedIndex | ImageFeatures.encrypted
        h.indexLength = TopIndex.maxEncodedLength(frames: h.frameCount, extents: h.extentCount)
        h.indexOffset = h.fileSize - h.indexLength
        h.authenticator = Array(0xA0..<0xC0)
        return h
    }

    func testEncryptedHeaderRoundTripAndGolden() throws {
        let h = Self.encryptedHeader
        let bytes = h.encode()
        XCTAssertEqual(Array(bytes[192..<224]), Array(0xA0..<0xC0), "the authenticator at byte 192")
        XCTAssertEqual(try ImageHeader.decode(bytes), h)
        XCTAssertTrue(try ImageHeader.decode(bytes).isEncrypted)
        try assertGolden(bytes, "image-header-encrypted-v1.bin")
        var plain = Fixtures.header
        plain.authenticator = h.authenticator
        XCTAssertThrowsError(try ImageHeader.decode(plain.encode()), "an authenticator without the encrypted bit is damage")
        var unchunked = h
        unchunked.incompatibleFeatures = ImageFeatures.encrypted
        unchunked.indexLength = Fixtures.header.indexLength
        unchunked.indexOffset = Fixtures.header.indexOffset
        XCTAssertThrowsError(try ImageHeader.decode(unchunked.encode()), "encrypted images have chunked indexes")
    }

    func testSealedBitsRoundTrip() throws {
        let r = FrameRecord(offset: 8192, length: 4096 + 16 + 40, blockCount: 1, codec: .raw, checksum: 5, sealed: true)
        XCTAssertEqual(r.payloadLength, 4096, "a sealed frame's salt and tag are not payload")
        XCTAssertTrue(r.fitsItsBlocks(blockSize: 4096))
        var w = ByteWriter()
        r.encode(into: &w)
        XCTAssertEqual(w.bytes[16], 0x80, "bit 7 of the codec byte")
        var reader = ByteReader(w.bytes, what: "record")
        XCTAssertEqual(try FrameRecord.decode(&reader, number: 0), r)
        let c = HashMapChunkHeader(storedLength: 100, codec: .zstd, checksum: 9, sealed: true)
        XCTAssertEqual(c.encode()[4], 0x81)
        XCTAssertEqual(try HashMapChunkHeader.decode(c.encode()), c)
        XCTAssertEqual(Sealing.chunkOverhead(encrypted: true).frames, 16)
        XCTAssertEqual(Sealing.chunkOverhead(encrypted: true).extents, 40)
        XCTAssertEqual(IndexChunks.indexLength(frames: 1, extents: 1, encrypted: true), IndexChunks.indexLength(frames: 1, extents: 1) + 56)
    }
}
