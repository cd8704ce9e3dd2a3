// Dirty bitmaps over NBD (`--dirty-bitmap NAME`): QEMU's bitmap of the blocks written since it was started,
// exported as the meta context `qemu:dirty-bitmap:NAME` (qemu-nbd -B NAME, or an export of qemu-storage-daemon
// or a running VM). A bitmap says what changed since *its* start, so it answers only for the point captured at
// that instant: each capture records the bitmap started with its snapshot (`--next-dirty-bitmap`), and the next
// capture trusts `--dirty-bitmap` only where it names that one. A bitmap another chain started, one started at an
// older point, one the server does not export (missing, or inconsistent after a crash: QEMU refuses to export
// it): notice, scan. docs/CHANGES.md has the rotation that cannot lose a write, at rest and in use.
import StrataFormat
import StrataIO

final class DirtyBitmapChanges: ChangeSource {
    let export: NBDExport
    /// The bitmap to read (started when the newest point was captured), and the one started for the next capture.
    let bitmap: String?
    let next: String?

    init(export: NBDExport, bitmap: String?, next: String?) {
        self.export = export
        self.bitmap = bitmap
        self.next = next
    }

    static func context(_ name: String) -> String { "qemu:dirty-bitmap:\(name)" }

    /// A bitmap's name as the manifest can hold it (one word, no `@`).
    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 1023 && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._+-".contains($0)) }
    }

    var name: String { "dirty-bitmap:\(bitmap ?? "")" }

    func changes(since m: ChainManifest) throws -> ChangeAnswer {
        let newest = m.images.last!.lastPoint
        guard let bitmap else { return .cannot("no --dirty-bitmap was given") }
        let recorded = m.dirtyBitmap.flatMap(Record.init)
        guard let recorded else { return .cannot("no dirty bitmap is recorded as started at point \(newest) (--next-dirty-bitmap names it)") }
        guard recorded.name == bitmap, recorded.point == newest else {
            let started = recorded.point == newest ? "the bitmap started at point \(newest) is \(recorded.name)" : "\(recorded.name) was started at point \(recorded.point), not at the newest point \(newest)"
            return .cannot("dirty bitmap \(bitmap) does not cover every write since point \(newest): \(started)")
        }
        guard export.has(Self.context(bitmap)) else {
            return .cannot("\(export.uri) exports no dirty bitmap \(bitmap) (missing, or inconsistent after a crash)")
        }
        return .changes(BitmapRanges(export, Self.context(bitmap)))
    }

    func willCommit(_ m: inout ChainManifest) {
        m.dirtyBitmap = next.map { Record(name: $0, point: m.images.last!.lastPoint).text }
    }

    func didCommit(_ m: ChainManifest) {}
    func abandon() {}

    /// The bitmap started when a point was captured: `NAME@POINT`.
    struct Record {
        var name: String, point: UInt32

        init(name: String, point: UInt32) { (self.name, self.point) = (name, point) }

        init?(_ text: String) {
            guard let at = text.lastIndex(of: "@"), let p = UInt32(text[text.index(after: at)...]) else { return nil }
            (name, point) = (String(text[..<at]), p)
        }

        var text: String { "\(name)@\(point)" }
    }
}

/// The dirty extents of a bitmap context, a window of block status at a time.
final class BitmapRanges: ChangedRanges {
    private let export: NBDExport
    private let context: String
    private var position: UInt64 = 0
    private var window: [(length: UInt64, flags: UInt32)] = []
    private var windowAt: UInt64 = 0
    private var taken = 0
    private static let windowBytes: UInt64 = 1 << 30

    init(_ export: NBDExport, _ context: String) {
        self.export = export
        self.context = context
    }

    func next() throws -> Range<UInt64>? {
        var start: UInt64?
        while true {
            if taken == window.count {
                guard windowAt < export.size else { break }
                window = try export.blockStatus(context, offset: windowAt, length: Self.windowBytes)
                taken = 0
                position = windowAt
                windowAt += window.reduce(0) { $0 + $1.length }
            }
            let e = window[taken]
            taken += 1
            let at = position
            position += e.length
            if e.flags & 1 != 0 {
                if start == nil { start = at }
            } else if let s = start {
                return s..<at
            }
        }
        if let s = start { return s..<position }
        return nil
    }
}
