// The keys of an encrypted chain and everything done with them (docs/ENCRYPTION.md). The chain's master key K
// (32 random bytes, kept in `chain.key` wrapped by the user's secret: KeyWrapping) never encrypts anything itself;
// each use has its own subkey from libsodium's KDF. Sealing is AES-256-GCM under a key used once (keyed BLAKE2b of
// a random 24-byte salt under the use's subkey), so no nonce can repeat however long a chain lives; what a sealed
// thing must not be moved from goes in as associated data. Sealed bytes are ciphertext, salt, tag: the ciphertext
// starts where the plain bytes did, so sealing and opening work in place with no move. This file and KeyWrapping.swift are the only code that
// touches the cryptographic libraries (CSeal: OpenSSL's AES-GCM, libsodium's keys).
import CSeal
import CXXH3

public final class ChainKeys: @unchecked Sendable {  // keys are derived once in init and only read after; libsodium and OpenSSL calls on them are thread-safe
    public static let keySize = 32
    /// Subkey numbers (libsodium's crypto_kdf ids, context "strata__").
    enum Use: UInt64 {
        case frames = 1, extentChunks = 2, hashMap = 3, authentication = 4, blockHashes = 5
    }

    /// XXH3's secret for keyed block hashes (at least 136 bytes).
    static let hashSecretSize = 192

    private let frames: [UInt8]
    private let extentChunks: [UInt8]
    private let hashMap: [UInt8]
    private let authentication: [UInt8]
    private let hashSecret: UnsafeMutableRawPointer
    /// The chain's id: associated data of every frame, so that a frame moved to another chain fails to open.
    public let chainID: [UInt8]

    /// The keys of the chain `chainID` (16 bytes) from its master key.
    public init(master: [UInt8], chainID: [UInt8]) {
        precondition(master.count == Self.keySize && chainID.count == 16)
        Self.initialise()
        func subkey(_ use: Use) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: 32)
            master.withUnsafeBufferPointer { m in strata_subkey(&out, 32, use.rawValue, m.baseAddress) }
            return out
        }
        frames = subkey(.frames)
        extentChunks = subkey(.extentChunks)
        hashMap = subkey(.hashMap)
        authentication = subkey(.authentication)
        hashSecret = UnsafeMutableRawPointer.allocate(byteCount: Self.hashSecretSize, alignment: 64)
        // 192 bytes: three 64-byte subkeys, ids 5, 6 and 7 (crypto_kdf gives at most 64 at a time).
        for i in 0..<3 {
            var p = [UInt8](repeating: 0, count: 64)
            master.withUnsafeBufferPointer { m in strata_subkey(&p, 64, Use.blockHashes.rawValue + UInt64(i), m.baseAddress) }
            (hashSecret + i * 64).copyMemory(from: p, byteCount: 64)
        }
        self.chainID = chainID
    }

    deinit {
        strata_wipe(hashSecret, Self.hashSecretSize)
        hashSecret.deallocate()
    }

    static func initialise() {
        precondition(strata_seal_init() == 0, "libsodium could not start")
    }

    // MARK: Frames

    /// Seals, in place, the `plainLength` bytes of a frame (hashes and payload) at `start`, with room for 40 more
    /// after them: the stored frame is ciphertext, salt (24), tag (16). Returns the stored length. `salt`: for
    /// golden files only (nil: 24 random bytes, as every real seal).
    public func sealFrame(_ start: UnsafeMutableRawPointer, plainLength: Int, salt: [UInt8]? = nil) -> Int {
        seal(key: frames, start, plainLength, ad: chainID, salt: salt)
        return plainLength + 40  // salt and tag: StrataFormat's Sealing.overhead
    }

    /// Opens, in place, a sealed frame of `storedLength` bytes at `start`: its hashes and payload are then where an
    /// unsealed frame's are (from `start`). False when it does not open (damaged, or moved from another chain).
    public func openFrame(_ start: UnsafeMutableRawPointer, storedLength: Int) -> Bool {
        storedLength >= 40 && open(key: frames, start, storedLength - 40, ad: chainID)
    }

    // MARK: Index and hash map

    public enum Sealed { case extentChunk, hashMapChunk }

    /// `plain` sealed (ciphertext, salt, tag) with the subkey of `what`, bound to `context` (which image and chunk).
    public func seal(_ plain: [UInt8], _ what: Sealed, context: [UInt8], salt: [UInt8]? = nil) -> [UInt8] {
        var out = plain + [UInt8](repeating: 0, count: 40)
        out.withUnsafeMutableBytes { seal(key: key(what), $0.baseAddress!, plain.count, ad: chainID + context, salt: salt) }
        return out
    }

    /// What `seal` sealed, or nil when it does not open under this key and context.
    public func open(_ sealed: [UInt8], _ what: Sealed, context: [UInt8]) -> [UInt8]? {
        guard sealed.count >= 40 else { return nil }
        var copy = sealed
        let ok = copy.withUnsafeMutableBytes { open(key: key(what), $0.baseAddress!, sealed.count - 40, ad: chainID + context) }
        return ok ? Array(copy[0..<(sealed.count - 40)]) : nil
    }

    private func key(_ what: Sealed) -> [UInt8] { what == .extentChunk ? extentChunks : hashMap }

    /// A keyed BLAKE2b of `parts` (each length-prefixed, so no two lists give the same input), `length` bytes.
    public func authenticator(_ parts: [[UInt8]], length: Int) -> [UInt8] {
        var input = chainID
        for p in parts {
            var n = UInt64(p.count).littleEndian
            withUnsafeBytes(of: &n) { input += $0 }
            input += p
        }
        var out = [UInt8](repeating: 0, count: length)
        strata_mac(&out, length, authentication, input, input.count)
        return out
    }

    /// Seals `length` bytes at `text` in place; the salt and tag go after them.
    private func seal(key: [UInt8], _ text: UnsafeMutableRawPointer, _ length: Int, ad: [UInt8], salt given: [UInt8]? = nil) {
        let plain = text.assumingMemoryBound(to: UInt8.self), salt = plain + length
        if let given {
            precondition(given.count == 24)
            salt.update(from: given, count: 24)
        } else {
            strata_random(salt, 24)
        }
        precondition(strata_seal(key, salt, ad, ad.count, plain, length, salt + 24) == 0, "AES-256-GCM failed to seal")
    }

    private func open(key: [UInt8], _ text: UnsafeMutableRawPointer, _ length: Int, ad: [UInt8]) -> Bool {
        let sealed = text.assumingMemoryBound(to: UInt8.self), salt = sealed + length
        return strata_open(key, salt, ad, ad.count, sealed, length, salt + 24) == 0
    }

    // MARK: Block hashes

    /// The keyed XXH3-128 of one block (what an encrypted chain compares and stores).
    @inline(__always)
    public func blockHash(_ p: UnsafeRawPointer, count: Int) -> BlockHash {
        let h = strata_xxh3_128_secret(p, count, hashSecret, Self.hashSecretSize)
        return BlockHash(low: h.low64, high: h.high64)
    }
}

/// How a chain hashes its blocks: XXH3-128, keyed when the chain is encrypted.
public struct BlockHasher: Sendable {
    public let keys: ChainKeys?

    public init(_ keys: ChainKeys?) { self.keys = keys }
    public static let plain = BlockHasher(nil)

    @inline(__always)
    public func hash(_ p: UnsafeRawPointer, count: Int) -> BlockHash {
        if let keys { return keys.blockHash(p, count: count) }
        return BlockHash.of(p, count: count)
    }
}
