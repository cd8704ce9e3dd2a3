// Little-endian field encoding for every on-disk structure. Swift has no guaranteed struct layout, so each
// structure is written and read field by field at explicit offsets; the tests pin those offsets.

/// Appends little-endian fields to a byte array.
public struct ByteWriter {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    // Byte by byte: appends into reserved capacity inline, where append(contentsOf:) of a buffer took a generic
    // path per field (perf: most of encoding a merged image's index).
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    public mutating func raw(_ v: [UInt8]) { bytes.append(contentsOf: v) }
    public mutating func zeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }
    public mutating func pad(to size: Int) {
        precondition(bytes.count <= size, "structure overflows its \(size)-byte slot")
        zeros(size - bytes.count)
    }
}

/// Reads little-endian fields from a byte buffer, throwing `FormatError.truncated` instead of trapping.
public struct ByteReader {
    public let bytes: [UInt8]
    public private(set) var offset: Int
    let what: String

    public init(_ bytes: [UInt8], what: String, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
        self.what = what
    }

    mutating func need(_ n: Int) throws {
        guard n >= 0, offset <= bytes.count - n else { throw FormatError.truncated(what, at: UInt64(offset)) }
    }

    public mutating func u8() throws -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func u32() throws -> UInt32 {
        try need(4)
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        offset += 4
        return v
    }

    public mutating func u64() throws -> UInt64 {
        try need(8)
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        offset += 8
        return v
    }

    public mutating func raw(_ n: Int) throws -> [UInt8] {
        try need(n)
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    public mutating func skip(_ n: Int) throws {
        try need(n)
        offset += n
    }
}

/// A 128-bit identifier (image id, chain id). Random at creation; printed as 32 hex digits.
public struct Identifier: Hashable, Sendable, CustomStringConvertible {
    public var bytes: [UInt8]  // always 16

    public static let none = Identifier(bytes: [UInt8](repeating: 0, count: 16))

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 16)
        self.bytes = bytes
    }

    public static func random() -> Identifier {
        var g = SystemRandomNumberGenerator()
        return Identifier(bytes: (0..<16).map { _ in UInt8.random(in: 0...255, using: &g) })
    }

    public init?(hex text: String) {
        guard let b = unhex(text), b.count == 16 else { return nil }
        bytes = b
    }

    public var description: String { hex(bytes) }
}

/// Bytes as lower-case hex digits, two a byte.
func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for b in bytes { out += [digits[Int(b >> 4)], digits[Int(b & 15)]] }
    return String(decoding: out, as: UTF8.self)
}

/// The bytes lower-case hex digits spell, or nil for anything else.
func unhex(_ text: String) -> [UInt8]? {
    let chars = Array(text.utf8)
    guard chars.count % 2 == 0 else { return nil }
    var out = [UInt8]()
    out.reserveCapacity(chars.count / 2)
    for i in stride(from: 0, to: chars.count, by: 2) {
        guard let hi = hexValue(chars[i]), let lo = hexValue(chars[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
    }
    return out
}

func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
    default: return nil
    }
}

