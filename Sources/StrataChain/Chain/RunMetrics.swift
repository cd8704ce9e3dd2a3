// `--metrics-file`: the outcome of the last capture, prune or verify of a chain as a Prometheus text-format
// file (the node exporter's textfile collector reads such files), so that an alert fires when last night's
// image failed or is missing. Several commands may share one file: each replaces only its own series (label
// `command`) and the chain's (points, newest point), keeping the others, and a failed run keeps the time of
// the last success. The file is replaced atomically (temporary file, fsync, rename), readable by all (0644:
// the exporter runs as its own user) and holds no secret: paths, counts and times.
import StrataFormat
import StrataIO

public struct RunMetrics: Sendable {
    public var command: String
    public var chain: String
    public var success: Bool
    public var exitCode: Int32
    /// When the run ended, seconds since the epoch.
    public var finishedAt: UInt64
    public var seconds: Double
    public var bytesRead: UInt64
    public var bytesStored: UInt64
    /// A capture's: what found its changes, the bytes it read to check them, and whether that check found writes
    /// the change source missed.
    public var changeSource: String? = nil
    public var bytesSampled: UInt64? = nil
    public var missedChanges: Bool? = nil

    public init(command: String, chain: String, success: Bool, exitCode: Int32, seconds: Double, bytesRead: UInt64 = 0, bytesStored: UInt64 = 0, finishedAt: UInt64 = Sys.wallClockSeconds) {
        (self.command, self.chain, self.success, self.exitCode) = (command, chain, success, exitCode)
        (self.seconds, self.bytesRead, self.bytesStored, self.finishedAt) = (seconds, bytesRead, bytesStored, finishedAt)
    }

    /// Time since it was made, for the duration of a run that failed before it could report one.
    public struct Stopwatch: Sendable {
        private let started = Sys.monotonicNanos()
        public init() {}
        public var seconds: Double { Double(Sys.monotonicNanos() - started) / 1e9 }
    }

    /// The series this file holds, in order, with their help lines.
    static let families: [(name: String, help: String)] = [
        ("strata_last_run_success", "1 if the last run of the command on the chain succeeded, 0 if it failed."),
        ("strata_last_run_exit_code", "Exit status of the last run (0: success; see strata --help, EXIT STATUS)."),
        ("strata_last_run_timestamp_seconds", "When the last run ended, seconds since the epoch."),
        ("strata_last_run_duration_seconds", "How long the last run took."),
        ("strata_last_run_bytes_read", "Bytes the last run read (capture: of the source; verify: of the chain)."),
        ("strata_last_run_bytes_stored", "Bytes the last run wrote into the chain (capture: the new image; prune: the merged images)."),
        ("strata_last_capture_change_source", "What found the last capture's changes (label source: scan, rescan, reflink, scan-after-missed-writes)."),
        ("strata_last_capture_bytes_sampled", "Bytes the last capture read to check what its change source called unchanged."),
        ("strata_last_capture_missed_changes", "1 if the last capture's check found writes its change source missed (it then scanned the whole source)."),
        ("strata_last_success_timestamp_seconds", "When the last successful run ended, seconds since the epoch (0: none recorded)."),
        ("strata_chain_points", "Points in the chain."),
        ("strata_chain_bytes_stored", "Bytes of the chain's images."),
        ("strata_newest_point_timestamp_seconds", "When the newest point was captured, seconds since the epoch; alert on time() minus this."),
        ("strata_newest_point_age_seconds", "Age of the newest point when the file was written."),
    ]

    /// Checks, before a run starts, that a metrics file can be written at `path` (its directory exists and is
    /// writable), so that a typo fails at once rather than after a night's capture.
    public static func checkWritable(_ path: String) throws {
        let dir = BlockDevices.parentDirectory(of: path)
        guard Sys.isWritableDirectory(dir) else {
            throw ChainError.outputUnwritable(path: path, reason: "\(dir) is not a writable directory")
        }
    }

