// The sizes of what encryption adds to the format (docs/FORMAT.md, "Encrypted chains"; the cryptography itself is
// StrataCodec's ChainKeys). Every sealed structure is the ciphertext (as long as the plain bytes, where they were),
// a 24-byte random salt and a 16-byte tag: AES-256-GCM under a key used once, derived from the salt and a subkey of
// the chain's key.

public enum Sealing {
    public static let saltSize = 24
    public static let tagSize = 16
    /// Bytes a sealed structure adds to its plaintext.
    public static let overhead = saltSize + tagSize
    /// A frame chunk of an encrypted image stays readable (verify without the key) and ends in this many bytes
    /// of keyed BLAKE2b over the chunk's image, number and bytes.
    public static let chunkTagSize = 16
    /// Bit 7 of a frame record's codec byte: the frame is sealed.
    public static let sealedCodecBit: UInt8 = 0x80

    /// What an encrypted image adds to its chunks of frame records and of extent records.
    public static func chunkOverhead(encrypted: Bool) -> (frames: Int, extents: Int) { encrypted ? (chunkTagSize, overhead) : (0, 0) }
}
