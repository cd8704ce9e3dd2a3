// The chain manifest (docs/FORMAT.md, "Manifest"): a small text file listing the images of a chain in order,
// the point each one makes restorable, and the hash map of the newest point. Text so that a person can read
// it with `cat`; a CRC-32C on the last line so that a torn or edited file is detected rather than trusted.

public struct ManifestEntry: Equatable, Sendable {
    public var file: String
    public var imageID: Identifier
    public var kind: ImageKind
    public var firstPoint: UInt32
    public var lastPoint: UInt32
    public var createdAt: UInt64
    /// Bytes of the source read to make the image (holes are not read).
    public var bytesRead: UInt64
    public var bytesStored: UInt64
    public var blocksChanged: UInt64

    public init(
        file: String, imageID: Identifier, kind: ImageKind, firstPoint: UInt32, lastPoint: UInt32, createdAt: UInt64,
        bytesRead: UInt64, bytesStored: UInt64, blocksChanged: UInt64
    ) {
        self.file = file
        self.imageID = imageID
        self.kind = kind
        self.firstPoint = firstPoint
        self.lastPoint = lastPoint
        self.createdAt = createdAt
        self.bytesRead = bytesRead
        self.bytesStored = bytesStored
        self.blocksChanged = blocksChanged
    }

    /// The point this image makes restorable (with its ancestors).
    public var point: UInt32 { lastPoint }
}

public struct ChainManifest: Equatable, Sendable {
    public static let fileName = "chain.manifest"
    public static let header = "strata-chain 1"
    public var chainID: Identifier
    public var blockSize: UInt32
    public var sourceSize: UInt64
    /// The number the next capture gets. Points are never renumbered or reused.
    public var nextPoint: UInt32
    /// Oldest first; the first is always full.
    public var images: [ManifestEntry]
    /// File name of the chain's hash map: the newest point's, or (`hashMapPoint`) an older point's that the images
    /// after it overlay.
    public var hashMapFile: String
    /// The point the hash map holds when it is older than the newest: a capture whose change source said what
    /// changed writes no map (docs/FORMAT.md, "Hash map"). Nil: the newest point's.
    public var hashMapPoint: UInt32? = nil
    /// What found each point's changes (`scan`, `rescan`, `reflink`, ...), by point; points captured before this
    /// was recorded have none. Only the points of the listed images are kept.
    public var changeSources: [UInt32: String] = [:]
    /// What identifies the reflink clone kept as the next capture's baseline (`--snapshot reflink`): opaque here.
    public var reflinkBaseline: String? = nil
    /// The dirty bitmap started when the newest point was captured (`NAME@POINT`): opaque here.
    public var dirtyBitmap: String? = nil
    /// A chain of used blocks (`capture --used-blocks`): every capture reads only the blocks the source's
    /// filesystems use; the rest are zeros in its points.
    public var usedBlocks = false
    /// What each point's capture read of each partition (`UsedBlocks` writes and reads the word), by point.
    public var usedSummaries: [UInt32: String] = [:]
    /// An encrypted chain's key file (`chain.key`): its master key, wrapped by the user's secret. Nil: not encrypted.
    public var keyFile: String? = nil

    public init(
        chainID: Identifier, blockSize: UInt32, sourceSize: UInt64, nextPoint: UInt32, images: [ManifestEntry],
        hashMapFile: String
    ) {
        self.chainID = chainID
        self.blockSize = blockSize
        self.sourceSize = sourceSize
        self.nextPoint = nextPoint
        self.images = images
        self.hashMapFile = hashMapFile
    }

    public var points: [UInt32] { images.map(\.point) }

    /// Drops what is recorded of points no image makes any more (merged or pruned away): what `encode` writes.
    public mutating func dropRecordsOfUnlistedPoints() {
        let listed = Set(points)
        changeSources = changeSources.filter { listed.contains($0.key) }
        usedSummaries = usedSummaries.filter { listed.contains($0.key) }
    }

    /// The images needed to restore `point`, oldest first, or nil when no image makes that point.
    public func images(forPoint point: UInt32) -> ArraySlice<ManifestEntry>? {
        guard let i = images.firstIndex(where: { $0.point == point }) else { return nil }
        return images[...i]
    }

