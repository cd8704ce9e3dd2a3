// Deterministic structures for the round-trip and golden-file tests.
import StrataFormat

enum Fixtures {
    static let chainID = Identifier(bytes: Array(0x10..<0x20))
    static let imageID = Identifier(bytes: Array(0x20..<0x30))
    static let parentID = Identifier(bytes: Array(0x30..<0x40))

    static var index: ImageIndex {
        ImageIndex(
            frames: [
                FrameRecord(offset: 4096, length: 100 + 3 * 16, blockCount: 3, codec: .zstd, checksum: 0x0102_0304_0506_0708),
                FrameRecord(offset: 4096 + 148, length: 4096 + 16, blockCount: 1, codec: .raw, checksum: 0xAABB_CCDD_EEFF_0011),
            ],
            extents: [
                ExtentRecord(firstBlock: 0, blockCount: 2, kind: .data, frame: 0, frameBlock: 0),
                ExtentRecord(firstBlock: 2, blockCount: 5, kind: .zero),
                ExtentRecord(firstBlock: 7, blockCount: 1, kind: .data, frame: 0, frameBlock: 2),
                ExtentRecord(firstBlock: 8, blockCount: 1, kind: .data, frame: 1, frameBlock: 0),
                ExtentRecord(firstBlock: 9, blockCount: 1, kind: .zero),
            ])
    }

    /// A header consistent with `index` (a full image of a 10-block, 40000-byte source).
    static var header: ImageHeader {
        var h = ImageHeader(
            kind: .full, blockSize: 4096, sourceSize: 40000, chainID: chainID, imageID: imageID, parentID: .none,
            firstPoint: 1, lastPoint: 1, createdAt: 1_800_000_000)
        let bytes = index.encode()
        h.indexOffset = 4096 + 148 + 4112
        h.indexLength = UInt64(bytes.count)
        h.indexChecksum = CRC32C.checksum(bytes)
        h.fileSize = h.indexOffset + h.indexLength
        h.frameCount = 2
        h.extentCount = 5
        h.dataBlocks = 4
        h.zeroBlocks = 6
        h.storedBytes = 148 + 4112
        return h
    }

    static var manifest: ChainManifest {
        ChainManifest(
            chainID: chainID, blockSize: 4096, sourceSize: 40000, nextPoint: 4,
            images: [
                ManifestEntry(
                    file: "p000001.strata", imageID: imageID, kind: .full, firstPoint: 1, lastPoint: 1, createdAt: 1_800_000_000,
                    bytesRead: 40000, bytesStored: 12345, blocksChanged: 10),
                ManifestEntry(
                    file: "p000002-000003.strata", imageID: parentID, kind: .incremental, firstPoint: 2, lastPoint: 3,
                    createdAt: 1_800_000_100, bytesRead: 80000, bytesStored: 5000, blocksChanged: 2),
            ], hashMapFile: "map-p000003.strata")
    }
}
