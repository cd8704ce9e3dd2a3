// --metrics-file on capture, prune and verify: the file parses with Prometheus' own text-format parser (Python's
// prometheus_client), reports a failed run as failed with its exit code while keeping the last success, keeps
// the other commands' series, and a path that cannot be written is refused before anything is done.
import Foundation
import TestSupport
import XCTest

final class MetricsTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        guard runProcess("/usr/bin/python3", ["-c", "import prometheus_client"]).status == 0 else {
            throw XCTSkip("Python's prometheus_client is not installed (Tools/setup installs python3-prometheus-client)")
        }
        dir = try scratchDirectory("strata-metrics")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// The file's samples as the Prometheus parser reads them: "name{command=...}" (or "name" for the chain's
    /// series) to value.
    private func samples(_ path: String) throws -> [String: Double] {
        let script = """
            import json, sys
            from prometheus_client.parser import text_string_to_metric_families
            out = {}
            for family in text_string_to_metric_families(open(sys.argv[1]).read()):
                assert family.type == "gauge", family
                for s in family.samples:
                    out[s.name + ("{" + s.labels["command"] + "}" if "command" in s.labels else "")] = s.value
                    assert s.labels["chain"] == sys.argv[2], s.labels
            print(json.dumps(out))
            """
        let r = runProcess("/usr/bin/python3", ["-c", script, path, "\(dir)/chain"])
        XCTAssertEqual(r.status, 0, r.stderr)
        return (try JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [String: Double] ?? [:]
    }

    func testMetricsOfCapturePruneAndVerifyParseAndReportFailures() throws {
        let chain = "\(dir)/chain", disk = "\(dir)/disk", metrics = "\(dir)/strata.prom"
        try makeDisk(disk, size: 2 << 20, seed: 4)
        XCTAssertEqual(try strata("capture", disk, chain, "--quiet", "--created-at", "1700000000").status, 0)
        try makeDisk(disk, size: 2 << 20, seed: 4, changes: 20)
        let capture = try strata("capture", disk, chain, "--json", "--metrics-file", metrics)
        XCTAssertEqual(capture.status, 0, capture.stderr)
        let result = jsonObject(capture.stdout)
        var m = try samples(metrics)
        XCTAssertEqual(m["strata_last_run_success{capture}"], 1)
        XCTAssertEqual(m["strata_last_run_exit_code{capture}"], 0)
        XCTAssertEqual(m["strata_last_run_bytes_read{capture}"], Double(result["bytesRead"] as? Int ?? -1))
        XCTAssertEqual(m["strata_last_run_bytes_stored{capture}"], Double(result["bytesStored"] as? Int ?? -1))
        XCTAssertEqual(m["strata_chain_points"], 2)
        let succeeded = try XCTUnwrap(m["strata_last_success_timestamp_seconds{capture}"])
        XCTAssertEqual(m["strata_last_run_timestamp_seconds{capture}"], succeeded)
        XCTAssertLessThan(abs(succeeded - Date().timeIntervalSince1970), 600)
        XCTAssertEqual(m["strata_newest_point_timestamp_seconds"], try XCTUnwrap(m["strata_last_run_timestamp_seconds{capture}"]) - (m["strata_newest_point_age_seconds"] ?? -1))
        let attributes = try FileManager.default.attributesOfItem(atPath: metrics)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o644, "readable by the exporter's user")

        // A failed capture (the source is gone): recorded as failed with its exit code; the last success stays.
        let failed = try strata("capture", "\(dir)/missing", chain, "--metrics-file", metrics)
        XCTAssertEqual(failed.status, 66)
        m = try samples(metrics)
        XCTAssertEqual(m["strata_last_run_success{capture}"], 0)
        XCTAssertEqual(m["strata_last_run_exit_code{capture}"], 66)
        XCTAssertEqual(m["strata_last_success_timestamp_seconds{capture}"], succeeded)
        XCTAssertEqual(m["strata_chain_points"], 2)

        // verify and prune add their own series beside capture's.
        XCTAssertEqual(try strata("verify", chain, "--quiet", "--metrics-file", metrics).status, 0)
        XCTAssertEqual(try strata("prune", chain, "--keep-last", "1", "--quiet", "--metrics-file", metrics).status, 0)
        m = try samples(metrics)
        XCTAssertEqual(m["strata_last_run_success{verify}"], 1)
        XCTAssertGreaterThan(m["strata_last_run_bytes_read{verify}"] ?? 0, 0)
        XCTAssertEqual(m["strata_last_run_success{prune}"], 1)
        XCTAssertGreaterThan(m["strata_last_run_bytes_stored{prune}"] ?? 0, 0)
        XCTAssertEqual(m["strata_last_run_success{capture}"], 0, "capture's series kept as they were")
        XCTAssertEqual(m["strata_chain_points"], 1)

        // A damaged chain: verify fails with 65, and says so in the file.
        let image = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: chain).first { $0.hasPrefix("p0") })
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: "\(chain)/\(image)"))
        try handle.seek(toOffset: 8192)
        let byte = try XCTUnwrap(try handle.read(upToCount: 1))
        try handle.seek(toOffset: 8192)
        try handle.write(contentsOf: Data([byte[0] ^ 0xFF]))
        try handle.close()
        XCTAssertEqual(try strata("verify", chain, "--quiet", "--metrics-file", metrics).status, 65)
        m = try samples(metrics)
        XCTAssertEqual(m["strata_last_run_success{verify}"], 0)
        XCTAssertEqual(m["strata_last_run_exit_code{verify}"], 65)
    }

    func testAnUnwritableMetricsPathIsRefusedBeforeTheRun() throws {
        let chain = "\(dir)/chain", disk = "\(dir)/disk"
        try makeDisk(disk, size: 1 << 20, seed: 2)
        XCTAssertEqual(try strata("capture", disk, chain, "--quiet").status, 0)
        let before = try chainFiles(chain)
        for command in [["capture", disk, chain], ["prune", chain, "--keep-last", "1"], ["verify", chain]] {
            let r = try strata(command + ["--metrics-file", "\(dir)/no/such/dir/strata.prom"])
            XCTAssertEqual(r.status, 73, command[0])
            XCTAssertEqual(r.stderr, "strata: error: cannot write \(dir)/no/such/dir/strata.prom: \(dir)/no/such/dir is not a writable directory; nothing was done: name a file in a writable directory\n")
        }
        XCTAssertEqual(try chainFiles(chain), before)
    }
}
