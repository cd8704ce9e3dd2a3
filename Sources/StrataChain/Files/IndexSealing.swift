// What an encrypted image does to its index (docs/FORMAT.md, "Encrypted chains"): frame chunks stay readable (verify
// without the key checks frames by them) and end in a 16-byte keyed tag over the image, the chunk's number and its
// bytes; extent chunks are sealed, bound to the same; the header's first 192 bytes and the chunk table are covered
// by the header's 32-byte authenticator. So no chunk can be moved to another place, image or chain, and none
// dropped, without the key.
import StrataCodec
import StrataFormat

enum IndexSealing {
    /// What binds a chunk to its place: the image, its points (a merge keeps the newest image's id), the chunk's number.
    static func context(_ h: ImageHeader, chunk c: Int) -> [UInt8] {
        var w = ByteWriter(capacity: 32)
        w.raw(h.imageID.bytes)
        w.u32(h.firstPoint)
        w.u32(h.lastPoint)
        w.u64(UInt64(c))
        return w.bytes
    }

    static func headerParts(_ h: ImageHeader, table: [UInt8]) -> [[UInt8]] {
        [Array(h.encode()[0..<ImageHeader.authenticatedPrefix]), table]
    }

    static func sealFrameChunk(_ plain: [UInt8], chunk c: Int, header h: ImageHeader, keys: ChainKeys) -> [UInt8] {
        plain + keys.authenticator([context(h, chunk: c), plain], length: Sealing.chunkTagSize)
    }

    static func openFrameChunk(_ stored: [UInt8], chunk c: Int, header h: ImageHeader, keys: ChainKeys?) throws -> [UInt8] {
        guard h.isEncrypted else { return stored }
        let plain = Array(stored.dropLast(Sealing.chunkTagSize))
        if let keys, keys.authenticator([context(h, chunk: c), plain], length: Sealing.chunkTagSize) != Array(stored.suffix(Sealing.chunkTagSize)) {
            throw FormatError.invalid("frame chunk \(c) fails authentication with this chain's key")
        }
        return plain
    }

    static func sealExtentChunk(_ plain: [UInt8], chunk c: Int, header h: ImageHeader, keys: ChainKeys) -> [UInt8] {
        keys.seal(plain, .extentChunk, context: context(h, chunk: c))
    }

    static func openExtentChunk(_ stored: [UInt8], chunk c: Int, header h: ImageHeader, keys: ChainKeys?, name: String) throws -> [UInt8] {
        guard h.isEncrypted else { return stored }
        guard let keys else { throw ChainError.keyNeeded(path: name) }
        guard let plain = keys.open(stored, .extentChunk, context: context(h, chunk: c)) else {
            throw FormatError.invalid("extent chunk \(c) does not open with this chain's key")
        }
        return plain
    }
}
