// An open chain: its store, its manifest, the names of its files, and the clean-up of what a killed writer left
// behind. Every change to a chain ends in `commit`, which replaces the manifest by compare-and-swap: the one
// moment at which a new point (or a merge) becomes real. Objects the manifest does not name are leftovers and
// are removed, by writers only.
//
// Readers (restore, verify, list) take no lock and run beside a writer: a capture only adds objects, and a
// merge deletes images only after the manifest stops naming them, while a reader's open images stay readable.
// A reader that finds an image gone re-reads the manifest and opens the images it names now.
import StrataCodec
import StrataFormat
import StrataIO

public final class Chain {
    public enum Access { case read, write, create }

    public let store: ChainStore
    public var location: String { store.location }
    public private(set) var manifest: ChainManifest?
    private var manifestBytes: [UInt8]?
    private let access: Access
    private let lease: WriterLease?
    /// The secret the caller gave (an encrypted chain's key opens with it: `unlock`).
    private let secret: UserSecret?
    /// An encrypted chain's keys, once unlocked.
    public private(set) var keys: ChainKeys?

    /// Opens the chain at `location`: `read` takes no lock and changes nothing; `write` and `create` take the
    /// writer's lock (another writer: `chainInUse`) and remove leftovers; `create` makes the chain when there
    /// is none (a private directory), in an empty container only.
    /// `secret` opens an encrypted chain's key (checked here: a wrong one fails before anything is done).
    /// `store` says what a writer accepts of the chain's store.
    public convenience init(location: String, access: Access, secret: UserSecret? = nil, store: StoreOptions = StoreOptions()) throws {
        try self.init(location: location, access: access, cleanUp: true, secret: secret, store: store)
    }

    /// `cleanUp: false` leaves leftovers for the caller to list first (`repair --dry-run`).
    init(location: String, access: Access, cleanUp: Bool, secret: UserSecret? = nil, store options: StoreOptions = StoreOptions()) throws {
        let store = try ChainStores.store(for: location, options: options)
        self.store = store
        self.access = access
        self.secret = secret
        if store.containerExists() {
            // Nothing is created (not even the lock) in a directory that holds something other than a chain.
            let names = access == .create ? try store.list() : []
            if !names.contains(ChainManifest.fileName) && names.contains(where: { !Chain.isOurs($0, store) }) {
                throw ChainError.notAChain(path: location)
            }
        } else {
            guard access == .create else { throw ChainError.notAChain(path: location) }
            do { try store.makeContainer() } catch let e as IOError {
                if e.alreadyExists { throw ChainError.notAChain(path: location) }
                throw ChainError.targetUnavailable(path: location, reason: e.reason)
            }
        }
        if access == .read {
            lease = nil
        } else {
            guard let lease = try store.lockWriter() else { throw ChainError.chainInUse(path: location) }
            self.lease = lease
        }
        try reloadManifest()
        // (A container without a manifest was checked for foreign files above, before anything was made in it.)
        if manifest == nil && access != .create { throw ChainError.notAChain(path: location) }
        if secret != nil && manifest?.keyFile != nil { try unlock() }
        if access != .read && cleanUp { removeLeftovers() }
    }

    /// Whether the chain is encrypted.
    public var isEncrypted: Bool { manifest?.keyFile != nil }

    /// The keys every reader and writer of the chain's data needs: nil for a chain that is not encrypted; an
    /// encrypted one without its secret: `keyNeeded`.
    func dataKeys() throws -> ChainKeys? {
        guard isEncrypted else { return nil }
        guard let keys else { throw ChainError.keyNeeded(path: location) }
        return keys
    }

    /// Opens the chain's key file with the secret given.
    private func unlock() throws {
        guard let m = manifest, let name = m.keyFile, let secret else { return }
        let file: ChainKeyFile
        do { file = try ChainKeyFile.decode(store.readSmall(name, limit: 1 << 16)) } catch { throw damaged(name, error) }
        guard file.chainID == m.chainID else { throw ChainError.damaged(file: name, detail: "it belongs to another chain (\(file.chainID))") }
        keys = ChainKeys(master: try Self.masterKey(file, secret: secret, location: location), chainID: m.chainID.bytes)
    }

