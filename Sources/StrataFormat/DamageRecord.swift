// What the last whole-chain verify found damaged: the images it could not use at all and the frames that failed
// their checks, named by image id (file names change when images are merged; ids do not). A capture reads it to
// heal: blocks the newest point still takes from a damaged frame are stored anew. Advisory, never trusted for
// correctness: a frame named wrongly only makes a capture store some blocks again. Text, like the manifest, and
// CRC-32C protected:
//
//   strata-damage 1
//   image <image id>            (an image that could not be opened or checked)
//   frame <image id> <frame>    (a frame that failed its checksum, decompression or a block hash)
//   crc32c <8 hex digits>       (of every byte before this line)
public struct DamageRecord: Equatable, Sendable {
    public static let fileName = "damage.strata"
    static let header = "strata-damage 1"

    public struct Frame: Hashable, Sendable {
        public var imageID: Identifier
        public var frame: UInt32
        public init(imageID: Identifier, frame: UInt32) {
            self.imageID = imageID
            self.frame = frame
        }
    }

    public var images: Set<Identifier>
    public var frames: Set<Frame>

    public init(images: Set<Identifier> = [], frames: Set<Frame> = []) {
        self.images = images
        self.frames = frames
    }

    public var isEmpty: Bool { images.isEmpty && frames.isEmpty }

    public func encode() -> [UInt8] {
        var text = "\(Self.header)\n"
        for id in images.map(\.description).sorted() { text += "image \(id)\n" }
        for f in frames.sorted(by: { ($0.imageID.description, $0.frame) < ($1.imageID.description, $1.frame) }) {
            text += "frame \(f.imageID) \(f.frame)\n"
        }
        let body = Array(text.utf8)
        let crc = String(CRC32C.checksum(body), radix: 16)
        return body + Array("crc32c \(String(repeating: "0", count: 8 - crc.count))\(crc)\n".utf8)
    }

    public static func decode(_ bytes: [UInt8]) throws -> DamageRecord {
        let what = "damage record"
        guard bytes.starts(with: Array(header.utf8)) else { throw FormatError.badMagic(what) }
        guard bytes.count < 64 << 20 else { throw FormatError.invalid("damage record is implausibly large") }
        guard bytes.last == UInt8(ascii: "\n"), let cut = bytes.dropLast().lastIndex(of: UInt8(ascii: "\n")) else {
            throw FormatError.truncated(what, at: UInt64(bytes.count))
        }
        let body = Array(bytes[...cut])
        let last = String(decoding: bytes[(cut + 1)...].dropLast(), as: UTF8.self).split(separator: " ")
        guard last.count == 2, last[0] == "crc32c" else { throw FormatError.truncated(what, at: UInt64(bytes.count)) }
        guard UInt32(last[1], radix: 16) == CRC32C.checksum(body) else { throw FormatError.checksumMismatch(what) }
        var record = DamageRecord()
        for line in String(decoding: body, as: UTF8.self).split(separator: "\n").dropFirst() {
            let parts = line.split(separator: " ").map(String.init)
            if parts.count == 2, parts[0] == "image", let id = Identifier(hex: parts[1]) {
                record.images.insert(id)
            } else if parts.count == 3, parts[0] == "frame", let id = Identifier(hex: parts[1]), let frame = UInt32(parts[2]) {
                record.frames.insert(Frame(imageID: id, frame: frame))
            } else {
                throw FormatError.invalid("damage record has a malformed line")
            }
        }
        return record
    }
}
