// A RADOS Gateway (Ceph's S3 server) for the tests that need a real store: Tools/rgw-start in a directory of its
// own, stopped and removed by `stop`. Started once per test class (about 1.5 s once Ceph is installed).
import Foundation
import StrataS3

#if canImport(Glibc)
import Glibc
#endif

public struct RGWFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A RADOS Gateway for one test class: started before its first test, stopped after its last.
public final class RGW {
    public let dir: String
    public let endpoint: String
    public let access: String
    public let secret: String

    public static func start() throws -> RGW {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path
        let dir = "/var/tmp/strata-rgw-\(UUID().uuidString.prefix(8))"
        // system(3), not Foundation's Process: the daemons the script leaves running keep Process from seeing it end.
        let status = system("\(root)/Tools/rgw-start \(dir) > \(dir).out 2>&1")
        let out = (try? String(contentsOfFile: "\(dir).out", encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(atPath: "\(dir).out")
        guard status == 0, let line = out.split(separator: "\n").first(where: { $0.hasPrefix("endpoint=") }) else {
            throw RGWFailure("Tools/rgw-start could not start a RADOS Gateway (Tools/setup installs Ceph): \(out.suffix(600))")
        }
        var f: [String: String] = [:]
        for part in line.split(separator: " ") { let kv = part.split(separator: "=", maxSplits: 1); f[String(kv[0])] = String(kv[1]) }
        return RGW(dir: dir, endpoint: f["endpoint"]!, access: f["access"]!, secret: f["secret"]!)
    }

    public init(dir: String, endpoint: String, access: String, secret: String) { (self.dir, self.endpoint, self.access, self.secret) = (dir, endpoint, access, secret) }

    public func stop() {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path
        _ = system("\(root)/Tools/rgw-stop \(dir) --purge > /dev/null 2>&1")
    }

    /// Kills the gateway (SIGKILL) and leaves the cluster, and so every object, as it is: the store is down.
    public func killGateway() {
        guard let pids = try? String(contentsOfFile: "\(dir)/pids", encoding: .utf8) else { return }
        let f = pids.split(whereSeparator: { $0 == " " || $0 == "\n" })
        if f.count == 3, let pid = Int32(f[2]) {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            for _ in 0..<100 where kill(pid, 0) == 0 {
                _ = waitpid(pid, &status, WNOHANG)
                usleep(20_000)
            }
        }
    }

    /// Starts the gateway again over the same cluster, at the same address; returns once it answers.
    public func restartGateway() throws {
        let pids = (try? String(contentsOfFile: "\(dir)/pids", encoding: .utf8)) ?? ""
        let f = pids.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard f.count >= 2 else { throw RGWFailure("no cluster in \(dir)") }
        let start = "setsid radosgw -c \(dir)/ceph.conf -n client.rgw.test -f < /dev/null >> \(dir)/log/rgw.test.out 2>&1 & echo \"\(f[0]) \(f[1]) $!\" > \(dir)/pids"
        guard system(start) == 0 else { throw RGWFailure("could not start radosgw again") }
        for _ in 0..<300 {
            if system("curl -fs -o /dev/null --max-time 2 \(endpoint)/") == 0 { return }
            usleep(100_000)
        }
        throw RGWFailure("radosgw did not answer again within 30 s")
    }

    public var environment: [String: String] {
        ["AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1"]
    }

    public var config: S3Config { S3Config(endpoint: endpoint, region: "us-east-1", credentials: S3Credentials(accessKey: access, secretKey: secret)) }

    /// Sets this process's AWS variables to this gateway's (the stores tests make in-process read them).
    public func export() { for (k, v) in environment { setenv(k, v, 1) } }

    /// A new bucket with a name of its own.
    public func makeBucket(_ tag: String) throws -> String {
        let name = "strata-\(tag)-\(UUID().uuidString.prefix(8).lowercased())"
        try S3Client(config).createBucket(name)
        return name
    }
}


/// A gateway a test class starts at its first test that needs one (`get`) and stops after its last (`stop`, from
/// the class's tearDown), so that the class's other tests do not wait for it. `get` also sets this process's AWS
/// variables to it.
public final class LazyRGW: @unchecked Sendable {
    private var rgw: RGW?
    private var failure: Error?
    private let lock = NSLock()

    public init() {}

    public func get() throws -> RGW {
        lock.lock()
        defer { lock.unlock() }
        if let failure { throw failure }
        if rgw == nil {
            do { rgw = try RGW.start() } catch {
                failure = error
                throw error
            }
        }
        rgw!.export()
        return rgw!
    }

    /// `s3://BUCKET` of a new bucket of the gateway.
    public func bucketLocation(_ tag: String) throws -> String { "s3://" + (try get().makeBucket(tag)) }

    public func stop() {
        lock.lock()
        defer { lock.unlock() }
        rgw?.stop()
        rgw = nil
    }
}
