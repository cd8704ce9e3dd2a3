// Every `--help` reads whole at 80 columns: argument-parser re-wraps any line that does not fit and starts the
// rest at column 0, which breaks an indented example or list in two ("copies / a / chain"). So every indented
// line of a command's discussion fits in 79 columns, and the rendered help of every command has no line wider
// than 80 and no line the wrapping cut out of an indented block.
import Foundation
import ArgumentParser
import TestSupport
import XCTest

@testable import strata

final class HelpTextTests: XCTestCase {
    /// Every command, subcommands of subcommands included, with its name as typed.
    static func commands(_ root: ParsableCommand.Type = StrataCommand.self, _ path: [String] = []) -> [(path: [String], type: ParsableCommand.Type)] {
        let c = root.configuration
        let here = path.isEmpty ? [] : path
        return [(here, root)] + c.subcommands.flatMap { commands($0, here + [$0.configuration.commandName ?? "\($0)"]) }
    }

    func testIndentedDiscussionLinesFitIn79Columns() {
        var wide: [String] = []
        for (path, type) in Self.commands() {
            for line in type.configuration.discussion.split(separator: "\n") where line.hasPrefix(" ") && line.count >= 80 {
                wide.append("strata \(path.joined(separator: " ")): \(line.count) columns: \(line)")
            }
        }
        XCTAssertEqual(wide, [], "indented lines argument-parser would break:\n" + wide.joined(separator: "\n"))
    }

    func testEveryHelpFits80ColumnsUnbroken() throws {
        setenv("COLUMNS", "80", 1)  // the width argument-parser wraps at (the children inherit it)
        defer { unsetenv("COLUMNS") }
        for (path, _) in Self.commands() {
            let r = try strata(path + ["--help"], deadline: 30)
            let name = "strata \(path.joined(separator: " "))"
            XCTAssertEqual(r.status, 0, "\(name) --help: \(r.stderr)")
            let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            for line in lines where line.count > 80 { XCTFail("\(name) --help: \(line.count) columns: \(line)") }
            // A line broken out of an indented block starts at column 0 right after an indented line, in the
            // middle of a sentence (not a heading, which is upper case, nor a usage line).
            for (a, b) in zip(lines, lines.dropFirst()) where a.hasPrefix("  ") && !b.isEmpty && !b.hasPrefix(" ") {
                let first = b.first!
                if first.isLowercase || first.isNumber || "-/(,.".contains(first) {
                    XCTFail("\(name) --help: a line broken by the wrapping: \"\(a)\" / \"\(b)\"")
                }
            }
        }
    }
}