    public func encode() -> [UInt8] {
        var text = "\(Self.header)\nchain \(chainID)\nblock-size \(blockSize)\nsource-size \(sourceSize)\n"
        text += "next-point \(nextPoint)\nhash-map \(hashMapFile)\n"
        if let hashMapPoint { text += "hash-map-point \(hashMapPoint)\n" }
        if let keyFile { text += "key \(keyFile)\n" }
        if let reflinkBaseline { text += "reflink-baseline \(reflinkBaseline)\n" }
        if let dirtyBitmap { text += "dirty-bitmap \(dirtyBitmap)\n" }
        for p in points where changeSources[p] != nil { text += "changes-\(p) \(changeSources[p]!)\n" }
        if usedBlocks { text += "used-blocks 1\n" }
        for p in points where usedSummaries[p] != nil { text += "used-\(p) \(usedSummaries[p]!)\n" }
        for e in images {
            text += "image \(e.firstPoint) \(e.lastPoint) \(e.kind == .full ? "full" : "incremental") \(e.imageID) "
            text += "\(e.createdAt) \(e.bytesRead) \(e.bytesStored) \(e.blocksChanged) \(e.file)\n"
        }
        return SealedText.seal(text)
    }

    public static func decode(_ bytes: [UInt8]) throws -> ChainManifest {
        let lines = try SealedText.open(bytes, header: header, what: "chain manifest")

        var fields: [String: String] = [:]
        var images = [ManifestEntry]()
        for line in lines {
            let parts = line.split(separator: " ", maxSplits: 9).map(String.init)
            guard let key = parts.first else { throw FormatError.invalid("chain manifest has a malformed line") }
            if key == "image" {
                guard parts.count == 10, let first = UInt32(parts[1]), let lastP = UInt32(parts[2]),
                    let id = Identifier(hex: parts[4]), let created = UInt64(parts[5]), let read = UInt64(parts[6]),
                    let stored = UInt64(parts[7]), let changed = UInt64(parts[8]), isPlainFileName(parts[9]),
                    parts[3] == "full" || parts[3] == "incremental"
                else { throw FormatError.invalid("chain manifest has a malformed image line") }
                images.append(
                    ManifestEntry(
                        file: parts[9], imageID: id, kind: parts[3] == "full" ? .full : .incremental, firstPoint: first,
                        lastPoint: lastP, createdAt: created, bytesRead: read, bytesStored: stored, blocksChanged: changed))
            } else if parts.count == 2 {
                fields[key] = parts[1]
            } else {
                throw FormatError.invalid("chain manifest has a malformed line")
            }
        }
        guard let idText = fields["chain"], let chainID = Identifier(hex: idText),
            let bsText = fields["block-size"], let blockSize = UInt32(bsText), isValidBlockSize(blockSize),
            let sizeText = fields["source-size"], let sourceSize = UInt64(sizeText),
            let nextText = fields["next-point"], let nextPoint = UInt32(nextText),
            let mapFile = fields["hash-map"], isPlainFileName(mapFile)
        else { throw FormatError.invalid("chain manifest lacks a required field") }
        guard sourceSize <= ImageHeader.maxSourceSize else { throw FormatError.invalid("chain manifest source size is implausible") }
        guard let firstImage = images.first, firstImage.kind == .full,
            images.dropFirst().allSatisfy({ $0.kind == .incremental })
        else { throw FormatError.invalid("chain manifest does not start with exactly one full image") }
        var previous: UInt32 = 0
        for e in images {
            guard e.firstPoint == previous + 1 || (e.kind == .full && e.firstPoint >= 1), e.firstPoint <= e.lastPoint,
                e.lastPoint > previous, e.lastPoint < nextPoint
            else { throw FormatError.invalid("chain manifest lists points out of order") }
            previous = e.lastPoint
        }
        var m = ChainManifest(
            chainID: chainID, blockSize: blockSize, sourceSize: sourceSize, nextPoint: nextPoint, images: images,
            hashMapFile: mapFile)
        if let key = fields["key"] {
            guard isPlainFileName(key) else { throw FormatError.invalid("chain manifest names a malformed key file") }
            m.keyFile = key
        }
        if let text = fields["hash-map-point"] {
            guard let p = UInt32(text), p >= 1, p <= previous else { throw FormatError.invalid("chain manifest names a malformed hash map point") }
            m.hashMapPoint = p
        }
        m.reflinkBaseline = fields["reflink-baseline"]
        m.dirtyBitmap = fields["dirty-bitmap"]
        m.usedBlocks = fields["used-blocks"] == "1"
        for (key, value) in fields where key.hasPrefix("used-") && key != "used-blocks" {
            guard let p = UInt32(key.dropFirst("used-".count)) else { throw FormatError.invalid("chain manifest has a malformed line") }
            m.usedSummaries[p] = value
        }
        for (key, value) in fields where key.hasPrefix("changes-") {
            guard let p = UInt32(key.dropFirst("changes-".count)) else { throw FormatError.invalid("chain manifest has a malformed line") }
            m.changeSources[p] = value
        }
        return m
    }
}

/// Names in the manifest are plain file names inside the chain directory, never paths.
func isPlainFileName(_ s: String) -> Bool {
    !s.isEmpty && s.count <= 255 && !s.contains("/") && s != "." && s != ".." && !s.hasPrefix(".")
}
