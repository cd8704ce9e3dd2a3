// `strata bench`: a short run on a small image file reports every stage with plausible numbers, never writes to
// the source, removes what it wrote into --chain-dir, and refuses bad input with the documented codes.
import Foundation
import XCTest

#if canImport(FoundationXML)
import FoundationXML
#endif

final class BenchCommandTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = try scratchDirectory("strata-bench")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testBenchReportsEveryStageAndWritesNothingToTheSource() throws {
        try makeDisk("\(dir)/disk", size: 16 << 20, seed: 21)
        let before = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk"))
        let modified = try FileManager.default.attributesOfItem(atPath: "\(dir)/disk")[.modificationDate] as? Date
        try FileManager.default.createDirectory(atPath: "\(dir)/chains", withIntermediateDirectories: true)
        let r = try strata("bench", "\(dir)/disk", "--seconds", "2", "--threads", "2", "--chain-dir", "\(dir)/chains", "--json", "--chart", "\(dir)/bench.svg")
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = jsonObject(r.stdout)
        XCTAssertEqual(j["sourceBytes"] as? Int, 16 << 20)
        let reads = j["reads"] as? [[String: Any]] ?? []
        XCTAssertEqual(reads.count, 5 * 3 + 1, "queue depths 1-64 x 128 KiB-4 MiB through io_uring, then pread")
        XCTAssertEqual(reads.last?["engine"] as? String, "pread")
        XCTAssertTrue(reads.allSatisfy { ($0["bytesPerSecond"] as? Int ?? 0) > 0 }, "\(reads)")
        XCTAssertGreaterThan(j["hashBytesPerSecond"] as? Int ?? 0, 0)
        XCTAssertEqual((j["compression"] as? [[String: Any]])?.map { $0["threads"] as! Int }, [1, 2])
        XCTAssertEqual((j["decompression"] as? [[String: Any]])?.map { $0["threads"] as! Int }, [1, 2])
        let ratio = j["compressionRatio"] as? Double ?? 0
        XCTAssertTrue(ratio > 0 && ratio <= 1.01, "\(ratio)")
        XCTAssertGreaterThan(j["writeBytesPerSecond"] as? Int ?? 0, 0)
        XCTAssertEqual(j["changedPercent"] as? Double, 3, "the incremental run stores 3% of the blocks anew by default")
        for key in ["fullCapture", "incrementalCapture", "restore"] {
            let p = j[key] as? [String: Any] ?? [:]
            XCTAssertGreaterThan(p["bytesPerSecond"] as? Int ?? 0, 0, key)
            XCTAssertFalse((p["bound"] as? String ?? "").isEmpty, key)
        }
        for key in ["fullCapture", "incrementalCapture", "restore"] {
            let p = j[key] as? [String: Any] ?? [:]
            XCTAssertGreaterThan(p["seconds"] as? Double ?? 0, 0, "\(key): the whole source's predicted time")
            let m = (j["model"] as? [String: Any])?[key] as? [String: Any] ?? [:]
            XCTAssertGreaterThan(m["bytesPerSecond"] as? Int ?? 0, 0, "the stage model's \(key) beside it")
        }
        // The real runs: a full capture per thread count, an incremental and a restore of the whole (small) source.
        let runs = j["runs"] as? [String: Any] ?? [:]
        XCTAssertEqual(runs["sampleBytes"] as? Int, 16 << 20)
        XCTAssertEqual(runs["scratchInRAM"] as? Bool, false)
        let full = runs["fullCapture"] as? [[String: Any]] ?? []
        XCTAssertEqual(full.map { $0["threads"] as? Int }, [1, 2])
        for run in full + [runs["incrementalCapture"] as? [String: Any] ?? [:], runs["restore"] as? [String: Any] ?? [:]] {
            XCTAssertEqual(run["bytes"] as? Int, 16 << 20)
            XCTAssertGreaterThan(run["seconds"] as? Double ?? 0, 0)
            let stages = (run["stages"] as? [[String: Any]] ?? []).compactMap { $0["stage"] as? String }
            XCTAssertTrue(stages.contains("I/O thread") && stages.contains("workers") && stages.contains("coordinator"), "\(stages)")
        }
        XCTAssertTrue(((full.last?["stages"] as? [[String: Any]]) ?? []).contains { $0["stage"] as? String == "writer" })
        // The chart: an SVG document that parses, with the capture's line and the read rates' lines.
        let svg = try String(contentsOfFile: "\(dir)/bench.svg", encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""), String(svg.prefix(80)))
        let parser = XMLParser(data: Data(svg.utf8))
        XCTAssertTrue(parser.parse(), "the chart is well-formed XML: \(parser.parserError.map { "\($0)" } ?? "")")
        XCTAssertTrue(svg.contains(">full capture<") && svg.contains(">1024 KiB requests<") && svg.contains("device reads "), svg)
        XCTAssertTrue([1, 4, 16, 32, 64].contains(j["queueDepth"] as? Int ?? 0))
        XCTAssertTrue([1, 2].contains(j["threads"] as? Int ?? 0))

        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/disk")), before, "bench never writes to the source")
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: "\(dir)/disk")[.modificationDate] as? Date, modified)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/chains"), [], "what bench wrote is removed")

        let text = try strata("bench", "\(dir)/disk", "--seconds", "1", "--threads", "1")
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("predicted full capture:"), text.stdout)
        XCTAssertTrue(text.stdout.contains("predicted incremental (3% changed):"), text.stdout)
        XCTAssertTrue(text.stdout.contains("settings: --queue-depth "), text.stdout)
        XCTAssertTrue(text.stdout.contains("(RAM: no --chain-dir, so writes cost less than on a disk)"), text.stdout)
        XCTAssertTrue(text.stdout.contains("busy, full capture (1 thread): I/O thread "), text.stdout)
    }

    func testBenchRefusesBadInput() throws {
        let missing = try strata("bench", "\(dir)/nope")
        XCTAssertEqual(missing.status, 66)
        XCTAssertEqual(missing.stderr, "strata: error: cannot read source \(dir)/nope: No such file or directory; check the path and your permissions\n")
        try makeDisk("\(dir)/tiny", size: 4096, seed: 1)
        let tiny = try strata("bench", "\(dir)/tiny")
        XCTAssertEqual(tiny.status, 66)
        XCTAssertEqual(tiny.stderr, "strata: error: cannot read source \(dir)/tiny: it is smaller than 1 MiB; check the path and your permissions\n")
        try makeDisk("\(dir)/disk", size: 2 << 20, seed: 1)
        let seconds = try strata("bench", "\(dir)/disk", "--seconds", "0.5")
        XCTAssertEqual(seconds.status, 64)
        XCTAssertEqual(seconds.stderr, "strata: error: --seconds must be at least 1\n")
        let changed = try strata("bench", "\(dir)/disk", "--seconds", "1", "--changed", "150")
        XCTAssertEqual(changed.status, 64)
        XCTAssertEqual(changed.stderr, "strata: error: --changed must be a percentage from 0 to 100\n")
        let png = try strata("bench", "\(dir)/disk", "--seconds", "1", "--chart", "\(dir)/chart.png")
        XCTAssertEqual(png.status, 64)
        XCTAssertEqual(png.stderr, "strata: error: --chart writes SVG: name the file .svg (\(dir)/chart.png)\n")
        let notDir = try strata("bench", "\(dir)/disk", "--seconds", "1", "--chain-dir", "\(dir)/disk/below")
        XCTAssertEqual(notDir.status, 73)
        XCTAssertTrue(notDir.stderr.hasPrefix("strata: error: cannot write target \(dir)/disk/below: "), notDir.stderr)
    }
}
