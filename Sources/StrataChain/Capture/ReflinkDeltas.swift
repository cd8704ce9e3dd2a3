// Reflink deltas (`--snapshot reflink`): each capture reads an instant clone of the image file, and keeps that
// clone as the next capture's baseline. The baseline pins the extents it shares, so a write to the image after
// it had to go to a new extent: a range whose physical extent is the same in the baseline and in tonight's clone
// cannot have changed (FIEMAP, with FIEMAP_FLAG_SYNC, on both). Holes in both are zeros in both; an extent
// whose place FIEMAP cannot give plainly (unknown, delalloc, unwritten, encoded, inline) counts as changed.
//
// The baseline lives beside the image, in `.strata-baselines/` (0700), named by the chain: `CHAINID-NAME`.
// Tonight's clone is made there as `next-PID-NAME`; the manifest committed with the point records what
// identifies it (point, inode, size, mtime), and only then is it renamed over the baseline. So a capture killed
// before its commit leaves the old baseline matching the newest point (its clone is removed by the next run),
// and one killed between the commit and the rename leaves a clone the next run recognises by the record and
// renames. A baseline missing, changed since, or of another point: the capture says so and scans.
import StrataFormat
import StrataIO

final class ReflinkBaseline: ChangeSource {
    let name = "reflink"
    static let directoryName = ".strata-baselines"
    private static let nextPrefix = "next-"

    /// The image file the clones are made of, and the directory holding them.
    let image: String
    let directory: String
    private let fileName: String
    /// Tonight's clone: what this capture reads.
    let clonePath: String
    private let cloneStatus: FileStatus

    /// Clones `image` into its baseline directory (made 0700 where missing). Throws `IOError` as the clone does.
    init(image: String) throws {
        self.image = image
        let (dir, name) = (BlockDevices.parentDirectory(of: image), BlockDevices.lastComponent(of: image))
        directory = "\(dir)/\(Self.directoryName)"
        fileName = name
        if let st = try? Sys.stat(directory) {
            guard st.kind == .directory, st.owner == Sys.userID, st.permissions & 0o077 == 0 else {
                throw ChainError.cannotSnapshot(
                    path: image, reason: "\(directory) is not a directory only this user can open",
                    todo: "remove it (it holds only Strata's reflink baselines), or make it yours and 0700")
            }
        } else {
            try Sys.mkdir(directory, mode: 0o700)
        }
        clonePath = "\(directory)/\(Self.nextPrefix)\(Sys.processID)-\(name)"
        try? Sys.unlink(clonePath)
        try ReflinkClone.clone(image, to: clonePath)
        do { cloneStatus = try Sys.stat(clonePath) } catch {
            try? Sys.unlink(clonePath)
            throw error
        }
    }

    func baselinePath(chain: Identifier) -> String { "\(directory)/\(chain)-\(fileName)" }

    func changes(since m: ChainManifest) throws -> ChangeAnswer {
        let newest = m.images.last!.lastPoint
        defer { removeStaleClones() }
        guard let text = m.reflinkBaseline, let record = Record(text) else {
            return .cannot("no reflink baseline is recorded for this chain yet (the next capture with --snapshot reflink has one)")
        }
        guard record.point == newest else {
            return .cannot("the reflink baseline is of point \(record.point), not of the newest point \(newest)")
        }
        let path = baselinePath(chain: m.chainID)
        if (try? Sys.stat(path)).map(record.matches) != true { recoverRename(to: path, record) }
        guard let st = try? Sys.stat(path) else { return .cannot("the reflink baseline \(path) is missing") }
        guard record.matches(st) else { return .cannot("the reflink baseline \(path) changed since point \(newest) was captured") }
        do {
            return .changes(try ExtentDeltas(baseline: path, clone: clonePath, size: cloneStatus.size))
        } catch let e as IOError {
            return .cannot("the extents of \(path) cannot be mapped (\(e.operation): \(e.reason))")
        }
    }

    func willCommit(_ m: inout ChainManifest) {
        m.reflinkBaseline = Record(point: m.images.last!.lastPoint, cloneStatus).text
    }

