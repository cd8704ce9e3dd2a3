// The base of the command tests that need an S3 store: a RADOS Gateway (Ceph's S3 server, Tools/rgw-start) started
// at the first test of a class and stopped after its last, a bucket and a scratch directory for each test, and
// strata run with the gateway's AWS variables.
import Foundation
import TestSupport
import XCTest

class GatewayTestCase: XCTestCase {
    static let gateway = LazyRGW()
    override class func tearDown() { gateway.stop() }

    var rgw: RGW!
    var dir = ""
    var bucket = ""

    override func setUpWithError() throws {
        rgw = try Self.gateway.get()
        bucket = try rgw.makeBucket("cli")
        dir = try scratchDirectory("strata-s3")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// The arguments of /usr/bin/env that run strata with `args` and the gateway's AWS variables (and `extra`).
    func s3args(_ args: [String], extra: [String: String] = [:]) -> [String] {
        rgw.environment.merging(extra) { $1 }.map { "\($0)=\($1)" } + [strataBinary] + args
    }

    /// strata with the gateway's AWS variables (and `extra`), run to its end.
    func s3strata(_ args: String..., extra: [String: String] = [:]) throws -> Run {
        let r = try ChildProcess("/usr/bin/env", s3args(args, extra: extra)).finish()
        XCTAssertFalse(r.timedOut, "strata \(args.joined(separator: " ")) did not finish")
        return Run(r)
    }
}
