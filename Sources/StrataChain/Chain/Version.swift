import StrataIO

/// Strata's version, in one place: `strata --version` prints `line`, and Tools/package names the package after
/// `number`.
public enum StrataVersion {
    public static let number = "0.1.0"

    /// "0.1.0 (commit 96ea8bf1c0de, 2026-12-07)", or "0.1.0 (commit not stamped: built without Tools/build-release)".
    public static var line: String {
        guard let stamp = BuildStamp.commit else { return "\(number) (commit not stamped: built without Tools/build-release)" }
        let words = stamp.split(separator: " ")
        return words.count == 2 ? "\(number) (commit \(words[0]), \(words[1]))" : "\(number) (commit \(stamp))"
    }
}
