// The requests Strata makes of an S3-compatible store, over async-http-client (SwiftNIO; TLS through swift-nio-ssl),
// each signed with SigV4, retried with exponential backoff and full jitter on 5xx answers (SlowDown included) and
// on connection failures, a bounded number of times. Synchronous by design: Strata's pipelines are threads, and
// each call blocks its thread (never an event loop's) until the answer.
//
// Why async-http-client and not libcurl (which signs SigV4 itself): Strata ships one static executable, and
// Debian's libcurl cannot be linked statically (libnghttp2, librtmp, libssh2, libpsl, GSSAPI and LDAP have no
// static libraries there); async-http-client is Swift and links in like the rest.
import AsyncHTTPClient
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

import StrataIO

public final class S3Client: @unchecked Sendable {  // `down` and `received` are guarded by `stateLock`; `attempts` is set before first use; HTTPClient is thread-safe
    public let config: S3Config
    private let http: HTTPClient
    private let signer: SigV4
    private let host: String
    /// Attempts a request gets (the first and the retries).
    public var attempts = 6
    /// Whether the last request found the store down after all its attempts, and the body bytes of every answer
    /// so far (what this client downloaded); under `stateLock`.
    private var down = false
    private var received: UInt64 = 0
    private let stateLock = NIOLock()
    public var bytesReceived: UInt64 { stateLock.withLock { received } }
    /// `STRATA_S3_TRACE=1`: one line on stderr per request (method, object, range, status, bytes, milliseconds).
    private let trace = Sys.environment("STRATA_S3_TRACE") == "1"

