// The S3 client: SigV4 against AWS's own worked examples, then every request Strata makes against a real store
// (Ceph's RADOS Gateway, started by Tools/rgw-start for this suite and stopped after it).
import Foundation
import NIOCore
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif


@testable import StrataS3

final class SigV4Tests: XCTestCase {
    /// AWS's examples ("Signature Calculations for the Authorization Header: Transferring Payload in a Single Chunk").
    let signer = SigV4(config: S3Config(
        endpoint: "https://examplebucket.s3.amazonaws.com", region: "us-east-1",
        credentials: S3Credentials(accessKey: "AKIAIOSFODNN7EXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")))
    let now = (date: "20130524", time: "000000")
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    func signature(_ headers: [(String, String)]) -> String {
        String(headers.first { $0.0 == "authorization" }!.1.split(separator: "=").last!)
    }

    /// The date SigV4 signs with, computed without libc, at the edges of leap years and centuries.
    func testUTCDateAndTime() {
        let cases: [(UInt64, String, String)] = [
            (0, "19700101", "000000"), (951_782_400, "20000229", "000000"), (1_709_251_199, "20240229", "235959"),
            (4_102_444_800, "21000101", "000000"), (1_798_847_999, "20270101", "235959"),
        ]
        for (t, date, time) in cases {
            let got = S3Client.utc(t)
            XCTAssertEqual(got.date, date, "\(t)")
            XCTAssertEqual(got.time, time, "\(t)")
        }
    }