    func didCommit(_ m: ChainManifest) {
        try? Sys.rename(clonePath, baselinePath(chain: m.chainID))
        try? DurableFiles.fsyncDirectory(directory)
        removeStaleClones()
    }

    func abandon() { try? Sys.unlink(clonePath) }

    /// A committed clone a killed run did not rename (the record names it): renames it now.
    private func recoverRename(to path: String, _ record: Record) {
        for entry in (try? Sys.listDirectory(directory)) ?? [] where entry.hasPrefix(Self.nextPrefix) && entry.hasSuffix("-\(fileName)") {
            let candidate = "\(directory)/\(entry)"
            guard candidate != clonePath, let st = try? Sys.stat(candidate), record.matches(st) else { continue }
            try? Sys.rename(candidate, path)
            return
        }
    }

    /// Clones of this image that runs no longer alive left (never committed, or renamed by now).
    private func removeStaleClones() { Self.removeStale(besides: image) }

    /// Removes the clones of `image` in its baseline directory that runs no longer alive left; returns their paths.
    /// (One a killed run committed but did not rename is among them: the next reflink capture then scans.)
    @discardableResult
    static func removeStale(besides image: String) -> [String] {
        let (dir, name) = (BlockDevices.parentDirectory(of: image), BlockDevices.lastComponent(of: image))
        return ReflinkClone.removeStale(in: "\(dir)/\(directoryName)", prefix: nextPrefix, name: name, keepingOwn: true)
    }

    /// What identifies a baseline, as the manifest keeps it: `POINT:INODE:SIZE:MTIME` (mtime in nanoseconds).
    struct Record: Equatable {
        var point: UInt32, inode: UInt64, size: UInt64, modified: UInt64

        init(point: UInt32, _ st: FileStatus) { (self.point, inode, size, modified) = (point, st.inode, st.size, st.modifiedNanos) }

        init?(_ text: String) {
            let f = text.split(separator: ":")
            guard f.count == 4, let p = UInt32(f[0]), let i = UInt64(f[1]), let s = UInt64(f[2]), let m = UInt64(f[3]) else { return nil }
            (point, inode, size, modified) = (p, i, s, m)
        }

        var text: String { "\(point):\(inode):\(size):\(modified)" }

        func matches(_ st: FileStatus) -> Bool { st.inode == inode && st.size == size && st.modifiedNanos == modified }
    }
}

/// The byte ranges where two files' extents differ, forward, a batch of extents of each at a time.
final class ExtentDeltas: ChangedRanges {
    private let baselineFile: FileDescriptor
    private let cloneFile: FileDescriptor
    private let a: FileExtents, b: FileExtents
    private var ea: FileExtent?, eb: FileExtent?
    private let size: UInt64
    private var position: UInt64 = 0

    /// Maps the first extents of both files now, so that a filesystem that cannot map them fails here.
    init(baseline: String, clone: String, size: UInt64) throws {
        baselineFile = try Sys.open(baseline, .readOnly)
        cloneFile = try Sys.open(clone, .readOnly)
        self.size = size
        a = FileExtents(fd: baselineFile.rawValue, path: baseline, size: size)
        b = FileExtents(fd: cloneFile.rawValue, path: clone, size: size)
        ea = try a.next()
        eb = try b.next()
    }

    func next() throws -> Range<UInt64>? {
        var start: UInt64?
        while position < size {
            while let e = ea, e.end <= position { ea = try a.next() }
            while let e = eb, e.end <= position { eb = try b.next() }
            let x = position
            let inA = ea.map { $0.logical <= x } ?? false
            let inB = eb.map { $0.logical <= x } ?? false
            let endA = ea.map { inA ? $0.end : $0.logical } ?? size
            let endB = eb.map { inB ? $0.end : $0.logical } ?? size
            let y = min(endA, endB, size)
            let same: Bool
            if !inA && !inB {
                same = true  // a hole in both: zeros in both
            } else if inA && inB, let p = ea, let q = eb, p.isComparable, q.isComparable {
                same = p.physical &+ (x - p.logical) == q.physical &+ (x - q.logical)
            } else {
                same = false
            }
            position = y
            if !same {
                if start == nil { start = x }
            } else if let s = start {
                return s..<x
            }
        }
        if let s = start { return s..<size }
        return nil
    }
}