    /// Writes the file at `path`, keeping the series of other commands that an earlier run left there.
    public func write(to path: String) throws {
        let previous = (try? DurableFiles.readAll(path, limit: 1 << 20)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let listing = try? ChainListing.read(chain: chain)
        let text = render(previous: previous, listing: listing)
        let (dir, name) = (BlockDevices.parentDirectory(of: path), BlockDevices.lastComponent(of: path))
        do { try DurableFiles.publish(Array(text.utf8), dir: dir, name: name, mode: 0o644) } catch let e as IOError {
            throw ChainError.outputUnwritable(path: path, reason: e.reason)
        }
    }

    /// The file's text: the series of `previous` not this run's, then this run's, grouped by family.
    func render(previous: String, listing: ChainListing?) -> String {
        let mine = "command=\"\(Self.escape(command))\",chain=\"\(Self.escape(chain))\""
        let chainLabel = "chain=\"\(Self.escape(chain))\""
        var samples: [String: [(labels: String, value: String)]] = [:]
        var lastSuccess: String?
        for line in previous.split(separator: "\n") where !line.hasPrefix("#") {
            guard let brace = line.firstIndex(of: "{"), let close = line.lastIndex(of: "}"), let space = line.lastIndex(of: " "), close < space else { continue }
            let name = String(line[..<brace]), labels = String(line[line.index(after: brace)..<close]), value = String(line[line.index(after: space)...])
            if labels == mine && name == "strata_last_success_timestamp_seconds" { lastSuccess = value }
            if labels == mine || labels.hasPrefix(mine + ",") || labels == chainLabel { continue }
            samples[name, default: []].append((labels, value))
        }
        func put(_ name: String, _ labels: String, _ value: String) { samples[name, default: []].append((labels, value)) }
        put("strata_last_run_success", mine, success ? "1" : "0")
        put("strata_last_run_exit_code", mine, "\(exitCode)")
        put("strata_last_run_timestamp_seconds", mine, "\(finishedAt)")
        put("strata_last_run_duration_seconds", mine, Self.decimal(seconds))
        put("strata_last_run_bytes_read", mine, "\(bytesRead)")
        put("strata_last_run_bytes_stored", mine, "\(bytesStored)")
        if let changeSource { put("strata_last_capture_change_source", mine + ",source=\"\(Self.escape(changeSource))\"", "1") }
        if let bytesSampled { put("strata_last_capture_bytes_sampled", mine, "\(bytesSampled)") }
        if let missedChanges { put("strata_last_capture_missed_changes", mine, missedChanges ? "1" : "0") }
        put("strata_last_success_timestamp_seconds", mine, success ? "\(finishedAt)" : (lastSuccess ?? "0"))
        if let listing {
            put("strata_chain_points", chainLabel, "\(listing.points.count)")
            put("strata_chain_bytes_stored", chainLabel, "\(listing.points.reduce(0) { $0 + $1.bytesStored })")
            if let newest = listing.points.last {
                put("strata_newest_point_timestamp_seconds", chainLabel, "\(newest.createdAt)")
                put("strata_newest_point_age_seconds", chainLabel, "\(finishedAt >= newest.createdAt ? finishedAt - newest.createdAt : 0)")
            }
        }
        var out = ""
        for family in Self.families {
            guard let series = samples[family.name], !series.isEmpty else { continue }
            out += "# HELP \(family.name) \(family.help)\n# TYPE \(family.name) gauge\n"
            for s in series.sorted(by: { $0.labels < $1.labels }) { out += "\(family.name){\(s.labels)} \(s.value)\n" }
        }
        return out
    }

    /// A label value as the text format escapes it (backslash, double quote, line feed).
    static func escape(_ s: String) -> String { s.escaping(["\\": "\\\\", "\"": "\\\"", "\n": "\\n"]) }

    /// Seconds with millisecond precision, without a locale or an exponent.
    static func decimal(_ v: Double) -> String {
        let ms = UInt64((max(0, v) * 1000).rounded())
        let frac = String(ms % 1000)
        return "\(ms / 1000)." + String(repeating: "0", count: 3 - frac.count) + frac
    }
}
