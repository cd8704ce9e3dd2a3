// libFuzzer target for every decoder of untrusted bytes in StrataFormat: image header and index (one table, or a
// chunk table and its chunks), chain manifest
// and damage record (the same text form: selectors 2 and 3 feed both), hash-map header and chunk header. Built outside SwiftPM by Tools/fuzz (swiftc -sanitize=fuzzer,address over
// Sources/StrataFormat and this file). The first input byte picks the decoder; odd selectors first repair the
// checksums (header CRC, index CRC, manifest CRC line) so the fuzzer reaches the structural checks behind them.
// A decoder may throw; it must never trap, overflow, read out of bounds or allocate beyond the input's size.

@_cdecl("LLVMFuzzerTestOneInput")
public func strataFuzzFormat(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let selector = data[0]
    let body = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch selector % 6 {
    case 0, 1: fuzzImage(body, repair: selector % 6 == 1)
    case 2, 3: fuzzManifest(body, repair: selector % 6 == 3)
    default: fuzzHashMap(body, repair: selector % 6 == 5)
    }
    return 0
}

private func storeU32(_ v: UInt32, into b: inout [UInt8], at o: Int) {
    for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
}

private func loadU64(_ b: [UInt8], at o: Int) -> UInt64 {
    (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) }
}

/// The input is a whole image file: header, frames, index.
private func fuzzImage(_ input: [UInt8], repair: Bool) {
    var b = input
    let size = ImageHeader.size
    if repair && b.count >= size {
        let offset = loadU64(b, at: 112), length = loadU64(b, at: 120)
        if offset <= UInt64(b.count), length <= UInt64(b.count) - offset {
            storeU32(CRC32C.checksum(b[Int(offset)..<Int(offset + length)]), into: &b, at: 128)
        }
        storeU32(CRC32C.checksum(b[0..<(size - 4)]), into: &b, at: size - 4)
    }
    guard let h = try? ImageHeader.decode(Array(b.prefix(size))) else { return }
    // As ImageFile does: the file must be as long as the header says before the index is read.
    guard h.fileSize == UInt64(b.count) else { return }
    let index = Array(b[Int(h.indexOffset)..<Int(h.indexOffset + h.indexLength)])
    guard h.isChunked else {
        _ = try? ImageIndex.decode(index, header: h)
        return
    }
    guard var top = try? TopIndex.decode(index, header: h) else { return }
    // Each chunk the table places inside the file, as IndexReader reads them (repair: with the chunk's own CRC,
    // so the fuzzer reaches the checks behind it).
    func bytes(_ offset: UInt64, _ length: UInt32) -> [UInt8]? {
        offset <= UInt64(b.count) && UInt64(length) <= UInt64(b.count) - offset ? Array(b[Int(offset)..<Int(offset + UInt64(length))]) : nil
    }
    for c in top.frameChunks.indices {
        guard let chunk = bytes(top.frameChunks[c].offset, top.frameChunks[c].length) else { continue }
        if repair { top.frameChunks[c].checksum = CRC32C.checksum(chunk) }
        _ = try? IndexChunks.decodeFrames(chunk, chunk: c, of: top, header: h)
    }
    for c in top.extentChunks.indices {
        guard let chunk = bytes(top.extentChunks[c].offset, top.extentChunks[c].length) else { continue }
        if repair { top.extentChunks[c].checksum = CRC32C.checksum(chunk) }
        _ = try? IndexChunks.decodeExtents(chunk, chunk: c, of: top, header: h)
    }
}

private func fuzzManifest(_ input: [UInt8], repair: Bool) {
    var b = input
    if repair, let cut = b.dropLast().lastIndex(of: UInt8(ascii: "\n")) {
        let crc = CRC32C.checksum(b[...cut])
        let hex = String(crc, radix: 16)
        b = Array(b[...cut]) + Array(("crc32c " + String(repeating: "0", count: 8 - hex.count) + hex + "\n").utf8)
    }
    _ = try? ChainManifest.decode(b)
    _ = try? DamageRecord.decode(b)
}

private func fuzzHashMap(_ input: [UInt8], repair: Bool) {
    var b = input
    let size = HashMapHeader.size
    if repair && b.count >= size { storeU32(CRC32C.checksum(b[0..<(size - 4)]), into: &b, at: size - 4) }
    _ = try? HashMapHeader.decode(b)
    if b.count >= HashMapChunkHeader.size { _ = try? HashMapChunkHeader.decode(Array(b.prefix(HashMapChunkHeader.size))) }
}
