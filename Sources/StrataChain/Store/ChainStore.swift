// The chain store seam: everything a chain needs from the place it lives, and nothing about what a chain is.
// A chain is a set of named objects (images, hash maps, the manifest); the store lists them, reads byte ranges
// of them, writes new ones (sequentially, and at reserved offsets where merge places copied frames) and
// publishes a new object atomically under its name, replaces the manifest only if it is still the one this
// run read (compare-and-swap), keeps a second writer out, and deletes. Chain logic (Chain/, Capture/, Restore/,
// Merge/, Verify/) goes through this protocol and nothing else, so a store in an object storage bucket can
// stand beside the local directory (LocalDirectoryStore.swift) and pass the same conformance tests
// (Tests/StrataChainTests/ChainStoreTests.swift).
//
// The seam speaks in store terms: objects are opaque (a store's reads take its own objects and schedule
// themselves: the local directory on io_uring, a bucket on its HTTP client), and failures are `StoreError`s
// (missing, too large, refused, unreachable, changed), so a store that is not a file never invents a descriptor
// or an errno. A local directory's other failures (a full disk, a failing medium) are the system's and come
// up as StrataIO's IOError, which callers read by kind, never by errno.
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

    /// Opens a finished object for reading at any offset. A missing object throws `StoreError` `.missing`.
    func open(_ name: String) throws -> StoredObject
    /// The whole of a small object (the manifest); `.missing` where there is none, `.tooLarge` beyond `limit` bytes.
    func readSmall(_ name: String, limit: Int) throws -> [UInt8]
    /// Starts a new object; nobody sees it under `name` until `publish`. `expectedSize`: the most it may grow to,
    /// where known (0: small or unknown), for stores that cut objects into parts.
    func create(_ name: String, expectedSize: UInt64) throws -> NewObject
    /// Makes every object published since the last call durable as a set (a directory fsync). Called once
    /// before the manifest that names them is committed.
    func syncPublished() throws
    /// Replaces the manifest with `bytes` if it is still `expected` (nil: there is none yet), atomically and
    /// durably; otherwise throws `StoreError` `.changed`.
    func commitManifest(_ bytes: [UInt8], expected: [UInt8]?) throws
    /// Removes an object (`.missing` where there is none). Readers that opened it read it to the end.
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
    /// Reads of this store's objects kept in flight together, `depth` at most at once, under tags
    /// `0..<tags` (io_uring or a pool of pread threads for a directory, as `engine` says; ranged GETs for a
    /// bucket), with a one-line note when `auto` fell back.
    func reads(engine: IOEngineChoice, depth: Int, tags: Int) throws -> (reads: ObjectReads, note: String?)
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

/// A published object opened for reading: opaque to everyone but its store.
public protocol StoredObject: AnyObject {
    var name: String { get }
    var size: UInt64 { get }
    /// Reads `count` bytes from `offset`, fewer only at the object's end; returns how many.
    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int
}

public enum StoredObjects {
    /// The alignment of direct reads (`ObjectReads.start(direct: true)`): the largest logical block size
    /// O_DIRECT asks for.
    public static let directAlignment = 4096
}

/// Reads of one store's objects, many in flight, completed in any order: the store schedules them itself.
/// Used from one thread (a pipeline's I/O thread); each tag has at most one read in flight.
public protocol ObjectReads: AnyObject {
    /// "io_uring", "pread" or "s3", for messages and --json.
    var engineName: String { get }
    /// Reads started and not yet returned by `next`.
    var inFlight: Int { get }
    /// Starts reading `count` bytes of `object` (one of this store's) at `offset` into `buffer`, under `tag`.
    /// With `direct` (the buffer aligned to `StoredObjects.directAlignment`, with `2 * directAlignment` bytes
    /// of room beyond `count`) the read goes past the cache where the store can: it then covers the aligned
    /// pages around the range and returns how many bytes into `buffer` the range starts; nil where the read
    /// was not direct.
    @discardableResult
    func start(_ object: StoredObject, into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64, tag: Int, direct: Bool) -> Int?
    /// Waits for the next finished read: its tag, the bytes it delivered (fewer than asked only at the object's
    /// end), or the error it failed with (a `StoreError`, or for a directory the system's `IOError`).
    func next() -> (tag: Int, bytes: Int, error: Error?)
}

extension ObjectReads {
    /// `next`, throwing a failed read's error.
    func nextOrThrow() throws -> (tag: Int, bytes: Int) {
        let done = next()
        if let error = done.error { throw error }
        return (done.tag, done.bytes)
    }

    /// Waits for every read in flight, dropping what they bring (after a failure, before the buffers go).
    func drain() { while inFlight > 0 { _ = next() } }
}

/// A store's failure in its own terms.
public struct StoreError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        /// No object of that name (never written, or removed).
        case missing
        /// Larger than the caller takes, or than the store can hold in one object.
        case tooLarge
        /// The store said no: credentials, permissions, a feature it lacks. `todo` says what to do.
        case refused(todo: String)
        /// The store cannot be reached, or answered with a failure of its own.
        case unreachable
        /// The object changed since this run read it (another writer's manifest).
        case changed
    }

    public var kind: Kind
    /// What was being done, and to which object (its location and name).
    public var operation: String
    public var object: String
    public var reason: String

    public init(_ kind: Kind, _ operation: String, _ object: String, reason: String = "") {
        (self.kind, self.operation, self.object, self.reason) = (kind, operation, object, reason)
    }

    static func missing(_ operation: String, _ object: String) -> StoreError { StoreError(.missing, operation, object, reason: "no such object") }

    public var description: String { "\(operation) \(object): \(reason)" }
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

/// What a writer accepts about its chain's store: a value the commands that change a chain pass in.
public struct StoreOptions: Sendable, Equatable {
    /// Whether a writer may use a store that does not honour conditional writes (`--allow-unconditional-writes`:
    /// the user accepts that two writers at once could both commit).
    public var allowUnconditionalWrites = false
    public init(allowUnconditionalWrites: Bool = false) { self.allowUnconditionalWrites = allowUnconditionalWrites }
}

/// Picks the store for a chain location: `s3://BUCKET/PREFIX` a bucket of an S3-compatible store, anything else a
/// local directory.
public enum ChainStores {
    public static func store(for location: String, options: StoreOptions = StoreOptions()) throws -> ChainStore {
        S3Location.isS3(location) ? try S3ChainStore(location: location, options: options) : LocalDirectoryStore(path: location)
    }

    /// Whether a location is a local directory (the checks that compare paths and devices apply to it only).
    public static func isLocal(_ location: String) -> Bool { !S3Location.isS3(location) }
}

extension Error {
    /// Whether this error says an object does not exist.
    var isMissing: Bool { (self as? StoreError)?.kind == .missing }
}
