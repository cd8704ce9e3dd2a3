// The shipped systemd units, installed by Tools/install: `systemd-analyze verify` accepts them, and their command
// lines, expanded from an instance's configuration file the way systemd expands them, do what they say: a
// nightly capture then prune (three nights, --keep-last 2), the weekly verify, every run in the metrics file, and
// a failed capture failing the unit's first command (so systemd runs no prune and marks the unit failed).
import Foundation
import TestSupport
import XCTest

final class SystemdUnitsTests: XCTestCase {
    var dir = ""
    let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    override func setUpWithError() throws {
        if runProcess("/usr/bin/env", ["sh", "-c", "command -v systemd-analyze"]).status != 0 {
            throw XCTSkip("systemd-analyze is not installed (Tools/setup installs systemd)")
        }
        dir = try scratchDirectory("strata-units")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func install() throws -> String {
        let r = runProcess("\(repository)/Tools/install", ["--prefix", "\(dir)/usr", "--sysconfdir", "\(dir)/etc", "--binary", strataBinary, "--no-man"])
        XCTAssertEqual(r.status, 0, r.stderr)
        return "\(dir)/usr/lib/systemd/system"
    }

    /// The commands of `unit`'s `keys` lines, in order, expanded as systemd does: `${NAME}` is one word, `$NAME`
    /// the value split into words (none when empty).
    private func commands(_ unit: String, _ keys: [String], environment: [String: String]) throws -> [[String]] {
        let text = try String(contentsOfFile: unit, encoding: .utf8)
        return text.split(separator: "\n").compactMap { line -> [String]? in
            guard let eq = line.firstIndex(of: "="), keys.contains(String(line[..<eq])) else { return nil }
            return line[line.index(after: eq)...].split(separator: " ").flatMap { word -> [String] in
                if word.hasPrefix("${") && word.hasSuffix("}") { return [environment[String(word.dropFirst(2).dropLast())] ?? ""] }
                if word.hasPrefix("$") { return (environment[String(word.dropFirst())] ?? "").split(separator: " ").map(String.init) }
                return [String(word)]
            }
        }
    }

    /// Reads an environment file as systemd does for these simple lines (NAME=value, # comments).
    private func environment(_ path: String) throws -> [String: String] {
        var out: [String: String] = [:]
        for line in try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n") where !line.hasPrefix("#") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            out[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return out
    }

    /// Runs a unit's commands as systemd runs a oneshot service: in order, stopping at the first that fails.
    private func runUnit(_ commands: [[String]]) -> Int32 {
        for c in commands {
            let r = runProcess(c[0], Array(c.dropFirst()))
            if r.status != 0 { return r.status }
        }
        return 0
    }

    func testUnitsVerifyAndTheirCommandsCaptureNightlyPruneAndVerify() throws {
        let units = try install()
        let names = ["strata-capture@disk.service", "strata-capture@disk.timer", "strata-verify@disk.service", "strata-verify@disk.timer"]
        let verify = runProcess("/usr/bin/env", ["sh", "-c", "cd \(units) && systemd-analyze verify --man=no " + names.joined(separator: " ")])
        XCTAssertEqual(verify.status, 0, verify.stdout + verify.stderr)
        let timer = try String(contentsOfFile: "\(units)/strata-capture@.timer", encoding: .utf8)
        for line in ["Persistent=true", "RandomizedDelaySec=3h", "WantedBy=timers.target"] { XCTAssertTrue(timer.contains(line), line) }

        // An instance's configuration: the example, with this test's source, chain, rules and metrics file.
        let disk = "\(dir)/disk", chain = "\(dir)/chain", metrics = "\(dir)/strata-disk.prom"
        var example = try String(contentsOfFile: "\(dir)/etc/strata/strata.conf.example", encoding: .utf8)
        example = example.replacingOccurrences(of: "SOURCE=/dev/sdb", with: "SOURCE=\(disk)")
            .replacingOccurrences(of: "CHAIN=/backup/sdb", with: "CHAIN=\(chain)")
            .replacingOccurrences(of: "PRUNE_RULES=--keep-last 3 --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --keep-yearly 2", with: "PRUNE_RULES=--keep-last 2")
            .replacingOccurrences(of: "METRICS=--metrics-file /var/lib/prometheus/node-exporter/strata-sdb.prom", with: "METRICS=--metrics-file \(metrics)")
        try example.write(toFile: "\(dir)/etc/strata/disk.conf", atomically: true, encoding: .utf8)
        let env = try environment("\(dir)/etc/strata/disk.conf")
        let service = try String(contentsOfFile: "\(units)/strata-capture@.service", encoding: .utf8)
        XCTAssertTrue(service.contains("EnvironmentFile=\(dir)/etc/strata/%i.conf"), service)
        let nightly = try commands("\(units)/strata-capture@.service", ["ExecStart", "ExecStartPost"], environment: env)
        XCTAssertEqual(nightly.map { Array($0.prefix(2)) }, [["\(dir)/usr/bin/strata", "capture"], ["\(dir)/usr/bin/strata", "prune"]])

        var nights: [Data] = []
        for night in 0..<3 {
            try makeDisk(disk, size: 2 << 20, seed: 9, changes: 30 * night)
            nights.append(try Data(contentsOf: URL(fileURLWithPath: disk)))
            XCTAssertEqual(runUnit(nightly), 0, "night \(night)")
        }
        let list = jsonObject(try strata("list", chain, "--json").stdout)
        XCTAssertEqual((list["points"] as? [[String: Any]] ?? []).map { $0["point"] as! Int }, [2, 3], "pruned to the last 2")
        for (point, night) in [(2, 1), (3, 2)] {
            XCTAssertEqual(try strata("restore", chain, "\(dir)/out", "--point", "\(point)", "--force", "--quiet").status, 0)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), nights[night])
        }
        let weekly = try commands("\(units)/strata-verify@.service", ["ExecStart"], environment: env)
        XCTAssertEqual(runUnit(weekly), 0)
        let prom = try String(contentsOfFile: metrics, encoding: .utf8)
        for command in ["capture", "prune", "verify"] {
            XCTAssertTrue(prom.contains("strata_last_run_success{command=\"\(command)\",chain=\"\(chain)\"} 1"), prom)
        }

