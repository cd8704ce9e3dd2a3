// Whole command runs of the strata binary, as argument-parser's AssertExecuteCommand does: exact exit codes,
// one-line errors, --json output, and SIGKILL at random moments leaving a chain that restores every point.
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

struct Run {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// The strata executable built beside this test bundle.
let strataBinary: String = {
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("strata").path,
        Bundle.main.bundleURL.appendingPathComponent("strata").path,
        Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("strata").path,
    ]
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[0]
}()

func launch(_ args: [String]) throws -> (Process, Pipe, Pipe) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: strataBinary)
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    return (p, out, err)
}

func strata(_ args: String...) throws -> Run {
    let (p, out, err) = try launch(args)
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return Run(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}

func makeDisk(_ path: String, size: Int, seed: UInt8, changes: Int = 0) throws {
    var bytes = [UInt8](repeating: 0, count: size)
    for i in 0..<(size / 2) { bytes[i] = UInt8(truncatingIfNeeded: i / 4096 &+ Int(seed) &* (i % 13 == 0 ? 7 : 1)) }
    var state = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 | 1
    for _ in 0..<changes {
        state = state &* 6_364_136_223_846_793_005 &+ 1
        let at = Int(state >> 20) % (size - 4096)
        for k in 0..<4096 { bytes[at + k] = UInt8(truncatingIfNeeded: Int(state >> 8) &+ k) }
    }
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// A fresh directory under the system's temporary directory, for one test.
func scratchDirectory(_ prefix: String) throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

final class CLITests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = try scratchDirectory("strata-cli")
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: strataBinary), "strata binary at \(strataBinary)")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testCaptureListRestoreWithJSON() throws {
        try makeDisk("\(dir)/disk", size: 4 << 20, seed: 1)
        let first = try strata("capture", "\(dir)/disk", "\(dir)/chain", "--json")
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertEqual(first.stderr, "", "quiet when stderr is not a terminal")
        let j = try JSONSerialization.jsonObject(with: Data(first.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(j["point"] as? Int, 1)
        XCTAssertEqual(j["kind"] as? String, "full")
        XCTAssertEqual(j["sourceBytes"] as? Int, 4 << 20)
        XCTAssertEqual(j["bytesRead"] as? Int, 4 << 20)
        XCTAssertEqual(j["blocksChanged"] as? Int, 1024)
        XCTAssertNotNil(j["bytesStored"] as? Int)
        XCTAssertNotNil(j["seconds"] as? Double)

        try makeDisk("\(dir)/disk", size: 4 << 20, seed: 1, changes: 3)
        let second = try strata("capture", "\(dir)/disk", "\(dir)/chain", "--json")
        let k = try JSONSerialization.jsonObject(with: Data(second.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(k["point"] as? Int, 2)
        XCTAssertEqual(k["kind"] as? String, "incremental")
        XCTAssertEqual(k["blocksChanged"] as? Int, 6, "three unaligned 4 KiB writes touch six blocks")

        let list = try strata("list", "\(dir)/chain", "--json")
        let l = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as! [String: Any]
        XCTAssertEqual((l["points"] as! [[String: Any]]).map { $0["point"] as! Int }, [1, 2])
        let text = try strata("list", "\(dir)/chain")
        XCTAssertTrue(text.stdout.contains("incremental"), text.stdout)

        let restore = try strata("restore", "\(dir)/chain", "\(dir)/out", "--force", "--point", "2", "--quiet")
        XCTAssertEqual(restore.status, 0, restore.stderr)
        XCTAssertEqual(restore.stdout, "")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk")))
    }

    func testExitCodesAndOneLineErrors() throws {
        let missing = try strata("capture", "\(dir)/nope", "\(dir)/chain")
        XCTAssertEqual(missing.status, 66)
        XCTAssertEqual(missing.stderr, "strata: error: cannot read source \(dir)/nope: No such file or directory; check the path and your permissions\n")

        let notChain = try strata("restore", "\(dir)", "\(dir)/out")
        XCTAssertEqual(notChain.status, 65)
        XCTAssertEqual(notChain.stderr, "strata: error: \(dir) is not a Strata chain (no chain.manifest); name the directory of an existing chain\n")

        try makeDisk("\(dir)/disk", size: 1 << 20, seed: 2)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", "\(dir)/chain", "--quiet").status, 0)
        let point = try strata("restore", "\(dir)/chain", "\(dir)/out", "--force", "--point", "5")
        XCTAssertEqual(point.status, 64)
        XCTAssertEqual(point.stderr, "strata: error: point 5 does not exist in this chain; available points: 1\n")

        let blockSize = try strata("capture", "\(dir)/disk", "\(dir)/chain2", "--block-size", "3000")
        XCTAssertEqual(blockSize.status, 64)
        XCTAssertEqual(blockSize.stderr, "strata: error: block size 3000 is not a power of two between 512 and 1048576\n")

        let usage = try strata("capture")
        XCTAssertEqual(usage.status, 64, "argument-parser's usage error")
    }

    func testHelpDocumentsExitCodes() throws {
        let help = try strata("--help")
        XCTAssertEqual(help.status, 0)
        XCTAssertTrue(help.stdout.contains("EXIT STATUS"))
        XCTAssertTrue(help.stdout.contains("75  the chain is being changed by another strata process"))
        let capture = try strata("capture", "--help")
        XCTAssertTrue(capture.stdout.contains("--io-engine"))
        XCTAssertTrue(capture.stdout.contains("--queue-depth"))
    }

    /// SIGKILL a capture at random moments, many times: afterwards the chain holds either the old points or the
    /// new one, the next run cleans up, and every point restores bit for bit.
    func testKilledCapturesLeaveARestorableChain() throws {
        let size = 24 << 20
        let chain = "\(dir)/chain"
        var states: [Data] = []
        try makeDisk("\(dir)/disk", size: size, seed: 3)
        let started = Date()
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
        // Kill moments spread over the length of one capture on this machine.
        let span = UInt32(max(Date().timeIntervalSince(started), 0.02) * 1_000_000)
        states.append(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk")))
        var generator = SystemRandomNumberGenerator()
        var killedMidway = 0
        for night in 1...10 {
            try makeDisk("\(dir)/disk", size: size, seed: 3, changes: 50 * night)
            let (p, _, _) = try launch(["capture", "\(dir)/disk", chain, "--quiet", "--threads", "2"])
            usleep(UInt32.random(in: 0...span, using: &generator))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let list = try strata("list", chain, "--json")
            XCTAssertEqual(list.status, 0, "chain readable after kill in night \(night): \(list.stderr)")
            let points = ((try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as! [String: Any])["points"] as! [[String: Any]]).count
            if points == states.count + 1 {
                states.append(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk")))
            } else {
                XCTAssertEqual(points, states.count, "a killed capture adds its point whole or not at all")
                killedMidway += 1
            }
        }
        // The next run cleans up and captures normally.
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
        states.append(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk")))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasPrefix(".strata-tmp-") }
        XCTAssertEqual(leftovers, [])
        for (i, state) in states.enumerated() {
            let r = try strata("restore", chain, "\(dir)/out", "--force", "--point", "\(i + 1)", "--quiet")
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), state, "point \(i + 1)")
        }
        print("kill test: \(killedMidway) of 10 captures killed before their commit")
    }

    /// A restore killed midway leaves the chain untouched: the next restore works.
    func testKilledRestoreLeavesChainIntact() throws {
        try makeDisk("\(dir)/disk", size: 16 << 20, seed: 4)
        XCTAssertEqual(try strata("capture", "\(dir)/disk", "\(dir)/chain", "--quiet").status, 0)
        for delay in [0, 20_000, 60_000] {
            let (p, _, _) = try launch(["restore", "\(dir)/chain", "\(dir)/out", "--force", "--quiet"])
            usleep(UInt32(delay))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        XCTAssertEqual(try strata("restore", "\(dir)/chain", "\(dir)/out", "--force", "--quiet").status, 0)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk")))
    }

    /// SIGKILL merges and prunes at random moments: the chain then holds the old points or the new ones, and
    /// every point it lists restores bit for bit.
    func testKilledMergesLeaveARestorableChain() throws {
        let size = 16 << 20
        let chain = "\(dir)/chain"
        var states: [Int: Data] = [:]
        for night in 0..<7 {
            try makeDisk("\(dir)/disk", size: size, seed: 5, changes: 40 * night)
            XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
            states[night + 1] = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk"))
        }
        let started = Date()
        XCTAssertEqual(try strata("merge", chain, "--from", "2", "--to", "3", "--quiet").status, 0)
        let span = UInt32(max(Date().timeIntervalSince(started), 0.02) * 1_000_000)
        var generator = SystemRandomNumberGenerator()
        for round in 0..<8 {
            let list = try strata("list", chain, "--json")
            let points = ((try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as! [String: Any])["points"] as! [[String: Any]]).map { $0["point"] as! Int }
            guard points.count >= 2 else { break }
            let args = round % 3 == 2
                ? ["prune", chain, "--keep", "\(points.count - 1)", "--quiet"]
                : ["merge", chain, "--from", "\(points[points.count - 2])", "--to", "\(points[points.count - 1])", "--quiet"]
            let (p, _, _) = try launch(args)
            usleep(UInt32.random(in: 0...(2 * span), using: &generator))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let after = try strata("list", chain, "--json")
            XCTAssertEqual(after.status, 0, after.stderr)
            let now = ((try JSONSerialization.jsonObject(with: Data(after.stdout.utf8)) as! [String: Any])["points"] as! [[String: Any]]).map { $0["point"] as! Int }
            XCTAssertTrue(Set(now).isSubset(of: Set(points)), "no new points appear")
            XCTAssertEqual(now.last, points.last, "the newest point survives any merge")
            for point in now {
                let r = try strata("restore", chain, "\(dir)/out", "--force", "--point", "\(point)", "--quiet")
                XCTAssertEqual(r.status, 0, r.stderr)
                XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out")), states[point], "round \(round) point \(point)")
            }
        }
        XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0, "the next command cleans up and works")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasPrefix(".strata-tmp-") }, [])
    }
}
