// A chain in a local directory: the first ChainStore, with the guarantees and the speed Strata had before the
// seam existed. A new object is a temporary file (`.strata-tmp-PID-NAME`, mode 0600) written with O_DIRECT
// appends through io_uring; publishing fsyncs it and renames it into place, and `syncPublished` fsyncs the
// directory once for all of them; the manifest is replaced the same way (temporary file, fsync, rename,
// directory fsync). The writer's lock is a `flock` on `.lock`. Reads many at once go through StrataIO's I/O
// engine (io_uring, or a pool of pread threads) on the objects' descriptors, which stay inside this file. A file
// that does not exist is StoreError `.missing`; the directory's other failures are the system's IOError. Every
// syscall is StrataIO's.
import StrataFormat
import StrataIO


public final class LocalDirectoryStore: ChainStore {
    public let path: String
    public var location: String { path }

    public init(path: String) { self.path = path }

    public func containerExists() -> Bool {
        guard let st = try? Sys.stat(path) else { return false }
        return st.kind == .directory
    }

    public func makeContainer() throws { try DurableFiles.makeDirectory(path) }

    public func list() throws -> [String] { try Sys.listDirectory(path).filter { $0 != ".lock" } }

    public func isTemporary(_ name: String) -> Bool { name.hasPrefix(DurableFiles.temporaryPrefix) }

    public func open(_ name: String) throws -> StoredObject {
        try storeTerms("open", name) { try LocalObject(path: "\(path)/\(name)", name: name) }
    }

    public func readSmall(_ name: String, limit: Int) throws -> [UInt8] {
        try storeTerms("read", name) { try DurableFiles.readAll("\(path)/\(name)", limit: limit) }
    }

    /// Runs `body`, its missing file and too large one as the store's errors.
    private func storeTerms<T>(_ operation: String, _ name: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as IOError where e.kind == .missing {
            throw StoreError.missing(operation, "\(path)/\(name)")
        } catch let e as IOError where e.kind == .tooLarge {
            throw StoreError(.tooLarge, operation, "\(path)/\(name)", reason: e.reason)
        }
    }

    public func create(_ name: String, expectedSize: UInt64) throws -> NewObject { try LocalNewObject(directory: path, name: name) }

    public func syncPublished() throws { try DurableFiles.fsyncDirectory(path) }

    public func commitManifest(_ bytes: [UInt8], expected: [UInt8]?) throws {
        // Writers hold the lock, so the check and the rename cannot interleave with another writer's.
        let current = try? readSmall(ChainManifest.fileName, limit: 64 << 20)
        guard current == expected else {
            throw StoreError(.changed, "commit", path, reason: "another writer committed first")
        }
        try DurableFiles.publish(bytes, dir: path, name: ChainManifest.fileName)
    }

    public func remove(_ name: String) throws { try storeTerms("remove", name) { try Sys.unlink("\(path)/\(name)") } }

    public func lockWriter() throws -> WriterLease? { try DirectoryLock(directory: path) }

    public func freeSpace() -> UInt64? { try? Sys.freeSpace(path) }

    public var copiesInStore: Bool { false }

    public func reads(engine: IOEngineChoice, depth: Int, tags: Int) throws -> (reads: ObjectReads, note: String?) {
        let (queue, note) = try IOEngine.make(engine, depth: depth)
        return (LocalObjectReads(queue: queue, tags: tags), note)
    }
}

/// A directory's reads: its files' descriptors on the I/O engine, through the one pump that finishes short reads.
final class LocalObjectReads: ObjectReads {
    private let pump: IOPump

    init(queue: IOQueue, tags: Int) { pump = IOPump(queue: queue, maxTags: tags) }

    var engineName: String { pump.queue.engineName }
    var inFlight: Int { pump.inFlight }

    func start(_ object: StoredObject, into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64, tag: Int, direct: Bool) -> Int? {
        guard let object = object as? LocalObject else { preconditionFailure("a directory's reads take its own objects") }
        if direct, let fd = object.directHandle {
            let a = UInt64(StoredObjects.directAlignment)
            let start = offset / a * a
            let lead = Int(offset - start)
            let span = (lead + count + Int(a) - 1) / Int(a) * Int(a)
            pump.read(fd: fd, path: object.path, into: buffer, length: span, at: start, tag: tag)
            return lead
        }
        pump.read(fd: object.handle, path: object.path, into: buffer, length: count, at: offset, tag: tag)
        return nil
    }

    func next() -> (tag: Int, bytes: Int, error: Error?) {
        let done = pump.nextOutcome()
        return (done.tag, done.bytes, done.error)
    }
}

extension DirectoryLock: WriterLease {}

/// A local file opened for reading, with its descriptor (this file's alone).
final class LocalObject: StoredObject {
    let name: String
    let path: String
    let size: UInt64
    let handle: Int32
    /// O_DIRECT, opened at the first use (only restores read this way, and a served chain of hundreds of images
    /// should not hold two descriptors each): a restore reads each image once, so the page cache would only cost
    /// a copy and the reclaim of what it holds, and make a restore's speed depend on how full the cache is.
    private var direct: Int32??
    private let directLock = Condition()

    init(path: String, name: String) throws {
        self.name = name
        self.path = path
        handle = try Sys.open(path, .readOnly).release()  // closed in deinit
        do { size = try Sys.fstat(handle, path: path).size } catch {
            Sys.close(handle)
            throw error
        }
    }

    var directHandle: Int32? {
        directLock.withLock {
            if let opened = direct { return opened }
            // Through the open descriptor, not the name: the same file even after a merge removed or replaced it.
            let fd = Sys.openDirectForReading("/proc/self/fd/\(handle)")
            direct = .some(fd)
            return fd
        }
    }

    deinit {
        Sys.close(handle)
        if let fd = direct ?? nil { Sys.close(fd) }
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        try Sys.preadFully(handle, buffer, count, offset, path: path)
    }
}

/// A new local file under its temporary name until published.
final class LocalNewObject: NewObject {
    let name: String
    let directory: String
    let temporaryPath: String
    private let fd: Int32
    private var closed = false

    init(directory: String, name: String) throws {
        self.name = name
        self.directory = directory
        temporaryPath = "\(directory)/\(DurableFiles.temporaryName(for: name))"
        fd = try Sys.create(temporaryPath, [.readWrite, .truncate]).release()  // closed in deinit
    }

    deinit { if !closed { Sys.close(fd) } }

    func appender(start: UInt64, engine: IOEngineChoice) throws -> ObjectAppender {
        try AppendWriter(path: temporaryPath, fd: fd, start: start, engine: engine)
    }

    func write(_ bytes: UnsafeRawPointer, count: Int, at offset: UInt64) throws {
        try Sys.pwriteAll(fd, bytes, count, offset, path: temporaryPath)
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        try Sys.preadFully(fd, buffer, count, offset, path: temporaryPath)
    }

    func publish() throws {
        try Sys.fsync(fd, path: temporaryPath)
        try Sys.rename(temporaryPath, "\(directory)/\(name)")
    }

    func abandon() { try? Sys.unlink(temporaryPath) }
}
