// CRC-32C (Castagnoli), the checksum of every small structure on disk: image headers, indexes, hash-map
// headers and the manifest. It lives here, in pure Swift, so that decoding verifies itself without a C
// dependency. Bulk data (frames, hash-map chunks) is checksummed with XXH3-64 by StrataCodec instead.
// Slicing-by-8 over raw bytes: about 8x the byte-at-a-time loop, and no allocation (a generic loop over a
// Collection, unspecialized across modules, allocated per byte: found by Benchmarks/FormatBenchmarks).

/// tables[k][i]: the CRC of byte i followed by k zero bytes.
private let tables: [UInt32] = {
    var t = [UInt32](repeating: 0, count: 8 * 256)
    for i in 0..<256 {
        var c = UInt32(i)
        for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        t[i] = c
    }
    for k in 1..<8 {
        for i in 0..<256 { t[k * 256 + i] = (t[(k - 1) * 256 + i] >> 8) ^ t[Int(t[(k - 1) * 256 + i] & 0xFF)] }
    }
    return t
}()

public enum CRC32C {
    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        if let crc = bytes.withContiguousStorageIfAvailable({ checksum(UnsafeRawBufferPointer($0)) }) { return crc }
        return Array(bytes).withUnsafeBytes { checksum($0) }
    }

    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        guard let base = bytes.baseAddress else { return 0 }
        let count = bytes.count
        tables.withUnsafeBufferPointer { t in
            var i = 0
            while i + 8 <= count {
                let lo = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt32.self)) ^ crc
                let hi = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: i + 4, as: UInt32.self))
                crc = t[7 * 256 + Int(lo & 0xFF)] ^ t[6 * 256 + Int((lo >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((lo >> 16) & 0xFF)] ^ t[4 * 256 + Int(lo >> 24)]
                    ^ t[3 * 256 + Int(hi & 0xFF)] ^ t[2 * 256 + Int((hi >> 8) & 0xFF)]
                    ^ t[256 + Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
                i += 8
            }
            while i < count {
                crc = t[Int((crc ^ UInt32(base.load(fromByteOffset: i, as: UInt8.self))) & 0xFF)] ^ (crc >> 8)
                i += 1
            }
        }
        return crc ^ 0xFFFF_FFFF
    }
}

/// The framing of Strata's small text files (the manifest, the damage record): a first line naming the format,
/// then records, then `crc32c <8 hex digits>` of every byte before that line.
enum SealedText {
    static func seal(_ text: String) -> [UInt8] {
        let body = Array(text.utf8)
        let crc = String(CRC32C.checksum(body), radix: 16)
        return body + Array("crc32c \(String(repeating: "0", count: 8 - crc.count))\(crc)\n".utf8)
    }

    /// The lines between the header line and the checksum line, after checking both; `what` names the file.
    static func open(_ bytes: [UInt8], header: String, what: String) throws -> [Substring] {
        guard bytes.starts(with: Array(header.utf8)) else { throw FormatError.badMagic(what) }
        guard bytes.count < 64 << 20 else { throw FormatError.invalid("\(what) is implausibly large") }
        guard bytes.last == UInt8(ascii: "\n"), let cut = bytes.dropLast().lastIndex(of: UInt8(ascii: "\n")) else {
            throw FormatError.truncated(what, at: UInt64(bytes.count))
        }
        let body = Array(bytes[...cut])
        let last = String(decoding: bytes[(cut + 1)...].dropLast(), as: UTF8.self).split(separator: " ")
        guard last.count == 2, last[0] == "crc32c" else { throw FormatError.truncated(what, at: UInt64(bytes.count)) }
        guard UInt32(last[1], radix: 16) == CRC32C.checksum(body) else { throw FormatError.checksumMismatch(what) }
        return Array(String(decoding: body, as: UTF8.self).split(separator: "\n").dropFirst())
    }
}