    /// The master key a key file holds, opened with `secret`.
    static func masterKey(_ file: ChainKeyFile, secret: UserSecret, location: String) throws -> [UInt8] {
        switch (file.wrapping, secret) {
        case (.keyFile, .passphrase):
            throw ChainError.wrongKey(path: location, detail: "the chain was encrypted with a key file, and a passphrase was given")
        case (.passphrase, .keyFile):
            throw ChainError.wrongKey(path: location, detail: "the chain was encrypted with a passphrase, and a key file was given")
        default: break
        }
        let cost = KeyWrapping.Cost(operations: file.operations, memory: file.memory)
        guard let wrapping = KeyWrapping.wrappingKey(secret, salt: file.salt, cost: cost) else {
            throw ChainError.machineLacks("not enough memory for the passphrase's key derivation (Argon2id, \(file.memory >> 20) MiB)")
        }
        guard let master = KeyWrapping.unwrap(file.wrapped, under: wrapping, nonce: file.nonce, associated: file.associatedData) else {
            throw ChainError.wrongKey(path: location, detail: "a wrong key file or passphrase, or another chain's")
        }
        return master
    }

    static let encryptWithoutKey = ChainError.invalidOption("--encrypt needs a key: --key-file FILE, or a passphrase in STRATA_PASSPHRASE")

    /// A new key file wrapping `master` under `secret`.
    static func keyFile(master: [UInt8], chainID: Identifier, secret: UserSecret) throws -> ChainKeyFile {
        let salt = KeyWrapping.random(KeyWrapping.saltSize), nonce = KeyWrapping.random(KeyWrapping.nonceSize)
        let (wrapping, cost): (ChainKeyFile.Wrapping, KeyWrapping.Cost)
        if case .passphrase = secret { (wrapping, cost) = (.passphrase, .standard) } else { (wrapping, cost) = (.keyFile, KeyWrapping.Cost(operations: 0, memory: 0)) }
        var file = ChainKeyFile(chainID: chainID, wrapping: wrapping, operations: cost.operations, memory: cost.memory, salt: salt, nonce: nonce, wrapped: [])
        guard let wrappingKey = KeyWrapping.wrappingKey(secret, salt: salt, cost: cost) else {
            throw ChainError.machineLacks("not enough memory for the passphrase's key derivation (Argon2id)")
        }
        file.wrapped = KeyWrapping.wrap(master: master, under: wrappingKey, nonce: nonce, associated: file.associatedData)
        return file
    }

    /// Makes a new chain encrypted: a master key, its key file published (not yet named by a manifest), and the
    /// keys. Called by the first capture before it writes anything else.
    func startEncryption(chainID: Identifier) throws -> ChainKeys {
        guard let secret else { throw Self.encryptWithoutKey }
        let master = KeyWrapping.random(ChainKeys.keySize)
        let file = try Self.keyFile(master: master, chainID: chainID, secret: secret)
        try store.publishWhole(ChainKeyFile.fileName, file.encode())
        let keys = ChainKeys(master: master, chainID: chainID.bytes)
        self.keys = keys
        return keys
    }


    /// Reads the manifest again; returns whether it changed.
    @discardableResult
    func reloadManifest() throws -> Bool {
        let bytes: [UInt8]
        do { bytes = try store.readSmall(ChainManifest.fileName, limit: 64 << 20) } catch where error.isMissing {
            let had = manifestBytes != nil
            (manifest, manifestBytes) = (nil, nil)
            return had
        } catch { throw damaged(ChainManifest.fileName, error) }
        guard bytes != manifestBytes else { return false }
        do { manifest = try ChainManifest.decode(bytes) } catch { throw damaged(ChainManifest.fileName, error) }
        manifestBytes = bytes
        return true
    }

    static func isOurs(_ name: String, _ store: ChainStore) -> Bool {
        store.isTemporary(name) || name.hasSuffix(".strata") || name == ChainKeyFile.fileName
    }

    static func imageName(first: UInt32, last: UInt32) -> String {
        first == last ? "p\(pad(last)).strata" : "p\(pad(first))-\(pad(last)).strata"
    }

    static func hashMapName(point: UInt32) -> String { "map-p\(pad(point)).strata" }