    /// `connectTimeout`: how long one attempt waits to connect (async-http-client keeps trying a refused
    /// connection until then); with the retries, a store that is down fails a command in about 20 s.
    /// `stallTimeout`: how long an attempt waits for the next byte either way (a store that accepts and stops, an
    /// OSD that is full) before it counts as failed.
    public init(_ config: S3Config, connections: Int = 16, connectTimeout: Int64 = 3, stallTimeout: Int64 = 60) {
        self.config = config
        signer = SigV4(config: config)
        host = String(config.endpoint.drop { $0 != "/" }.dropFirst(2))
        var c = HTTPClient.Configuration(
            redirectConfiguration: .disallow, timeout: .init(connect: .seconds(connectTimeout), read: .seconds(stallTimeout), write: .seconds(stallTimeout)),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: connections))
        c.decompression = .disabled
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
    }

    deinit { try? http.syncShutdown() }

    /// One answer: status, headers (names lower-case) and body.
    public struct Response {
        public var status: Int
        public var headers: [String: String]
        /// The answer's bytes where async-http-client left them (read from here, not copied out first).
        public var buffer: ByteBuffer?
        public var body: [UInt8] { buffer.map { Array($0.readableBytesView) } ?? [] }

        public var etag: String? { headers["etag"].map(S3Client.bareETag) }
    }

    /// An ETag without its quotes (Ceph RGW compares If-Match against the bare value).
    static func bareETag(_ e: String) -> String { e.count >= 2 && e.hasPrefix("\"") && e.hasSuffix("\"") ? String(e.dropFirst().dropLast()) : e }

    /// Sends a request and returns its answer when the status is one of `ok`; otherwise throws `S3Error.status`
    /// (after retries for those worth retrying).
    @discardableResult
    public func request(
        _ method: HTTPMethod, bucket: String, key: String = "", query: [(String, String)] = [], headers: [(String, String)] = [],
        body: UnsafeRawBufferPointer? = nil, ok: Set<Int> = [200, 204, 206]
    ) throws -> Response {
        try request(method, bucket: bucket, key: key, query: query, headers: headers, payload: ByteBuffer(bytes: body ?? UnsafeRawBufferPointer(start: nil, count: 0)), ok: ok)
    }

    /// `request` with the payload in a buffer already (a part of an upload: sent from where it lies, no copy).
    @discardableResult
    public func request(
        _ method: HTTPMethod, bucket: String, key: String = "", query: [(String, String)] = [], headers: [(String, String)] = [],
        payload: ByteBuffer, ok: Set<Int> = [200, 204, 206]
    ) throws -> Response {
        let path = "/" + SigV4.encode(bucket, encodeSlash: true) + (key.isEmpty ? "" : "/" + SigV4.encode(key, encodeSlash: false))
        let queryText = query.map { "\(SigV4.encode($0.0, encodeSlash: true))=\(SigV4.encode($0.1, encodeSlash: true))" }.joined(separator: "&")
        let url = config.endpoint + path + (queryText.isEmpty ? "" : "?" + queryText)
        // One buffer for every attempt, hashed where it lies.
        let payloadHash = payload.withUnsafeReadableBytes { SigV4.sha256Hex($0) }
        let hasBody = payload.readableBytes > 0 || method == .PUT || method == .POST
        let what = "\(method.rawValue) s3://\(bucket)/\(key)"
        var delay = 0.1
        // Once a request found the store down after every attempt, the next ones try once (a command that failed
        // still releases its lease and aborts its upload: each would wait as long again).
        let attempts = stateLock.withLock { down } ? 1 : self.attempts
        for attempt in 1...attempts {
            // Another request gave up on the store meanwhile: so does this one (parts in flight fail together).
            if attempt > 1 && stateLock.withLock({ down }) {
                throw S3Error.unreachable("\(what): \(config.endpoint) did not answer")
            }
            var all = headers
            all += signer.sign(method: method.rawValue, host: host, path: path, query: query, headers: headers, payloadHash: payloadHash, now: Self.now())
            if hasBody { all.append(("content-length", String(payload.readableBytes))) }
            do {
                var r = try HTTPClient.Request(url: url, method: method, headers: HTTPHeaders(all))
                if hasBody { r.body = .byteBuffer(payload) }
                let sent = trace ? Self.nanos() : 0
                let answer = try http.execute(request: r).wait()
                if trace {
                    let range = headers.first { $0.0 == "range" }.map { " \($0.1)" } ?? ""
                    let line = "s3 \(what)\(query.isEmpty ? "" : "?" + queryText)\(range) \(answer.status.code) out \(payload.readableBytes) in \(answer.body?.readableBytes ?? 0) \(Double(Self.nanos() - sent) / 1e6) ms\n"
                    Sys.writeStandardError(line)
                }
                var h: [String: String] = [:]
                for (name, value) in answer.headers { h[name.lowercased()] = value }
                let status = Int(answer.status.code)
                stateLock.withLock {
                    down = false
                    received += UInt64(answer.body?.readableBytes ?? 0)
                }
                if ok.contains(status) { return Response(status: status, headers: h, buffer: answer.body) }
                let text = answer.body.map { String(decoding: $0.readableBytesView, as: UTF8.self) } ?? ""
                let error = S3Error.status(status, code: S3XML.value(text, "Code") ?? "", message: S3XML.value(text, "Message") ?? "", request: what)
                guard status >= 500 && attempt < attempts else { throw error }
            } catch let e as S3Error {
                throw e
            } catch {
                guard attempt < attempts else {
                    stateLock.withLock { down = true }
                    throw S3Error.unreachable("\(what): \(config.endpoint) did not answer (\(error)) after \(attempts) attempts")
                }
            }
            // Full jitter: a random wait up to the doubled delay, capped at 5 s.
            Sys.sleep(seconds: Double.random(in: 0...delay))
            delay = min(delay * 2, 5)
        }
        preconditionFailure("unreachable")
    }

    static func nanos() -> UInt64 { Sys.monotonicNanos() }

    /// UTC date (YYYYMMDD) and time (HHMMSS) now.
    static func now() -> (date: String, time: String) { utc(Sys.wallClockSeconds) }

    /// UTC date (YYYYMMDD) and time (HHMMSS) of `seconds` since 1970, by the proleptic Gregorian calendar (the
    /// days-to-civil algorithm of Howard Hinnant's date library: no time zone, no libc).
    static func utc(_ seconds: UInt64) -> (date: String, time: String) {
        let days = Int64(seconds / 86400), rest = Int(seconds % 86400)
        let z = days + 719_468
        let era = z / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return ("\(year)\(two(month))\(two(day))", "\(two(Int64(rest / 3600)))\(two(Int64(rest / 60 % 60)))\(two(Int64(rest % 60)))")
    }

    // MARK: Objects

    public struct Head: Sendable, Equatable {
        public var size: UInt64
        public var etag: String
    }

    /// Size and ETag of an object; nil when it does not exist.
    public func head(bucket: String, key: String) throws -> Head? {
        do {
            let r = try request(.HEAD, bucket: bucket, key: key)
            return Head(size: UInt64(r.headers["content-length"] ?? "") ?? 0, etag: r.etag ?? "")
        } catch let e as S3Error where e.isNotFound { return nil }
    }

    /// A whole object, with its ETag.
    public func get(bucket: String, key: String) throws -> (bytes: [UInt8], etag: String) {
        let r = try request(.GET, bucket: bucket, key: key)
        return (r.body, r.etag ?? "")
    }

    /// `count` bytes from `offset` (fewer at the object's end) into `buffer`; returns how many.
    public func get(bucket: String, key: String, into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        guard count > 0 else { return 0 }
        let r = try request(.GET, bucket: bucket, key: key, headers: [("range", "bytes=\(offset)-\(offset + UInt64(count) - 1)")], ok: [200, 206, 416])
        if r.status == 416 { return 0 }  // from the object's end on: nothing, as a read at the end of a file
        // A 200 (the store ignored the range) carries the whole object. Copied once, from where it arrived.
        guard let answer = r.buffer else { return 0 }
        let skip = r.status == 200 ? Int(min(offset, UInt64(answer.readableBytes))) : 0
        let n = min(count, answer.readableBytes - skip)
        answer.withUnsafeReadableBytes { buffer.copyMemory(from: $0.baseAddress! + skip, byteCount: n) }
        return n
    }

    /// How a PUT is conditioned: on nothing, on no object existing, or on the object's ETag being this one.
    public enum Condition: Sendable, Equatable {
        case none, absent, etag(String)
    }

    /// Stores an object whole; returns its ETag. A failed condition throws a 412 `S3Error`.
    @discardableResult
    public func put(bucket: String, key: String, _ bytes: UnsafeRawBufferPointer, condition: Condition = .none) throws -> String {
        var headers: [(String, String)] = []
        switch condition {
        case .none: break
        case .absent: headers.append(("if-none-match", "*"))
        case .etag(let e): headers.append(("if-match", e))
        }
        return try request(.PUT, bucket: bucket, key: key, headers: headers, body: bytes).etag ?? ""
    }

    public func delete(bucket: String, key: String) throws {
        try request(.DELETE, bucket: bucket, key: key, ok: [200, 204, 404])
    }

    public struct Listed: Sendable, Equatable {
        public var key: String
        public var size: UInt64
    }

    /// Every object whose key starts with `prefix` (ListObjectsV2, page after page).
    public func list(bucket: String, prefix: String) throws -> [Listed] {
        var out: [Listed] = []
        var token: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", prefix)]
            if let token { query.append(("continuation-token", token)) }
            let text = String(decoding: try request(.GET, bucket: bucket, query: query).body, as: UTF8.self)
            for c in S3XML.blocks(text, "Contents") {
                guard let key = S3XML.value(c, "Key") else { continue }
                out.append(Listed(key: key, size: UInt64(S3XML.value(c, "Size") ?? "") ?? 0))
            }
            token = S3XML.value(text, "IsTruncated") == "true" ? S3XML.value(text, "NextContinuationToken") : nil
        } while token != nil
        return out
    }

    /// Whether the bucket exists (and these credentials may use it).
    public func bucketExists(_ bucket: String) throws -> Bool {
        do {
            try request(.HEAD, bucket: bucket)
            return true
        } catch let e as S3Error where e.isNotFound { return false }
    }

    public func createBucket(_ bucket: String) throws {
        try request(.PUT, bucket: bucket, body: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    // MARK: Multipart uploads

    public func startMultipart(bucket: String, key: String) throws -> String {
        let text = String(decoding: try request(.POST, bucket: bucket, key: key, query: [("uploads", "")]).body, as: UTF8.self)
        guard let id = S3XML.value(text, "UploadId") else { throw S3Error.status(200, code: "", message: "no UploadId in the answer", request: "POST s3://\(bucket)/\(key)?uploads") }
        return id
    }

    /// Uploads part `number` (1-based) from the readable bytes of `part`; returns its ETag.
    public func uploadPart(bucket: String, key: String, uploadID: String, number: Int, _ part: ByteBuffer) throws -> String {
        try request(.PUT, bucket: bucket, key: key, query: [("partNumber", String(number)), ("uploadId", uploadID)], payload: part).etag ?? ""
    }

    /// Stores an object whole from the readable bytes of `bytes`; returns its ETag.
    @discardableResult
    public func put(bucket: String, key: String, _ bytes: ByteBuffer) throws -> String {
        try request(.PUT, bucket: bucket, key: key, payload: bytes).etag ?? ""
    }

    /// Part `number` copied server-side from bytes `range` of another object; returns its ETag.
    public func uploadPartCopy(
        bucket: String, key: String, uploadID: String, number: Int, source: String, range: Range<UInt64>
    ) throws -> String {
        let r = try request(
            .PUT, bucket: bucket, key: key, query: [("partNumber", String(number)), ("uploadId", uploadID)],
            headers: [("x-amz-copy-source", "/\(bucket)/\(SigV4.encode(source, encodeSlash: false))"),
                      ("x-amz-copy-source-range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)")],
            body: UnsafeRawBufferPointer(start: nil, count: 0))
        // An error can come inside a 200 (the copy failed after the answer began).
        let text = String(decoding: r.body, as: UTF8.self)
        guard let etag = S3XML.value(text, "ETag"), !text.contains("<Error>") else {
            throw S3Error.status(500, code: S3XML.value(text, "Code") ?? "", message: S3XML.value(text, "Message") ?? "no ETag in the answer", request: "copy s3://\(bucket)/\(source) to part \(number) of s3://\(bucket)/\(key)")
        }
        return Self.bareETag(etag)
    }

    /// Makes the object visible from its parts, in order.
    public func completeMultipart(bucket: String, key: String, uploadID: String, parts: [String]) throws {
        var xml = "<CompleteMultipartUpload>"
        for (i, etag) in parts.enumerated() { xml += "<Part><PartNumber>\(i + 1)</PartNumber><ETag>\"\(etag)\"</ETag></Part>" }
        xml += "</CompleteMultipartUpload>"
        let bytes = Array(xml.utf8)
        let r = try bytes.withUnsafeBytes { try request(.POST, bucket: bucket, key: key, query: [("uploadId", uploadID)], body: $0) }
        // An error can come inside a 200 (the store failed while completing).
        let text = String(decoding: r.body, as: UTF8.self)
        if let code = S3XML.value(text, "Code"), text.contains("<Error>") {
            throw S3Error.status(500, code: code, message: S3XML.value(text, "Message") ?? "", request: "complete s3://\(bucket)/\(key)")
        }
    }

    public func abortMultipart(bucket: String, key: String, uploadID: String) throws {
        try request(.DELETE, bucket: bucket, key: key, query: [("uploadId", uploadID)], ok: [200, 204, 404])
    }

    /// Unfinished multipart uploads under `prefix`: key and upload id.
    public func unfinishedUploads(bucket: String, prefix: String) throws -> [(key: String, uploadID: String)] {
        let text = String(decoding: try request(.GET, bucket: bucket, query: [("uploads", ""), ("prefix", prefix)]).body, as: UTF8.self)
        return S3XML.blocks(text, "Upload").compactMap { u in
            guard let k = S3XML.value(u, "Key"), let id = S3XML.value(u, "UploadId") else { return nil }
            return (k, id)
        }
    }
}
