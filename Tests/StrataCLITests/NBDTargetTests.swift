// Restores into NBD exports served by qemu-nbd, started here on unix sockets: raw and qcow2 images, one connection
// or several (multi-conn), a full restore and --delta (read and written on the same connection). `qemu-img
// compare` against the point restored to a file says identical; zeros arrive as write-zeroes, so a qcow2 stays as
// small as its data; a read-only or too small export is refused in one line and nothing is written.
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class NBDTargetTests: XCTestCase {
    var dir = ""
    var children: [ChildProcess] = []
    static let size = 16 << 20

    override func setUpWithError() throws {
        for tool in ["qemu-img", "qemu-nbd"] where toolOutput(["sh", "-c", "command -v \(tool)"]).isEmpty {
            throw XCTSkip("\(tool) is not installed (Tools/setup installs qemu-utils)")
        }
        dir = try scratchDirectory("strata-nbd-target")
    }

    override func tearDown() {
        terminate(&children)
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// qemu-nbd serving `image` (writable unless `readOnly`) on a unix socket; returns the URI.
    private func serve(_ image: String, format: String, readOnly: Bool = false, shared: Int = 1) throws -> String {
        let sock = "\(dir)/nbd-\(UUID().uuidString.prefix(8)).sock"
        let options = ["-t", "-f", format, "--shared=\(shared)", "--cache=none", "--aio=threads"] + (readOnly ? ["-r"] : [])
        children.append(try startQemuNBD(image, socket: sock, options))
        return "nbd+unix:///?socket=\(sock)"
    }

    /// A chain of two nights of a 16 MiB disk (half of it zeros); the raw file of each night.
    private func twoNights() throws -> (chain: String, nights: [String]) {
        let chain = "\(dir)/chain"
        var nights: [String] = []
        for night in 0..<2 {
            let path = "\(dir)/night\(night).raw"
            try makeDisk(path, size: Self.size, seed: 9, changes: 300 * night)
            XCTAssertEqual(try strata("capture", path, chain, "--quiet").status, 0)
            nights.append(path)
        }
        return (chain, nights)
    }

    private func compare(_ image: String, format: String, with raw: String, file: StaticString = #filePath, line: UInt = #line) {
        let r = runProcess("/usr/bin/env", ["qemu-img", "compare", "-f", format, "-F", "raw", image, raw])
        XCTAssertEqual(r.status, 0, "qemu-img compare \(image) \(raw): \(r.stdout) \(r.stderr)", file: file, line: line)
    }

    private func json(_ run: Run) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8))) as? [String: Any] ?? [:]
    }

    func testFullAndDeltaRestoresIntoRawAndQcow2Exports() throws {
        let (chain, nights) = try twoNights()
        for (format, shared) in [("raw", 1), ("raw", 4), ("qcow2", 1)] {
            let image = "\(dir)/target.\(format)"
            unlink(image)
            XCTAssertEqual(runProcess("/usr/bin/env", ["qemu-img", "create", "-q", "-f", format, image, String(Self.size)]).status, 0)
            var uri = try serve(image, format: format, shared: shared)
            let full = try strata("restore", chain, uri, "--point", "1", "--json", "--verify")
            XCTAssertEqual(full.status, 0, "\(format): \(full.stderr)")
            XCTAssertEqual(json(full)["verified"] as? Bool, true)
            terminate(&children)
            compare(image, format: format, with: nights[0])
            if format == "qcow2" {
                // Zeros went as write-zeroes: the qcow2 holds about the data, not the disk's 16 MiB.
                let info = runProcess("/usr/bin/env", ["qemu-img", "info", "--output=json", image]).stdout
                let actual = ((try? JSONSerialization.jsonObject(with: Data(info.utf8))) as? [String: Any])?["actual-size"] as? Int ?? .max
                XCTAssertLessThan(actual, Self.size * 5 / 8, "the qcow2 after a restore of a half-zero disk: \(info)")
            }
            // Night 1 over night 0, --delta: read and written on the same connection(s).
            uri = try serve(image, format: format, shared: shared)
            let delta = try strata("restore", chain, uri, "--point", "2", "--delta", "--json", "--verify")
            XCTAssertEqual(delta.status, 0, "\(format): \(delta.stderr)")
            terminate(&children)
            compare(image, format: format, with: nights[1])
            let a = try Data(contentsOf: URL(fileURLWithPath: nights[0])), b = try Data(contentsOf: URL(fileURLWithPath: nights[1]))
            let differing = stride(from: 0, to: Self.size, by: 4096).filter { a[$0..<($0 + 4096)] != b[$0..<($0 + 4096)] }.count
            XCTAssertGreaterThan(differing, 0)
            XCTAssertEqual(json(delta)["blocksDiffering"] as? Int, differing, format)
            XCTAssertEqual(json(delta)["bytesWritten"] as? Int, differing * 4096, format)
            XCTAssertEqual(json(delta)["bytesCompared"] as? Int, Self.size, format)
        }
    }

    func testReadOnlyAndTooSmallExportsAreRefused() throws {
        let (chain, _) = try twoNights()
        let image = "\(dir)/ro.raw"
        try Data(repeating: 7, count: Self.size).write(to: URL(fileURLWithPath: image))
        let ro = try strata("restore", chain, try serve(image, format: "raw", readOnly: true))
        XCTAssertEqual(ro.status, 73, ro.stderr)
        XCTAssertTrue(ro.stderr.contains("read-only"), ro.stderr)
        XCTAssertEqual(ro.stderr.split(separator: "\n").count, 1, ro.stderr)
        terminate(&children)
        let small = "\(dir)/small.raw"
        try Data(repeating: 7, count: Self.size / 2).write(to: URL(fileURLWithPath: small))
        let r = try strata("restore", chain, try serve(small, format: "raw"))
        XCTAssertEqual(r.status, 73, r.stderr)
        XCTAssertTrue(r.stderr.contains("is too small"), r.stderr)
        terminate(&children)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: image)), Data(repeating: 7, count: Self.size), "nothing written")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: small)), Data(repeating: 7, count: Self.size / 2), "nothing written")
    }
}
