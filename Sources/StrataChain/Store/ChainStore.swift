// The chain store seam: everything a chain needs from the place it lives, and nothing about what a chain is.
// A chain is a set of named objects (images, hash maps, the manifest); the store lists them, reads byte ranges
// of them, writes new ones (sequentially, and at reserved offsets where merge places copied frames) and
// publishes a new object atomically under its name, replaces the manifest only if it is still the one this
// run read (compare-and-swap), keeps a second writer out, and deletes. Chain logic (Chain/, Capture/, Restore/,
// Merge/, Verify/) goes through this protocol and nothing else, so a store in an object storage bucket can
// stand beside the local directory (LocalDirectoryStore.swift) and pass the same conformance tests
// (Tests/StrataChainTests/ChainStoreTests.swift).
//
// Readers take no lock: objects are immutable once published and only ever replaced whole (the manifest) or
// deleted after the manifest stops naming them, and an object a reader opened stays readable to the end (open
// files outlive their names; an object store must defer deletes for the same). Only writers exclude each other.
import StrataIO
import StrataS3

/// Where a chain lives.
public protocol ChainStore: AnyObject {
    /// The chain's location as the user named it, for messages.
    var location: String { get }

    /// Whether the chain's container (a directory) exists.
    func containerExists() -> Bool
    /// Makes the container, private to its owner.
    func makeContainer() throws
    /// The names of every object in the container, finished or not.
    func list() throws -> [String]
    /// Whether `name` is an unfinished object a killed writer may have left (never one a manifest names).
    func isTemporary(_ name: String) -> Bool

    /// Opens a finished object for reading at any offset. A missing object throws an error for which
    /// `isMissing` holds.
    func open(_ name: String) throws -> StoredObject
    /// The whole of a small object (the manifest), refused beyond `limit` bytes.
    func readSmall(_ name: String, limit: Int) throws -> [UInt8]
    /// Starts a new object; nobody sees it under `name` until `publish`. `expectedSize`: the most it may grow to,
    /// where known (0: small or unknown), for stores that cut objects into parts.
    func create(_ name: String, expectedSize: UInt64) throws -> NewObject
    /// Makes every object published since the last call durable as a set (a directory fsync). Called once
    /// before the manifest that names them is committed.
    func syncPublished() throws
    /// Replaces the manifest with `bytes` if it is still `expected` (nil: there is none yet), atomically and
    /// durably; otherwise throws `ChainError.chainChanged`.
    func commitManifest(_ bytes: [UInt8], expected: [UInt8]?) throws
    /// Removes an object. Readers that opened it read it to the end.
    func remove(_ name: String) throws

    /// Takes the writer's lock; nil when another writer holds it. Released when the lease is released.
    func lockWriter() throws -> WriterLease?
    /// Bytes that can still be written, where the store knows.
    func freeSpace() -> UInt64?
    /// Whether its new objects can copy bytes of its objects inside the store (`NewObject.copyInStore`).
    var copiesInStore: Bool { get }
    /// The bytes this store has brought over the network so far (every answer's body), where it has one; nil for
    /// a directory.
    var bytesDownloaded: UInt64? { get }
    /// An I/O queue that reads `StoredObject.handle`s asynchronously (io_uring or a thread pool over local
    /// files), with a one-line note when `auto` fell back.
    func readQueue(engine: IOEngineChoice, depth: Int) throws -> (queue: IOQueue, note: String?)
}

extension ChainStore {
    public var bytesDownloaded: UInt64? { nil }

    func create(_ name: String) throws -> NewObject { try create(name, expectedSize: 0) }

    /// Writes a small object whole and publishes it under `name`, replacing one there (a key file, the damage
    /// record), durably; on failure nothing of it stays.
    func publishWhole(_ name: String, _ bytes: [UInt8]) throws {
        let object = try create(name)
        do {
            try bytes.withUnsafeBytes { try object.write($0.baseAddress!, count: $0.count, at: 0) }
            try object.publish()
            try syncPublished()
        } catch {
            object.abandon()
            throw error
        }
    }
}

