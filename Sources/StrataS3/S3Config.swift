// Where an S3-compatible store is and who we are to it, found the way the AWS tools find it: the environment
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 /
// AWS_ENDPOINT_URL, AWS_PROFILE), then the profile's sections of ~/.aws/credentials and ~/.aws/config
// (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE move them). Requests use path-style addressing
// (ENDPOINT/BUCKET/KEY), which every S3-compatible store serves.
import StrataIO

public struct S3Credentials: Sendable, Equatable {
    public var accessKey: String
    public var secretKey: String
    public var sessionToken: String?

    public init(accessKey: String, secretKey: String, sessionToken: String? = nil) {
        (self.accessKey, self.secretKey, self.sessionToken) = (accessKey, secretKey, sessionToken)
    }
}

public struct S3Config: Sendable, Equatable {
    /// scheme://host[:port], no trailing slash.
    public var endpoint: String
    public var region: String
    public var credentials: S3Credentials

    public init(endpoint: String, region: String, credentials: S3Credentials) {
        var e = endpoint
        while e.hasSuffix("/") { e.removeLast() }
        (self.endpoint, self.region, self.credentials) = (e, region, credentials)
    }

    /// The configuration the environment and the AWS files give, or why there is none.
    public static func fromEnvironment(_ env: [String: String] = environment()) throws -> S3Config {
        let profile = env["AWS_PROFILE"] ?? "default"
        let home = env["HOME"] ?? "/root"
        let credentialsFile = ini(env["AWS_SHARED_CREDENTIALS_FILE"] ?? "\(home)/.aws/credentials", section: profile)
        let configFile = ini(env["AWS_CONFIG_FILE"] ?? "\(home)/.aws/config", section: profile == "default" ? "default" : "profile \(profile)")
        func value(_ variable: String, _ key: String) -> String? {
            if let v = env[variable], !v.isEmpty { return v }
            return credentialsFile[key] ?? configFile[key]
        }
        guard let access = value("AWS_ACCESS_KEY_ID", "aws_access_key_id"), let secret = value("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key") else {
            throw S3Error.configuration(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the \(profile) profile in ~/.aws/credentials")
        }
        let region = env["AWS_REGION"] ?? env["AWS_DEFAULT_REGION"] ?? configFile["region"] ?? "us-east-1"
        let endpoint = env["AWS_ENDPOINT_URL_S3"] ?? env["AWS_ENDPOINT_URL"] ?? configFile["endpoint_url"] ?? "https://s3.\(region).amazonaws.com"
        guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://") else {
            throw S3Error.configuration("the S3 endpoint \(endpoint) is not an http:// or https:// URL")
        }
        return S3Config(
            endpoint: endpoint, region: region,
            credentials: S3Credentials(accessKey: access, secretKey: secret, sessionToken: value("AWS_SESSION_TOKEN", "aws_session_token")))
    }

    public static func environment() -> [String: String] { Sys.environmentVariables() }

    /// The `key = value` lines of one `[section]` of an INI file (empty when the file or section is missing).
    static func ini(_ path: String, section: String) -> [String: String] {
        guard let file = Sys.readSmallFile(path) else { return [:] }
        var out: [String: String] = [:]
        var inSection = false
        for l in file.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            let text = String(l).trimmingWhitespace
            if text.hasPrefix("[") && text.hasSuffix("]") {
                inSection = String(text.dropFirst().dropLast()).trimmingWhitespace == section
            } else if inSection, let eq = text.firstIndex(of: "="), !text.hasPrefix("#"), !text.hasPrefix(";") {
                out[String(text[..<eq]).trimmingWhitespace] = String(text[text.index(after: eq)...]).trimmingWhitespace
            }
        }
        return out
    }
}

extension String {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        while let c = s.last, c.isWhitespace { s.removeLast() }
        return String(s)
    }
}

/// `s3://BUCKET/PREFIX`: a chain's place in a store. The prefix ends in "/" (objects are PREFIX + name).
public struct S3Location: Sendable, Equatable {
    public var bucket: String
    public var prefix: String

    public static func isS3(_ location: String) -> Bool { location.hasPrefix("s3://") }

    public init(bucket: String, prefix: String) { (self.bucket, self.prefix) = (bucket, prefix) }

    public init?(_ location: String) {
        guard Self.isS3(location) else { return nil }
        let rest = location.dropFirst(5)
        let parts = rest.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let b = parts.first, b.count >= 3, b.count <= 63,
            b.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "-" || $0 == "." })
        else { return nil }
        bucket = String(b)
        var p = parts.count > 1 ? String(parts[1]) : ""
        while p.hasSuffix("/") { p.removeLast() }
        guard !p.isEmpty, !p.split(separator: "/").contains(where: { $0 == "." || $0 == ".." }) else { return nil }
        prefix = p + "/"
    }
}
