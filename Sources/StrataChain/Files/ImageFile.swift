// Reading one image through the chain store: its header and index, validated (the exact file size the header
// names, the index's checksum; a chunked index's chunks are checked as they are read), and the open object the
// frame reader and the pipelines read frames from.
import StrataCodec
import StrataFormat
import StrataIO

/// An image opened for reading, header and index validated.
final class ImageFile {
    let name: String
    let object: StoredObject
    let header: ImageHeader
    let index: IndexReader
    /// An encrypted image's keys (nil without them: only checksums can be checked, `verify --checksums-only`).
    let keys: ChainKeys?
    /// How its blocks are hashed: keyed when encrypted.
    var hasher: BlockHasher { BlockHasher(keys) }

    init(store: ChainStore, name: String, keys: ChainKeys?) throws {
        self.name = name
        self.keys = keys
        let object: StoredObject
        do { object = try store.open(name) } catch { throw damaged(name, error) }
        self.object = object
        do {
            let size = object.size
            let h = try Self.header(of: object)
            guard size == h.fileSize else {
                throw FormatError.truncated("image file (\(size) bytes, header says \(h.fileSize))", at: size)
            }
            index = try IndexReader(name: name, header: h, object: object, keys: h.isEncrypted ? keys : nil)
            header = h
        } catch {
            throw damaged(name, error)
        }
    }

    /// The header of the image `name` alone (its index not read, nothing authenticated): what a capture asks of
    /// the newest image, whether it is seekable.
    static func header(in store: ChainStore, name: String) throws -> ImageHeader {
        do { return try header(of: store.open(name)) } catch { throw damaged(name, error) }
    }

    private static func header(of object: StoredObject) throws -> ImageHeader {
        var bytes = [UInt8](repeating: 0, count: ImageHeader.size)
        let n = try bytes.withUnsafeMutableBytes { try object.read(into: $0.baseAddress!, count: $0.count, at: 0) }
        guard n == ImageHeader.size else { throw FormatError.truncated("image header", at: UInt64(n)) }
        return try ImageHeader.decode(bytes)
    }
}