    private static func pad(_ n: UInt32) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 6 - s.count)) + s
    }

    /// The objects a writer removes: temporary ones and Strata objects the manifest does not name (left by a
    /// killed writer, or replaced by a merge).
    func leftovers() -> [String] {
        let referenced = Chain.kept(by: manifest)
        guard let names = try? store.list() else { return [] }
        return names.filter { Chain.isOurs($0, store) && !referenced.contains($0) }.sorted()
    }

    /// The objects a chain keeps with `manifest`: those it names, and the damage record.
    static func kept(by manifest: ChainManifest?) -> Set<String> {
        guard let m = manifest else { return [DamageRecord.fileName] }
        return Set(m.images.map(\.file) + [m.hashMapFile, DamageRecord.fileName] + (m.keyFile.map { [$0] } ?? []))
    }

    /// Removes the leftovers.
    func removeLeftovers() {
        precondition(access != .read, "readers change nothing")
        for name in leftovers() { try? store.remove(name) }
    }

    /// Makes `next` the chain's manifest if nobody else changed it since it was read, then removes the objects it
    /// no longer names. Every object `next` names must have been published and `syncPublished` called.
    func commit(_ next: ChainManifest) throws {
        precondition(access != .read, "readers change nothing")
        var next = next
        next.dropRecordsOfUnlistedPoints()
        let bytes = next.encode()
        // A manifest this run could not read back is a bug in this run: refuse it rather than commit it.
        guard (try? ChainManifest.decode(bytes)) == next else {
            throw ChainError.damaged(file: ChainManifest.fileName, detail: "the manifest this run made does not read back (a bug in strata); nothing was committed")
        }
        try store.commitManifest(bytes, expected: manifestBytes)
        manifest = next
        manifestBytes = bytes
        removeLeftovers()
    }

    /// Runs `body` with the manifest as it is; when `body` fails because an object is missing and the manifest
    /// has changed meanwhile (a merge replaced images under a reader), runs it again on the new manifest.
    func withStableManifest<T>(_ body: (ChainManifest) throws -> T) throws -> T {
        for _ in 0..<8 {
            guard let m = manifest else { throw ChainError.notAChain(path: location) }
            do { return try body(m) } catch where access == .read && Chain.isMissingObject(error) {
                guard try reloadManifest() else { throw error }
            }
        }
        guard let m = manifest else { throw ChainError.notAChain(path: location) }
        return try body(m)
    }

    /// Whether an error says an object (an image, a map) is missing: a merge may have replaced it meanwhile.
    static func isMissingObject(_ error: Error) -> Bool {
        if case ChainError.damaged(_, let detail) = error { return detail == ChainError.missingDetail }
        return error.isMissing
    }

    /// Opens the images that restore `point`, oldest first, checking that each is the one the manifest lists and
    /// links to the one before, back to the newest image that covers every block (the full image, or one that
    /// holds every block itself: older images are not needed, and may be damaged); with `from`, only the
    /// image holding points from `from` on, back to the newest of those that covers every block (a merge reads
    /// no image below its range: the first one's parent link is checked against the manifest's entry for the
    /// image before).
    /// `reusing` may hand back an image opened before (a server opens each image once for all its points); it is
    /// checked as a newly opened one is.
    func openImages(forPoint point: UInt32, from: UInt32 = 0, reusing: (ManifestEntry) -> ImageFile? = { _ in nil }) throws -> [ImageFile] {
        try withStableManifest { m in
            guard let entries = m.images(forPoint: point) else { throw ChainError.noSuchPoint(point, available: m.points) }
            var images = [ImageFile]()
            for k in stride(from: entries.endIndex - 1, through: entries.startIndex, by: -1) {
                let e = entries[k]
                guard e.lastPoint >= from else { break }
                let image = try reusing(e) ?? ImageFile(store: store, name: e.file, keys: keys)
                try Chain.check(image.header, of: e, in: m)
                try Chain.check(image.header, of: e, follows: k > entries.startIndex ? entries[k - 1] : nil)
                images.append(image)
                if image.header.coversEveryBlock { break }
            }
            return images.reversed()
        }
    }

    /// The images of `point`, oldest first: what restore, a map rebuild and a heal walk (PointWalk).
    func openPoint(_ point: UInt32) throws -> [ImageFile] { try openImages(forPoint: point) }

    /// Checks that an image's header is the one the manifest lists, and of this chain.
    static func check(_ h: ImageHeader, of e: ManifestEntry, in m: ChainManifest) throws {
        guard h.imageID == e.imageID, h.chainID == m.chainID, h.firstPoint == e.firstPoint, h.lastPoint == e.lastPoint,
            h.kind == e.kind
        else {
            let why = h.chainID != m.chainID ? "it belongs to another chain (\(h.chainID))" : "the image is not the one the manifest lists"
            throw ChainError.damaged(file: e.file, detail: why)
        }
        guard h.blockSize == m.blockSize, h.sourceSize == m.sourceSize else {
            throw ChainError.damaged(file: e.file, detail: "block size or source size differs from the chain's")
        }
    }

    /// Checks that an image links to the one before it in the chain (a full image starts it, links to none).
    /// `parent` is the manifest's entry for the image before (where that image is opened too, its header is
    /// checked against the same entry).
    static func check(_ h: ImageHeader, of e: ManifestEntry, follows parent: ManifestEntry?) throws {
        if let parent {
            guard h.kind == .incremental else { throw ChainError.damaged(file: e.file, detail: "a full image follows \(parent.file)") }
            guard h.parentID == parent.imageID else { throw ChainError.damaged(file: e.file, detail: "its parent is not \(parent.file)") }
        } else if h.kind != .full || h.parentID != .none {
            throw ChainError.damaged(file: e.file, detail: "the chain's first image is not a full image")
        }
    }
}
