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
        return SealedText.seal(text)
    }

    public static func decode(_ bytes: [UInt8]) throws -> DamageRecord {
        var record = DamageRecord()
        for line in try SealedText.open(bytes, header: header, what: "damage record") {
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
