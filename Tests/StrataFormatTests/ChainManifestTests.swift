import XCTest

@testable import StrataFormat

final class ChainManifestTests: XCTestCase {
    func testRoundTripAndGolden() throws {
        let bytes = Fixtures.manifest.encode()
        XCTAssertEqual(try ChainManifest.decode(bytes), Fixtures.manifest)
        try assertGolden(bytes, "chain-manifest-v1.txt")
    }

    func testPointsAndImagesForPoint() {
        let m = Fixtures.manifest
        XCTAssertEqual(m.points, [1, 3])
        XCTAssertEqual(m.images(forPoint: 3)?.map(\.file), ["p000001.strata", "p000002-000003.strata"])
        XCTAssertNil(m.images(forPoint: 2))
    }

    func testTamperingIsDetected() {
        var text = String(decoding: Fixtures.manifest.encode(), as: UTF8.self)
        text = text.replacingOccurrences(of: "source-size 40000", with: "source-size 40001")
        XCTAssertThrowsError(try ChainManifest.decode(Array(text.utf8))) {
            XCTAssertEqual($0 as? FormatError, .checksumMismatch("chain manifest"))
        }
    }

    func testTornAndForeignFiles() {
        let bytes = Fixtures.manifest.encode()
        XCTAssertThrowsError(try ChainManifest.decode(Array(bytes[0..<(bytes.count - 5)])))
        XCTAssertThrowsError(try ChainManifest.decode(Array("hello\n".utf8))) {
            XCTAssertEqual($0 as? FormatError, .badMagic("chain manifest"))
        }
    }

    func testFileNamesCannotEscapeTheChain() {
        var m = Fixtures.manifest
        m.images[0].file = "../etc/passwd"
        XCTAssertThrowsError(try ChainManifest.decode(m.encode())) {
            XCTAssertEqual($0 as? FormatError, .invalid("chain manifest has a malformed image line"))
        }
    }

    /// Found by the fuzzer (Fuzz/corpus/regression-manifest-*): a line of spaces behind a valid checksum trapped
    /// on `parts[0]`; it is a malformed line.
    func testALineOfSpacesIsMalformedNotACrash() {
        var body = Array("strata-chain 1\n    \nchain 00\n".utf8)
        let crc = String(CRC32C.checksum(body), radix: 16)
        body += Array("crc32c \(String(repeating: "0", count: 8 - crc.count))\(crc)\n".utf8)
        XCTAssertThrowsError(try ChainManifest.decode(body)) {
            XCTAssertEqual($0 as? FormatError, .invalid("chain manifest has a malformed line"))
        }
    }

    func testAbsurdSourceSizeIsRefused() {
        var m = Fixtures.manifest
        m.sourceSize = ImageHeader.maxSourceSize + 1
        XCTAssertThrowsError(try ChainManifest.decode(m.encode())) {
            XCTAssertEqual($0 as? FormatError, .invalid("chain manifest source size is implausible"))
        }
    }

    /// What a change source's captures add: the map's own point, what found each point's changes, the reflink
    /// baseline's record. Written only where set (the v1 golden above has none of them); what is recorded of a
    /// point no image makes any more is not written.
    func testChangeRecordsRoundTripAndOlderManifestsHaveNone() throws {
        var m = Fixtures.manifest
        XCTAssertNil(m.hashMapPoint)
        XCTAssertEqual(m.changeSources, [:])
        m.hashMapPoint = 1
        m.changeSources = [1: "scan", 2: "gone", 3: "reflink"]
        m.reflinkBaseline = "3:131:40000:1796603683301309538"
        let text = String(decoding: m.encode(), as: UTF8.self)
        XCTAssertTrue(text.contains("\nhash-map-point 1\n"), text)
        XCTAssertTrue(text.contains("\nreflink-baseline 3:131:40000:1796603683301309538\nchanges-1 scan\nchanges-3 reflink\nimage "), text)
        XCTAssertFalse(text.contains("changes-2"), text)
        m.dropRecordsOfUnlistedPoints()
        XCTAssertEqual(try ChainManifest.decode(m.encode()), m)
        m.hashMapPoint = 4
        XCTAssertThrowsError(try ChainManifest.decode(m.encode())) {
            XCTAssertEqual($0 as? FormatError, .invalid("chain manifest names a malformed hash map point"))
        }
    }
}
