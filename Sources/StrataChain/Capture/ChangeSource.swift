// The change-source seam: before a capture reads, something that knows the source (a reflink baseline, a dirty
// bitmap) may say which byte ranges can have changed since the chain's newest point: a superset, never less.
// The capture then reads and hashes only those ranges, plus a random sample of the rest that checks the
// answer (`ReadPlan`); every block not read keeps the newest point's content and hash. Where no source can
// answer, the capture scans the whole source as it always has, and says why.
import StrataFormat

/// Byte ranges of the source, sorted and disjoint, produced forward (a change map may be larger than memory).
protocol ChangedRanges: AnyObject {
    func next() throws -> Range<UInt64>?
}

/// A change source's answer for one capture.
enum ChangeAnswer {
    /// These ranges hold every change since the newest point.
    case changes(any ChangedRanges)
    /// It cannot say (a first capture, a baseline or bitmap missing or stale): why, in words.
    case cannot(String)
}

/// Something that can say what changed in the source since the chain's newest point, and that keeps what it
/// needs for the next capture in step with the chain's commits.
protocol ChangeSource: AnyObject {
    /// What found the changes, as `list` shows it and the manifest records it ("reflink").
    var name: String { get }
    /// The ranges that can have changed since the newest point of `manifest`, or why it cannot say.
    func changes(since manifest: ChainManifest) throws -> ChangeAnswer
    /// Records in the manifest about to be committed what the next capture needs to trust its next answer.
    func willCommit(_ manifest: inout ChainManifest)
    /// The manifest is committed: what this capture's answer needs next time takes the last one's place. A
    /// failure here leaves the next capture to find its record stale (it then scans).
    func didCommit(_ manifest: ChainManifest)
    /// The capture failed or was abandoned: undo what `changes` prepared.
    func abandon()
}

/// Ranges from a sorted list (tests, and sources whose answer is small).
final class ListedRanges: ChangedRanges {
    private var ranges: [Range<UInt64>]
    private var at = 0

    init(_ ranges: [Range<UInt64>]) { self.ranges = ranges }

    func next() throws -> Range<UInt64>? {
        guard at < ranges.count else { return nil }
        at += 1
        return ranges[at - 1]
    }
}

/// How a capture found its changes, as the manifest records it per point.
public enum ChangeSources {
    public static let scan = "scan"
    public static let rescan = "rescan"
    /// A change source's sample found blocks it had called unchanged: the whole source was scanned in the same run.
    public static let scanAfterMiss = "scan-after-missed-writes"
}
