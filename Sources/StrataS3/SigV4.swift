// AWS Signature Version 4 for S3 requests (docs: "Authenticating Requests (AWS Signature Version 4)"): the
// canonical request, the string to sign and the signing key, over OpenSSL's SHA-256 and HMAC (CSeal). The
// payload is hashed and signed (x-amz-content-sha256), so the store refuses a body changed on the way.
import CSeal

struct SigV4 {
    let config: S3Config

    static func sha256Hex(_ data: UnsafeRawBufferPointer) -> String {
        var out = [UInt8](repeating: 0, count: 32)
        strata_sha256(&out, data.baseAddress, data.count)
        return hex(out)
    }

    static func sha256Hex(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { sha256Hex($0) } }

    static func hmac(_ key: [UInt8], _ text: String) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        let data = Array(text.utf8)
        strata_hmac_sha256(&out, key, key.count, data, data.count)
        return out
    }

    /// The headers to add to a request: x-amz-date, x-amz-content-sha256, the session token, Authorization.
    /// `headers` are those the request carries besides (each is signed); `path` is already URI-encoded.
    func sign(
        method: String, host: String, path: String, query: [(String, String)], headers: [(String, String)], payloadHash: String,
        now: (date: String, time: String)
    ) -> [(String, String)] {
        let amzDate = "\(now.date)T\(now.time)Z"
        var all = headers.map { ($0.0.lowercased(), $0.1.trimmingWhitespace) }
        all += [("host", host), ("x-amz-content-sha256", payloadHash), ("x-amz-date", amzDate)]
        if let token = config.credentials.sessionToken { all.append(("x-amz-security-token", token)) }
        all.sort { $0.0 < $1.0 }
        let signedHeaders = all.map(\.0).joined(separator: ";")
        let canonicalQuery = query.map { (Self.encode($0.0, encodeSlash: true), Self.encode($0.1, encodeSlash: true)) }.sorted { $0 < $1 }
            .map { "\($0.0)=\($0.1)" }.joined(separator: "&")
        let canonical = [method, path, canonicalQuery, all.map { "\($0.0):\($0.1)\n" }.joined(), signedHeaders, payloadHash].joined(separator: "\n")
        let scope = "\(now.date)/\(config.region)/s3/aws4_request"
        let toSign = "AWS4-HMAC-SHA256\n\(amzDate)\n\(scope)\n\(Self.sha256Hex(Array(canonical.utf8)))"
        var key = Self.hmac(Array("AWS4\(config.credentials.secretKey)".utf8), now.date)
        for part in [config.region, "s3", "aws4_request"] { key = Self.hmac(key, part) }
        let signature = hex(Self.hmac(key, toSign))
        var out: [(String, String)] = [("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash)]
        if let token = config.credentials.sessionToken { out.append(("x-amz-security-token", token)) }
        out.append((
            "authorization",
            "AWS4-HMAC-SHA256 Credential=\(config.credentials.accessKey)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
        ))
        return out
    }

    /// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters kept, "/" kept in paths.
    static func encode(_ s: String, encodeSlash: Bool) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            case UInt8(ascii: "/") where !encodeSlash:
                out += "/"
            default:
                out += "%" + hex([b]).uppercased()
            }
        }
        return out
    }
}

func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for b in bytes { out += [digits[Int(b >> 4)], digits[Int(b & 15)]] }
    return String(decoding: out, as: UTF8.self)
}
