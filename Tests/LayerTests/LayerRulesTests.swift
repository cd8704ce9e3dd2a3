// The rooms' fences, checked on the source tree (STYLE.md: "a layer rule broken once is a rule without a check").
// Each module may import only what the table below allows; nothing above StrataIO imports the C library or a C
// module of the system's; the CLI imports StrataChain and StrataBench only (argument-parser aside). A rule
// broken fails `swift test` with the file, the line and the rule.
import Foundation
import XCTest

final class LayerRulesTests: XCTestCase {
    /// What each module may import (Swift's standard modules aside). Dependencies point one way: the CLI on the
    /// libraries, StrataChain on the rooms under it, StrataIO on the system.
    static let allowed: [String: Set<String>] = [
        // FoundationEssentials for JSONEncoder alone (no ICU; linked already through the HTTP client).
        "strata": ["ArgumentParser", "StrataChain", "StrataBench", "FoundationEssentials"],
        "StrataBench": ["StrataChain", "StrataFormat", "StrataCodec", "StrataIO"],
        "StrataChain": ["StrataFormat", "StrataCodec", "StrataIO", "StrataS3", "NIOCore"],
        "StrataS3": ["StrataIO", "CSeal", "AsyncHTTPClient", "NIOCore", "NIOHTTP1", "NIOConcurrencyHelpers"],
        "StrataCodec": ["StrataFormat", "CZstd", "CXXH3", "CSeal"],
        "StrataFormat": [],
        "StrataIO": ["Glibc", "Musl", "CURing", "CFuse", "CNBD", "CBlkid", "CExt2fs", "CNtfs", "CXfs", "CBuildStamp"],
    ]

    /// Modules every module may import: Swift's own.
    static let standard: Set<String> = ["Swift", "Synchronization", "_Concurrency"]

    static var sources: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Sources").standardized
    }

    /// A module's Swift files, relative to its directory.
    static func files(of module: String) -> [String] {
        let dir = sources.appendingPathComponent(module)
        guard let walker = FileManager.default.enumerator(atPath: dir.path) else { return [] }
        return walker.compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }.sorted()
    }

    /// Every `import` line of a module's Swift files: (file, line number, imported module).
    static func imports(of module: String) throws -> [(file: String, line: Int, module: String)] {
        let dir = sources.appendingPathComponent(module)
        var out: [(String, Int, String)] = []
        for relative in files(of: module) {
            let text = try String(contentsOf: dir.appendingPathComponent(relative), encoding: .utf8)
            for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                var words = raw.split(separator: " ").map(String.init)
                while let w = words.first, w.hasPrefix("@") || ["public", "internal", "package", "private", "fileprivate"].contains(w) {
                    words.removeFirst()
                }
                guard words.count >= 2, words[0] == "import" else { continue }
                var name = words[words.count >= 3 && ["struct", "class", "enum", "func", "protocol", "typealias", "var", "let"].contains(words[1]) ? 2 : 1]
                if let dot = name.firstIndex(of: ".") { name = String(name[..<dot]) }
                out.append(("\(module)/\(relative)", n + 1, name))
            }
        }
        return out
    }

    func testEveryModuleImportsOnlyWhatItsRoomAllows() throws {
        var broken: [String] = []
        for (module, allowed) in Self.allowed.sorted(by: { $0.key < $1.key }) {
            XCTAssertFalse(Self.files(of: module).isEmpty, "no sources found for \(module) at \(Self.sources.path)")
            let found = try Self.imports(of: module)
            for i in found where !allowed.contains(i.module) && !Self.standard.contains(i.module) {
                broken.append("\(i.file):\(i.line): \(module) imports \(i.module); it may import \(allowed.sorted().joined(separator: ", "))")
            }
        }
        XCTAssertEqual(broken, [], "layer rules broken (docs/DESIGN.md, \"Modules\"):\n" + broken.joined(separator: "\n"))
    }

    /// Every module of Sources/ is in the table, so that a new one gets its rule when it is made.
    func testEveryModuleHasARule() throws {
        let modules = try FileManager.default.contentsOfDirectory(atPath: Self.sources.path).filter { name in
            let files = (try? FileManager.default.contentsOfDirectory(atPath: Self.sources.appendingPathComponent(name).path)) ?? []
            return !name.hasPrefix("C") && files.contains { $0.hasSuffix(".swift") || !$0.contains(".") }
        }
        XCTAssertEqual(Set(modules), Set(Self.allowed.keys), "Sources/ and the table of rules differ")
    }

    /// The check itself: a file that breaks a rule is found (so that a parser change cannot make the rule pass
    /// by finding nothing).
    func testABrokenRuleIsFound() throws {
        let found = try Self.imports(of: "strata")
        XCTAssertTrue(found.contains { $0.module == "StrataChain" }, "the CLI's imports were not found")
        XCTAssertTrue(try Self.imports(of: "StrataIO").contains { $0.module == "Glibc" }, "StrataIO's Glibc import was not found")
    }
}