    func testGetObjectExample() {
        let h = signer.sign(method: "GET", host: "examplebucket.s3.amazonaws.com", path: "/test.txt", query: [], headers: [("Range", "bytes=0-9")], payloadHash: empty, now: now)
        XCTAssertEqual(signature(h), "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    func testPutObjectExample() {
        let body = Array("Welcome to Amazon S3.".utf8)
        let hash = SigV4.sha256Hex(body)
        XCTAssertEqual(hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        let h = signer.sign(
            method: "PUT", host: "examplebucket.s3.amazonaws.com", path: "/" + SigV4.encode("test$file.text", encodeSlash: false), query: [],
            headers: [("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-storage-class", "REDUCED_REDUNDANCY")], payloadHash: hash, now: now)
        XCTAssertEqual(signature(h), "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    }

    func testListObjectsExample() {
        let h = signer.sign(
            method: "GET", host: "examplebucket.s3.amazonaws.com", path: "/", query: [("max-keys", "2"), ("prefix", "J")], headers: [], payloadHash: empty, now: now)
        XCTAssertEqual(signature(h), "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    }

    func testConfigurationFromEnvironmentAndProfiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("strata-s3cfg-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: "\(dir)/.aws", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n[other]\naws_access_key_id=OTHER\naws_secret_access_key=o\n"
            .write(toFile: "\(dir)/.aws/credentials", atomically: true, encoding: .utf8)
        try "[default]\nregion = eu-west-3\n[profile other]\nregion=ap-south-1\nendpoint_url = http://127.0.0.1:9000\n"
            .write(toFile: "\(dir)/.aws/config", atomically: true, encoding: .utf8)
        let fromFiles = try S3Config.fromEnvironment(["HOME": dir])
        XCTAssertEqual(fromFiles.credentials, S3Credentials(accessKey: "FILEKEY", secretKey: "filesecret"))
        XCTAssertEqual(fromFiles.region, "eu-west-3")
        XCTAssertEqual(fromFiles.endpoint, "https://s3.eu-west-3.amazonaws.com")
        let other = try S3Config.fromEnvironment(["HOME": dir, "AWS_PROFILE": "other"])
        XCTAssertEqual(other.credentials.accessKey, "OTHER")
        XCTAssertEqual(other.endpoint, "http://127.0.0.1:9000")
        let env = try S3Config.fromEnvironment([
            "HOME": dir, "AWS_ACCESS_KEY_ID": "ENV", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t", "AWS_DEFAULT_REGION": "us-west-2",
            "AWS_ENDPOINT_URL": "http://a:1/", "AWS_ENDPOINT_URL_S3": "http://b:2/",
        ])
        XCTAssertEqual(env.credentials, S3Credentials(accessKey: "ENV", secretKey: "s", sessionToken: "t"))
        XCTAssertEqual(env.region, "us-west-2")
        XCTAssertEqual(env.endpoint, "http://b:2", "the S3-specific endpoint wins")
        XCTAssertThrowsError(try S3Config.fromEnvironment(["HOME": "/nonexistent"])) {
            XCTAssertEqual($0 as? S3Error, .configuration("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the default profile in ~/.aws/credentials"))
        }
    }

    func testLocations() {
        XCTAssertEqual(S3Location("s3://backups/host1/sdb"), S3Location(bucket: "backups", prefix: "host1/sdb/"))
        XCTAssertEqual(S3Location("s3://backups/sdb/"), S3Location(bucket: "backups", prefix: "sdb/"))
        for bad in ["s3://backups", "s3://backups/", "s3://Up/x", "s3://ab/x", "s3://b-1/../x", "/backup/sdb"] { XCTAssertNil(S3Location(bad), bad) }
    }
}

final class S3ClientTests: XCTestCase {
    nonisolated(unsafe) static var rgw: RGW?
    nonisolated(unsafe) static var startFailure: Error?
    override class func setUp() {
        do { rgw = try RGW.start() } catch { startFailure = error }
    }
    override class func tearDown() { rgw?.stop() }

    var client: S3Client!
    let bucket = "strata-client-\(UUID().uuidString.prefix(8).lowercased())"

    override func setUpWithError() throws {
        if let e = Self.startFailure { throw e }
        client = S3Client(Self.rgw!.config)
        try client.createBucket(bucket)
    }

    func put(_ key: String, _ bytes: [UInt8], _ c: S3Client.Condition = .none) throws -> String {
        try bytes.withUnsafeBytes { try client.put(bucket: bucket, key: key, $0, condition: c) }
    }

    func testObjectsRangesAndListing() throws {
        let data = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        _ = try put("chain/p1 with space+plus.strata", data)
        _ = try put("chain/chain.manifest", Array("m".utf8))
        _ = try put("other/x", [1])
        XCTAssertEqual(try client.head(bucket: bucket, key: "chain/p1 with space+plus.strata")?.size, 100_000)
        XCTAssertNil(try client.head(bucket: bucket, key: "chain/missing"))
        XCTAssertEqual(try client.get(bucket: bucket, key: "chain/p1 with space+plus.strata").bytes, data)
        var out = [UInt8](repeating: 0, count: 1000)
        let n = try out.withUnsafeMutableBytes { try client.get(bucket: bucket, key: "chain/p1 with space+plus.strata", into: $0.baseAddress!, count: 1000, at: 99_500) }
        XCTAssertEqual(n, 500, "fewer at the end")
        XCTAssertEqual(Array(out[0..<500]), Array(data[99_500...]))
        XCTAssertEqual(try client.list(bucket: bucket, prefix: "chain/").map(\.key).sorted(), ["chain/chain.manifest", "chain/p1 with space+plus.strata"])
        try client.delete(bucket: bucket, key: "chain/chain.manifest")
        try client.delete(bucket: bucket, key: "chain/chain.manifest")  // twice: no error
        XCTAssertEqual(try client.list(bucket: bucket, prefix: "chain/").count, 1)
        XCTAssertThrowsError(try client.get(bucket: bucket, key: "chain/missing")) { XCTAssertTrue(($0 as? S3Error)?.isNotFound ?? false) }
    }

    func testConditionalPutsMakeOneWinner() throws {
        let first = try put("m", [1], .absent)
        XCTAssertThrowsError(try put("m", [2], .absent)) { XCTAssertTrue(($0 as? S3Error)?.isPreconditionFailed ?? false, "\($0)") }
        let second = try put("m", [3], .etag(first))
        XCTAssertThrowsError(try put("m", [4], .etag(first)), "a stale ETag loses") { XCTAssertTrue(($0 as? S3Error)?.isPreconditionFailed ?? false) }
        XCTAssertEqual(try client.get(bucket: bucket, key: "m").bytes, [3])
        XCTAssertEqual(try client.head(bucket: bucket, key: "m")?.etag, second)
    }

    func testMultipartUploadCopyAndAbort() throws {
        let part = 5 << 20
        let a = [UInt8](repeating: 0xA1, count: part), b = [UInt8](repeating: 0xB2, count: 1000)
        let id = try client.startMultipart(bucket: bucket, key: "big")
        XCTAssertEqual(try client.unfinishedUploads(bucket: bucket, prefix: "").map(\.uploadID), [id])
        let e1 = try client.uploadPart(bucket: bucket, key: "big", uploadID: id, number: 1, ByteBuffer(bytes: a))
        let e2 = try client.uploadPart(bucket: bucket, key: "big", uploadID: id, number: 2, ByteBuffer(bytes: b))
        XCTAssertNil(try client.head(bucket: bucket, key: "big"), "invisible until complete")
        try client.completeMultipart(bucket: bucket, key: "big", uploadID: id, parts: [e1, e2])
        XCTAssertEqual(try client.get(bucket: bucket, key: "big").bytes, a + b)
        XCTAssertTrue(try client.unfinishedUploads(bucket: bucket, prefix: "").isEmpty)
        // Server-side copy of byte ranges.
        let id2 = try client.startMultipart(bucket: bucket, key: "copy")
        let c1 = try client.uploadPartCopy(bucket: bucket, key: "copy", uploadID: id2, number: 1, source: "big", range: 10..<UInt64(part + 10))
        let c2 = try client.uploadPartCopy(bucket: bucket, key: "copy", uploadID: id2, number: 2, source: "big", range: UInt64(part)..<UInt64(part + 500))
        try client.completeMultipart(bucket: bucket, key: "copy", uploadID: id2, parts: [c1, c2])
        XCTAssertEqual(try client.get(bucket: bucket, key: "copy").bytes, Array((a + b)[10..<(part + 10)]) + Array(b[0..<500]))
        let id3 = try client.startMultipart(bucket: bucket, key: "dropped")
        try client.abortMultipart(bucket: bucket, key: "dropped", uploadID: id3)
        XCTAssertTrue(try client.unfinishedUploads(bucket: bucket, prefix: "").isEmpty)
    }

    func testRefusalsAreNamed() throws {
        var wrong = Self.rgw!.config
        wrong.credentials.secretKey = "not-the-secret"
        XCTAssertThrowsError(try S3Client(wrong).list(bucket: bucket, prefix: "")) { e in
            XCTAssertEqual((e as? S3Error)?.httpStatus, 403, "\(e)")
        }
        XCTAssertFalse(try client.bucketExists("strata-no-such-bucket"))
        let down = S3Client(S3Config(endpoint: "http://127.0.0.1:9", region: "us-east-1", credentials: Self.rgw!.config.credentials), connectTimeout: 1)
        down.attempts = 2
        XCTAssertThrowsError(try down.list(bucket: bucket, prefix: "")) { e in
            guard case .unreachable = e as? S3Error else { return XCTFail("\(e)") }
        }
    }
}
