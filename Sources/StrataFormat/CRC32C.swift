// CRC-32C (Castagnoli), the checksum of every small structure on disk: image headers, indexes, hash-map
// headers and the manifest. It lives here, in pure Swift, so that decoding verifies itself without a C
// dependency. Bulk data (frames, hash-map chunks) is checksummed with XXH3-64 by StrataCodec instead.

private let table: [UInt32] = (0..<256).map { i -> UInt32 in
    var c = UInt32(i)
    for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
    return c
}

public enum CRC32C {
    public static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            for b in bytes { crc = t[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        }
        return crc ^ 0xFFFF_FFFF
    }
}
