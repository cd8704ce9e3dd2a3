// A chain directory: its lock, its manifest, the names of its files, and the clean-up of what a killed run left
// behind. Every change to a chain ends in `commit`, which atomically replaces the manifest: the one moment at
// which a new point (or a merge) becomes real. Files the manifest does not name are leftovers and are removed.
import StrataFormat
import StrataIO

#if canImport(Glibc)
import Glibc
#endif

public final class ChainDirectory {
    public let path: String
    private let lock: DirectoryLock
    public private(set) var manifest: ChainManifest?

    /// Opens (and with `create`, makes) a chain directory and takes its lock: shared with `readOnly` (restore,
    /// verify), exclusive otherwise. Leftovers from interrupted runs are removed, but only by writers: a
    /// read-only open changes nothing. Without `create`, a directory with no manifest is not a chain.
    public init(path: String, create: Bool, readOnly: Bool = false) throws {
        self.path = path
        var isDirectory = false
        if let st = try? Sys.stat(path) {
            isDirectory = st.st_mode & S_IFMT == S_IFDIR
            if !isDirectory { throw ChainError.notAChain(path: path) }
        }
        if !isDirectory {
            guard create else { throw ChainError.notAChain(path: path) }
            do { try Sys.mkdir(path) } catch { throw ChainError.targetUnavailable(path: path, reason: "\((error as? IOError)?.reason ?? "\(error)")") }
        }
        let manifestPath = "\(path)/\(ChainManifest.fileName)"
        let hasManifest = (try? Sys.stat(manifestPath)) != nil
        if !hasManifest {
            guard create else { throw ChainError.notAChain(path: path) }
            let foreign = try Sys.listDirectory(path).filter { !ChainDirectory.isOurs($0) && $0 != ".lock" }
            if !foreign.isEmpty { throw ChainError.notAChain(path: path) }
        }
        guard let lock = try DirectoryLock(directory: path, shared: readOnly) else { throw ChainError.chainInUse(path: path) }
        self.lock = lock
        if hasManifest { manifest = try ChainDirectory.readManifest(path) }
        if !readOnly { removeLeftovers() }
    }

    /// Reads and checks the manifest of the chain at `path`, without locking (it is only ever replaced whole).
    static func readManifest(_ path: String) throws -> ChainManifest {
        do {
            return try ChainManifest.decode(DurableFiles.readAll("\(path)/\(ChainManifest.fileName)", limit: 64 << 20))
        } catch { throw damaged(ChainManifest.fileName, error) }
    }

    static func isOurs(_ name: String) -> Bool {
        name.hasPrefix(DurableFiles.temporaryPrefix) || name.hasSuffix(".strata")
    }

    static func imageName(first: UInt32, last: UInt32) -> String {
        first == last ? "p\(pad(last)).strata" : "p\(pad(first))-\(pad(last)).strata"
    }

    static func hashMapName(point: UInt32) -> String { "map-p\(pad(point)).strata" }

    private static func pad(_ n: UInt32) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 6 - s.count)) + s
    }

    /// Removes temporary files and Strata files the manifest does not reference (left by a killed run).
    func removeLeftovers() {
        let referenced = Set((manifest?.images.map(\.file) ?? []) + (manifest.map { [$0.hashMapFile] } ?? []))
        guard let names = try? Sys.listDirectory(path) else { return }
        for name in names where ChainDirectory.isOurs(name) && !referenced.contains(name) {
            try? Sys.unlink("\(path)/\(name)")
        }
    }

    /// Atomically makes `next` the chain's manifest, then removes files it no longer references.
    func commit(_ next: ChainManifest) throws {
        try DurableFiles.publish(next.encode(), dir: path, name: ChainManifest.fileName)
        manifest = next
        removeLeftovers()
    }

    /// Opens the images that restore `point`, oldest first, checking that each links to the one before; with
    /// `from`, only those holding points from `from` on (a merge of a range reads no image below it: the first
    /// one's parent link is checked against the manifest's entry for the image before).
    func openImages(forPoint point: UInt32, from: UInt32 = 0) throws -> [ImageFile] {
        guard let m = manifest else { throw ChainError.notAChain(path: path) }
        guard let entries = m.images(forPoint: point) else { throw ChainError.noSuchPoint(point, available: m.points) }
        var images = [ImageFile]()
        var parent: ManifestEntry? = nil
        for e in entries {
            defer { parent = e }
            guard e.lastPoint >= from else { continue }
            let image = try ImageFile(directory: path, name: e.file)
            try ChainDirectory.check(image.header, of: e, in: m)
            try ChainDirectory.check(image.header, of: e, follows: parent)
            images.append(image)
        }
        return images
    }

    /// Checks that an image's header is the one the manifest lists, and of this chain.
    static func check(_ h: ImageHeader, of e: ManifestEntry, in m: ChainManifest) throws {
        guard h.imageID == e.imageID, h.chainID == m.chainID, h.firstPoint == e.firstPoint, h.lastPoint == e.lastPoint,
            h.kind == e.kind
        else {
            let why = h.chainID != m.chainID ? "it belongs to another chain (\(h.chainID))" : "the image is not the one the manifest lists"
            throw ChainError.damaged(file: e.file, detail: why)
        }
        guard h.blockSize == m.blockSize, h.sourceSize == m.sourceSize else {
            throw ChainError.damaged(file: e.file, detail: "block size or source size differs from the chain's")
        }
    }

    /// Checks that an image links to the one before it in the chain (a full image starts it, links to none).
    /// `parent` is the manifest's entry for the image before (where that image is opened too, its header is
    /// checked against the same entry).
    static func check(_ h: ImageHeader, of e: ManifestEntry, follows parent: ManifestEntry?) throws {
        if let parent {
            guard h.kind == .incremental else { throw ChainError.damaged(file: e.file, detail: "a full image follows \(parent.file)") }
            guard h.parentID == parent.imageID else { throw ChainError.damaged(file: e.file, detail: "its parent is not \(parent.file)") }
        } else if h.kind != .full || h.parentID != .none {
            throw ChainError.damaged(file: e.file, detail: "the chain's first image is not a full image")
        }
    }
}