/// A published object opened for reading.
public protocol StoredObject: AnyObject {
    var name: String { get }
    var size: UInt64 { get }
    /// What `IORequest.fd` carries to read this object through its store's `readQueue`.
    var handle: Int32 { get }
    /// Reads `count` bytes from `offset`, fewer only at the object's end; returns how many.
    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int
    /// Where the store can read the object past any cache: what `IORequest.fd` carries for reads aligned to
    /// `StoredObjects.directAlignment` (offset, length and buffer). Nil where it cannot.
    var directHandle: Int32? { get }
}

extension StoredObject {
    public var directHandle: Int32? { nil }
}

public enum StoredObjects {
    /// The alignment of reads through `directHandle`: the largest logical block size O_DIRECT asks for.
    public static let directAlignment = 4096
}

/// An object being written: appended in order (large aligned writes, several in flight), written at reserved
/// offsets, read back, then published or abandoned.
public protocol NewObject: AnyObject {
    var name: String { get }
    /// The sequential writer of the object's bytes from `start` (`.uring` fails where io_uring cannot be used).
    func appender(start: UInt64, engine: IOEngineChoice) throws -> ObjectAppender
    /// Writes `count` bytes at `offset` (headers, an index, frames placed by merge); safe from several threads
    /// at distinct offsets.
    func write(_ bytes: UnsafeRawPointer, count: Int, at offset: UInt64) throws
    /// Reads back what was written (a header checked before publishing).
    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int
    /// Makes the bytes durable and the object visible under its name.
    func publish() throws
    /// Discards the object; nothing of it stays visible.
    func abandon()
    // Copying inside the store (defaults below: none).
    var smallestCopy: Int? { get }
    func bytesBeforeCopy(at offset: UInt64) -> UInt64
    func copyInStore(from source: StoredObject, at sourceOffset: UInt64, count: Int, to offset: UInt64) throws -> Bool
}

/// Copying inside the store: where a store can copy bytes of one of its objects into a new one itself (S3's
/// UploadPartCopy), merge's whole frames never pass through this process.
extension NewObject {
    /// The fewest bytes `copyInStore` takes; nil where the store copies nothing itself.
    var smallestCopy: Int? { nil }
    /// The bytes to write at `offset` before a copy can start there (0: it can start now).
    func bytesBeforeCopy(at offset: UInt64) -> UInt64 { 0 }
    /// Fills `count` bytes at `offset` with `source`'s bytes from `sourceOffset` inside the store and returns
    /// true; false where it cannot (another store, too few bytes, a place that does not suit its parts), and the
    /// caller writes them. Called with nothing yet written at or after `offset`.
    func copyInStore(from source: StoredObject, at sourceOffset: UInt64, count: Int, to offset: UInt64) throws -> Bool { false }
}

/// The sequential writer of a new object.
public protocol ObjectAppender: AnyObject {
    /// Where the next appended byte goes.
    var offset: UInt64 { get }
    func append(_ bytes: UnsafeRawPointer, count: Int) throws
    /// Leaves `count` bytes for `NewObject.write` where the stream is; appending goes on after them.
    func skip(_ count: UInt64) throws
    /// Waits for every write; afterwards the object holds every appended byte.
    func finish() throws
}

extension AppendWriter: ObjectAppender {}

/// The writer's hold on a chain; released when released or deinitialised.
public protocol WriterLease: AnyObject {}

/// Picks the store for a chain location: `s3://BUCKET/PREFIX` a bucket of an S3-compatible store, anything else a
/// local directory.
public enum ChainStores {
    public static func store(for location: String) throws -> ChainStore {
        S3Location.isS3(location) ? try S3ChainStore(location: location) : LocalDirectoryStore(path: location)
    }

    /// Whether writers may use a store that does not honour conditional writes (`--allow-unconditional-writes`:
    /// the user accepts that two writers at once could both commit). Set once, by the command line, before any
    /// chain is opened.
    nonisolated(unsafe) public static var allowUnconditionalWrites = false

    /// Whether a location is a local directory (the checks that compare paths and devices apply to it only).
    public static func isLocal(_ location: String) -> Bool { !S3Location.isS3(location) }
}

extension Error {
    /// Whether this error says an object does not exist.
    var isMissing: Bool { (self as? IOError)?.isMissing ?? false }
}