        // The source gone: the capture fails (66), so the unit fails before its prune; the metrics say so.
        try FileManager.default.removeItem(atPath: disk)
        XCTAssertEqual(runUnit(nightly), 66)
        let failed = try String(contentsOfFile: metrics, encoding: .utf8)
        XCTAssertTrue(failed.contains("strata_last_run_success{command=\"capture\",chain=\"\(chain)\"} 0"), failed)
        XCTAssertTrue(failed.contains("strata_last_run_exit_code{command=\"capture\",chain=\"\(chain)\"} 66"), failed)
    }

    /// The QEMU disk's unit: its command, expanded from a configuration naming an image at rest, rotates the
    /// bitmaps around each capture (the second night reads only what the bitmap marks), then prunes.
    func testTheQemuDiskUnitCapturesThroughTheBitmapRotation() throws {
        for tool in ["qemu-img", "qemu-nbd", "qemu-io"] where runProcess("/usr/bin/env", ["sh", "-c", "command -v \(tool)"]).status != 0 {
            throw XCTSkip("\(tool) is not installed (Tools/setup installs qemu-utils)")
        }
        let units = try install()
        let names = ["strata-qemu-capture@vm.service", "strata-qemu-capture@vm.timer"]
        let verify = runProcess("/usr/bin/env", ["sh", "-c", "cd \(units) && systemd-analyze verify --man=no " + names.joined(separator: " ")])
        XCTAssertEqual(verify.status, 0, verify.stdout + verify.stderr)
        let image = "\(dir)/vm.qcow2", chain = "\(dir)/chain"
        XCTAssertEqual(runProcess("/usr/bin/env", ["sh", "-c", "qemu-img create -q -f qcow2 \(image) 8M && qemu-io -f qcow2 -c 'write -P 7 0 4M' \(image) >/dev/null"]).status, 0)
        var example = try String(contentsOfFile: "\(dir)/etc/strata/strata.conf.example", encoding: .utf8)
        example = example.replacingOccurrences(of: "CHAIN=/backup/sdb", with: "CHAIN=\(chain)")
            .replacingOccurrences(of: "#QEMU_DISK=--image /var/lib/libvirt/images/vm1.qcow2", with: "QEMU_DISK=--image \(image)")
            .replacingOccurrences(of: "CAPTURE_OPTIONS=\n", with: "CAPTURE_OPTIONS=--json\n")
            .replacingOccurrences(of: "PRUNE_RULES=--keep-last 3 --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --keep-yearly 2", with: "PRUNE_RULES=--keep-last 5")
            .replacingOccurrences(of: "METRICS=--metrics-file /var/lib/prometheus/node-exporter/strata-sdb.prom", with: "METRICS=")
        try example.write(toFile: "\(dir)/etc/strata/vm.conf", atomically: true, encoding: .utf8)
        let env = try environment("\(dir)/etc/strata/vm.conf")
        let service = try String(contentsOfFile: "\(units)/strata-qemu-capture@.service", encoding: .utf8)
        XCTAssertTrue(service.contains("Environment=STRATA=\(dir)/usr/bin/strata"), service)
        let nightly = try commands("\(units)/strata-qemu-capture@.service", ["ExecStart", "ExecStartPost"], environment: env)
        XCTAssertEqual(nightly.map { $0[0] }, ["\(dir)/usr/bin/strata-qemu-capture", "\(dir)/usr/bin/strata"])
        setenv("STRATA", "\(dir)/usr/bin/strata", 1)
        XCTAssertEqual(runUnit(nightly), 0)
        XCTAssertEqual(runProcess("/usr/bin/env", ["qemu-io", "-f", "qcow2", "-c", "write -P 9 1M 8k", image]).status, 0)
        let second = runProcess(nightly[0][0], Array(nightly[0].dropFirst()))
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue((jsonObject(second.stdout)["changeSource"] as? String ?? "").hasPrefix("dirty-bitmap:"), second.stdout)
        XCTAssertEqual(jsonObject(second.stdout)["bytesRead"] as? Int, 8192)
        XCTAssertEqual(runProcess("/usr/bin/env", ["qemu-img", "convert", "-O", "raw", image, "\(dir)/now.raw"]).status, 0)
        XCTAssertEqual(try strata("restore", chain, "\(dir)/out", "--force", "--quiet").status, 0)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), try Data(contentsOf: URL(fileURLWithPath: "\(dir)/now.raw")))
    }

    func testVerifyRejectsAUnitWhoseCommandIsMissing() throws {
        let units = try install()
        try FileManager.default.removeItem(atPath: "\(dir)/usr/bin/strata")
        let r = runProcess("/usr/bin/env", ["sh", "-c", "cd \(units) && systemd-analyze verify --man=no strata-capture@disk.service"])
        XCTAssertNotEqual(r.status, 0, "systemd-analyze verify checks what the units run: \(r.stdout)\(r.stderr)")
    }
}
