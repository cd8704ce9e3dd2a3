// The user's secret and the chain's master key (docs/ENCRYPTION.md, "Keys"): a key file's 32 bytes, or a passphrase
// through Argon2id (libsodium's crypto_pwhash, moderate limits), make the wrapping key; the master key is sealed
// under it with XChaCha20-Poly1305, the chain's id as associated data, in `chain.key` (StrataFormat's ChainKeyFile).
// Changing the secret re-wraps the master key; no image is rewritten.
import CSeal

public enum UserSecret: Sendable {
    /// The 32 bytes of a key file (`strata keygen`).
    case keyFile([UInt8])
    case passphrase(String)

    public var kind: String {
        switch self {
        case .keyFile: return "key-file"
        case .passphrase: return "passphrase"
        }
    }
}

public enum KeyWrapping {
    public static let saltSize = 16
    public static let nonceSize = 24
    public static let wrappedSize = ChainKeys.keySize + 16

    /// Argon2id's cost as stored: operations and memory in bytes.
    public struct Cost: Equatable, Sendable {
        public var operations: UInt64
        public var memory: UInt64
        public init(operations: UInt64, memory: UInt64) { (self.operations, self.memory) = (operations, memory) }
        public static var standard: Cost { Cost(operations: strata_passphrase_ops_default(), memory: UInt64(strata_passphrase_mem_default())) }
    }

    public static func random(_ count: Int) -> [UInt8] {
        ChainKeys.initialise()
        var out = [UInt8](repeating: 0, count: count)
        strata_random(&out, count)
        return out
    }

    /// The wrapping key a secret gives (nil: Argon2id could not get its memory).
    public static func wrappingKey(_ secret: UserSecret, salt: [UInt8], cost: Cost) -> [UInt8]? {
        ChainKeys.initialise()
        switch secret {
        case .keyFile(let bytes):
            precondition(bytes.count == ChainKeys.keySize)
            return bytes
        case .passphrase(let text):
            var key = [UInt8](repeating: 0, count: 32)
            let utf8 = Array(text.utf8)
            let ok = utf8.withUnsafeBufferPointer { p in
                p.withMemoryRebound(to: CChar.self) {
                    strata_passphrase_key(&key, $0.baseAddress, utf8.count, salt, cost.operations, Int(cost.memory))
                }
            }
            return ok == 0 ? key : nil
        }
    }

    public static func wrap(master: [UInt8], under key: [UInt8], nonce: [UInt8], associated: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: master.count + 16)
        strata_wrap(&out, master, master.count, associated, associated.count, nonce, key)
        return out
    }

    /// The master key, or nil when `key` does not open it (a wrong secret, or another chain's).
    public static func unwrap(_ wrapped: [UInt8], under key: [UInt8], nonce: [UInt8], associated: [UInt8]) -> [UInt8]? {
        guard wrapped.count == wrappedSize else { return nil }
        var out = [UInt8](repeating: 0, count: ChainKeys.keySize)
        return strata_unwrap(&out, wrapped, wrapped.count, associated, associated.count, nonce, key) == 0 ? out : nil
    }
}
