// Everything the CLI prints: the progress line (stderr, terminals only), one-line notices, errors with their
// exit codes, and the JSON objects of --json (each command's report an Encodable value, written compact with
// its keys sorted). Errors are rendered here and nowhere else.
import ArgumentParser
// JSONEncoder only: Foundation's essentials, without ICU (the binary links them already, through the HTTP
// client; Foundation itself, which loads ICU's data at start, it does not).
import FoundationEssentials
import StrataChain

/// Seconds in --json: to the millisecond.
struct Seconds: Encodable {
    let value: Double
    init(_ value: Double) { self.value = value }
    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode((value * 1000).rounded() / 1000)
    }
}

/// A value, or JSON's null where there is none (written, not left out).
struct OrNull<T: Encodable>: Encodable {
    let value: T?
    init(_ value: T?) { self.value = value }
    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        if let value { try c.encode(value) } else { try c.encodeNil() }
    }
}

enum Output {
    static func notice(_ line: String) { toStderr("strata: \(line)\n") }

    /// One warning line when the chain is readable by other users (a chain made before 0.2, or chmod-ed).
    static func warnIfExposed(_ chain: String) {
        if let line = Safety.exposureWarning(chain: chain) { notice(line) }
    }

    /// Writes to stderr, unbuffered.
    static func toStderr(_ s: String) { Machine.writeToStandardError(s) }

    /// `v` with `digits` decimals (printf's %.Nf).
    static func fixed(_ v: Double, _ digits: Int) -> String {
        guard v.isFinite else { return "\(v)" }
        var scale: UInt64 = 1
        for _ in 0..<digits { scale *= 10 }
        let scaled = (abs(v) * Double(scale)).rounded()
        guard scaled < 1.8e19 else { return "\(v)" }
        let n = UInt64(scaled)
        let fraction = String(n % scale)
        let sign = v < 0 && n > 0 ? "-" : ""
        return digits == 0 ? "\(sign)\(n)" : "\(sign)\(n / scale)." + String(repeating: "0", count: digits - fraction.count) + fraction
    }

    /// Prints a failure as one line and exits with its documented code.
    static func fail(_ error: Error) -> ExitCode {
        let error = ChainError.lifting(error)
        if let e = error as? ChainError {
            notice("error: \(e.description)")
        } else if let e = error as? IOError {
            notice("error: \(e.description)")
        } else if !(error is ExitCode) {
            notice("error: \(error) (this is a bug in strata: please report it with this line)")
        }
        return ExitCode(exitCode(of: error))
    }

    /// The documented exit code of a failure.
    static func exitCode(of error: Error) -> Int32 {
        let error = ChainError.lifting(error)
        if let e = error as? ChainError { return e.exitCode }
        if error is IOError { return 74 }
        if let e = error as? ExitCode { return e.rawValue }
        return 70  // EX_SOFTWARE
    }

    /// `value` as one line of JSON on standard output.
    static func json<T: Encodable>(_ value: T) { print(jsonText(value)) }

    static func jsonText<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do { return String(decoding: try encoder.encode(value), as: UTF8.self) } catch {
            preconditionFailure("strata bug: a report that does not encode: \(error)")
        }
    }

    /// Byte or block ranges as JSON arrays `[start, length]`, at most the first 1000.
    static func ranges(_ rs: [Range<UInt64>]) -> [[UInt64]] { rs.prefix(1000).map { [$0.lowerBound, UInt64($0.count)] } }

    /// The warning for unreadable blocks: how many, and the first few ranges.
    static func unreadable(_ count: UInt64, _ rs: [Range<UInt64>], _ what: String) {
        let shown = rs.prefix(8).map { "\($0.lowerBound)+\($0.count)" }.joined(separator: ", ")
        notice("warning: \(count) block\(count == 1 ? "" : "s") \(what), at bytes \(shown)\(rs.count > 8 ? " and \(rs.count - 8) more ranges" : "")")
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default:
                if c.value < 0x20 { out += "\\u00" + (c.value < 0x10 ? "0" : "") + String(c.value, radix: 16) } else { out.unicodeScalars.append(c) }
            }
        }
        return out
    }

    static func bytes(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(n)
        var u = 0
        while v >= 1024 && u < units.count - 1 {
            v /= 1024
            u += 1
        }
        return u == 0 ? "\(n) B" : fixed(v, 1) + " " + units[u]
    }
}

/// A progress line with bytes done, rate and ETA, redrawn at most 10 times a second on a terminal's stderr.
final class ProgressLine {
    private let verb: String
    private let enabled: Bool
    private let start = Machine.monotonicNanos()
    private var last: UInt64 = 0
    private var drawn = false

    init(verb: String, quiet: Bool) {
        self.verb = verb
        enabled = !quiet && Machine.isTerminal(2)
    }

    func update(_ done: UInt64, _ total: UInt64) {
        guard enabled else { return }
        let now = Machine.monotonicNanos()
        guard now - last > 100_000_000 || done == total else { return }
        last = now
        let seconds = max(Double(now - start) / 1e9, 0.001)
        let rate = Double(done) / seconds
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let pct = total > 0 ? Double(done) * 100 / Double(total) : 100
        let seconds2 = Int(eta) % 60
        let line = "\(verb) \(Output.fixed(pct, 1).leftPad(5))%  \(Output.bytes(done)) / \(Output.bytes(total))  \(Output.bytes(UInt64(rate)))/s  ETA \(Int(eta) / 60):\(seconds2 < 10 ? "0" : "")\(seconds2)"
        Output.toStderr("\r\u{1B}[K\(line)")
        drawn = true
    }

    func finish() {
        if drawn { Output.toStderr("\r\u{1B}[K") }
    }
}

extension String {
    func leftPad(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
    func rightPad(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
