// `chain.key` (docs/FORMAT.md, "Key file of an encrypted chain"): the chain's master key wrapped by the user's
// secret, in text like the manifest, CRC-32C last. Nothing in it is secret without the secret that wraps it.

public struct ChainKeyFile: Equatable, Sendable {
    public static let fileName = "chain.key"
    static let header = "strata-key 1"

    public enum Wrapping: String, Sendable {
        /// The 32 bytes of a key file.
        case keyFile = "key-file"
        /// Argon2id of a passphrase.
        case passphrase = "argon2id"
    }

    public var chainID: Identifier
    public var wrapping: Wrapping
    /// Argon2id's operations and memory (bytes); zero for a key file.
    public var operations: UInt64
    public var memory: UInt64
    public var salt: [UInt8]  // 16
    public var nonce: [UInt8]  // 24
    /// The master key sealed with XChaCha20-Poly1305: 32 + 16 bytes.
    public var wrapped: [UInt8]

    public init(chainID: Identifier, wrapping: Wrapping, operations: UInt64, memory: UInt64, salt: [UInt8], nonce: [UInt8], wrapped: [UInt8]) {
        (self.chainID, self.wrapping, self.operations, self.memory) = (chainID, wrapping, operations, memory)
        (self.salt, self.nonce, self.wrapped) = (salt, nonce, wrapped)
    }

    /// The associated data the master key is wrapped with: a key file of one chain does not open another's.
    public var associatedData: [UInt8] { Array(Self.header.utf8) + chainID.bytes }

    public func encode() -> [UInt8] {
        var text = "\(Self.header)\nchain \(chainID)\ncipher aes-256-gcm\nwrapping \(wrapping.rawValue)\n"
        text += "argon2id-ops \(operations)\nargon2id-memory \(memory)\nsalt \(hex(salt))\nnonce \(hex(nonce))\nwrapped \(hex(wrapped))\n"
        return SealedText.seal(text)
    }

    public static func decode(_ bytes: [UInt8]) throws -> ChainKeyFile {
        let what = "chain key file"
        var fields: [String: String] = [:]
        for line in try SealedText.open(bytes, header: header, what: what) {
            let parts = line.split(separator: " ").map(String.init)
            guard parts.count == 2 else { throw FormatError.invalid("\(what) has a malformed line") }
            fields[parts[0]] = parts[1]
        }
        guard fields["cipher"] == "aes-256-gcm" else { throw FormatError.unsupported("cipher \(fields["cipher"] ?? "none")") }
        guard let id = fields["chain"].flatMap(Identifier.init(hex:)), let wrapping = fields["wrapping"].flatMap(Wrapping.init(rawValue:)),
            let ops = fields["argon2id-ops"].flatMap({ UInt64($0) }), let memory = fields["argon2id-memory"].flatMap({ UInt64($0) }),
            let salt = fields["salt"].flatMap(unhex), salt.count == 16, let nonce = fields["nonce"].flatMap(unhex), nonce.count == 24,
            let wrapped = fields["wrapped"].flatMap(unhex), wrapped.count == 48,
            wrapping == .keyFile || (ops >= 1 && ops <= 64 && memory >= 8192 && memory <= 1 << 34)
        else { throw FormatError.invalid("\(what) lacks a field or has a malformed one") }
        return ChainKeyFile(chainID: id, wrapping: wrapping, operations: ops, memory: memory, salt: salt, nonce: nonce, wrapped: wrapped)
    }
}
