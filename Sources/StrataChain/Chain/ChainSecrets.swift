// The user's side of an encrypted chain (docs/ENCRYPTION.md): making a key file (`strata keygen`), reading one
// (`--key-file`), and re-wrapping a chain's master key under a new secret (`strata key change`). The chain side,
// opening `chain.key` with the secret, is Chain's `unlock`.
import StrataCodec
import StrataFormat
import StrataIO

public enum ChainSecrets {
    /// Writes 32 random bytes to a new file at `path`, mode 0600, synced; refuses to replace anything.
    public static func generate(keyFile path: String) throws {
        let file = try newKeyFile(path)
        let key = KeyWrapping.random(ChainKeys.keySize)
        do {
            try key.withUnsafeBytes { try Sys.pwriteAll(file.rawValue, $0.baseAddress!, $0.count, 0, path: path) }
            try Sys.fsync(file.rawValue, path: path)
            try? DurableFiles.fsyncDirectory(BlockDevices.parentDirectory(of: path))
        } catch let e as IOError {
            try? Sys.unlink(path)
            throw ChainError.keyFileUnusable(path: path, reason: e.reason)
        }
    }

    /// A new key file, private; refused where one exists.
    private static func newKeyFile(_ path: String) throws -> FileDescriptor {
        do { return try Sys.create(path, [.writeOnly, .exclusive], mode: 0o600) } catch let e as IOError {
            throw ChainError.keyFileUnusable(path: path, reason: e.alreadyExists ? "it exists; strata keygen never replaces a key (remove it yourself, or name another file)" : e.reason)
        }
    }

    /// The secret a key file holds; `warn` gets a line when others may read it.
    public static func readKeyFile(_ path: String, warn: (String) -> Void) throws -> UserSecret {
        let bytes: [UInt8]
        do {
            let st = try Sys.stat(path)
            if st.permissions & 0o077 != 0 {
                warn("warning: key file \(path) can be read by others (mode \(String(st.permissions & 0o777, radix: 8))); chmod 600 it")
            }
            bytes = try DurableFiles.readAll(path, limit: 4096)
        } catch let e as IOError {
            throw ChainError.keyFileUnusable(path: path, reason: e.reason)
        }
        guard bytes.count == ChainKeys.keySize else {
            throw ChainError.keyFileUnusable(path: path, reason: "it holds \(bytes.count) bytes, not the \(ChainKeys.keySize) of a key strata keygen makes")
        }
        return .keyFile(bytes)
    }

    /// Re-wraps the chain's master key under `new`, after checking `old` opens it: a new `chain.key` replaces the
    /// old one in one rename, under the writer's lock. No image is rewritten.
    public static func change(chain location: String, old: UserSecret, new: UserSecret, store: StoreOptions = StoreOptions()) throws {
        let chain = try Chain(location: location, access: .write, secret: old, store: store)
        guard let m = chain.manifest, let name = m.keyFile else {
            throw ChainError.invalidOption("chain \(location) is not encrypted: there is no key to change")
        }
        let file: ChainKeyFile
        do { file = try ChainKeyFile.decode(chain.store.readSmall(name, limit: 1 << 16)) } catch { throw damaged(name, error) }
        let master = try Chain.masterKey(file, secret: old, location: location)
        try chain.store.publishWhole(name, Chain.keyFile(master: master, chainID: m.chainID, secret: new).encode())
    }
}
