// Everything that can stop a chain operation, as values a person can act on. The CLI renders each as one line
// (what failed, why, what to do) and maps it to a documented exit code: see `exitCode`, the EXIT STATUS of
// `strata --help` and docs/MANUAL.md.
import StrataFormat
import StrataIO

public enum ChainError: Error, Equatable, Sendable {
    case sourceUnavailable(path: String, reason: String)
    case notAChain(path: String)
    case chainInUse(path: String)
    case damaged(file: String, detail: String)
    case sourceMismatch(detail: String)
    case noSuchPoint(UInt32, available: [UInt32])
    case targetTooSmall(path: String, size: UInt64, needed: UInt64)
    case targetUnavailable(path: String, reason: String)
    case sourceMounted(path: String, mountPoint: String)
    case invalidOption(String)
    case corruptData(file: String, detail: String)
    case io(IOError)
    case engineUnavailable(String)
    case insufficientSpace(path: String, needed: UInt64, available: UInt64)
    case sourceReadError(path: String, offset: UInt64, reason: String)
    case tooManyBadBlocks(path: String, limit: Int, firstAt: UInt64)
    case verifyFailed(damaged: Int, affectedPoints: [UInt32])
    case targetMismatch(path: String, block: UInt64, count: UInt64)
    /// A restore target that is mounted, swap, held, or open exclusively: never overridden by --force.
    case targetInUse(path: String, use: DeviceUse)
    /// A restore target or capture source that is the chain: one of its files, inside its directory, or a loop
    /// device over one of them.
    case partOfChain(role: Role, path: String, chain: String, detail: String)
    /// A capture source that holds the filesystem the chain is on.
    case sourceHoldsChain(path: String, device: String, chain: String, mountPoint: String)
    /// An existing, non-empty regular file as a restore target, without --force.
    case targetExists(path: String)
    /// No point of the chain can be restored: repair cannot keep any.
    case nothingRestorable(path: String)
    /// The manifest changed between this writer's reading it and its commit (another writer got in).
    case chainChanged(String)
    /// A directory `mount` cannot use (missing, not a directory, not empty, already a mount point).
    case mountPointUnusable(path: String, problem: String, todo: String)
    /// `mount --files` on a point holding no filesystem strata can mount read-only: what it found.
    case noFilesystem(point: UInt32, found: String)
    /// `unmount` of a directory where strata mounted nothing.
    case notMounted(path: String)
    /// `unmount` of a file system still in use.
    case mountBusy(path: String)
    /// Something the machine lacks (FUSE, loop devices): what, and what to do.
    case machineLacks(String)
    /// A file strata was asked to write beside its work (--metrics-file) cannot be written.
    case outputUnwritable(path: String, reason: String)
    /// --freeze cannot freeze that filesystem (nothing was read).
    case cannotFreeze(mountPoint: String, reason: String, todo: String)
    /// --snapshot cannot snapshot that source (nothing was read).
    case cannotSnapshot(path: String, reason: String, todo: String)

    /// An encrypted chain and no secret given.
    case keyNeeded(path: String)
    /// The secret given does not open the chain's key (wrong, or another chain's), or is of the other kind.
    case wrongKey(path: String, detail: String)
    /// A key file that cannot be used (missing, wrong size, or `keygen` would overwrite one).
    case keyFileUnusable(path: String, reason: String)
    /// An object store that cannot be reached, or keeps failing (after retries).
    case storeUnreachable(location: String, reason: String)
    /// An object store that refuses: credentials, permissions, a bucket that does not exist, no configuration.
    case storeRefused(location: String, reason: String, todo: String)
    /// `sync` into a place that is not an earlier copy of the source.
    case syncRefused(target: String, detail: String)
    /// An NBD source that cannot be connected to or read as the protocol says: what went wrong.
    case nbdUnusable(uri: String, reason: String)
    /// `--require-change-source`, and nothing could say what changed: why.
    case noChangeSource(String)
    /// `--partition N` of a point whose partition table has no partition N (or none at all): why.
    case noSuchPartition(point: UInt32, number: Int, detail: String)
    /// A point's partition table entry that cannot be right (past the end of the disk, overlapping another).
    case damagedPartitionTable(point: UInt32, detail: String)
    public enum Role: String, Sendable { case source, target }
}

extension ChainError: CustomStringConvertible {
    /// One line: what failed, why, and what to do about it.
    public var description: String {
        switch self {
        case .sourceUnavailable(let p, let r): return "cannot read source \(p): \(r); check the path and your permissions"
        case .notAChain(let p): return "\(p) is not a Strata chain (no \(ChainManifest.fileName)); name the directory of an existing chain"
        case .chainInUse(let p): return "chain \(p) is being changed by another strata process (a capture, merge or prune); wait for it to finish and try again"
        case .damaged(let f, let d): return "chain is damaged: \(f): \(d); the chain was not changed, restore from another copy of it"
        case .sourceMismatch(let d): return "source does not match the chain: \(d); use a new chain directory for a different disk"
        case .noSuchPoint(let p, let a):
            return "point \(p) does not exist in this chain; available points: \(a.map(String.init).joined(separator: ", "))"
        case .targetTooSmall(let p, let s, let n):
            return "target \(p) is too small: \(s) bytes, the image needs \(n); use a target at least that large"
        case .targetUnavailable(let p, let r): return "cannot write target \(p): \(r); check the path and your permissions"
        case .sourceMounted(let p, let m):
            return "source \(p) is mounted read-write at \(m): the image may be inconsistent; capture a snapshot, or pass --allow-mounted"
        case .invalidOption(let d): return d
        case .corruptData(let f, let d): return "corrupt data in \(f): \(d); the target is incomplete, restore from another copy of the chain"
        case .io(let e) where e.isNoSpace:
            return "\(e.operation) \(e.path) failed: \(e.reason); free space where it is written and run again (the chain was not changed)"
        case .io(let e): return "\(e.operation) \(e.path) failed: \(e.reason)"
        case .engineUnavailable(let d): return "\(d); use --io-engine pread or auto"
        case .insufficientSpace(let p, let n, let a):
            return "not enough free space in \(p): the merge needs up to \(n) bytes, \(a) are free; free some space or merge a shorter range"
        case .sourceReadError(let p, let o, let r):
            return "read error on source \(p) at byte \(o): \(r); the disk may be failing: pass --max-bad-blocks N to image past unreadable blocks (the chain was not changed)"
        case .tooManyBadBlocks(let p, let l, let f):
            return "source \(p) has more than \(l) unreadable blocks (the first at byte \(f)); the chain was not changed: raise --max-bad-blocks, or rescue the disk with ddrescue first"
        case .verifyFailed(let n, let points):
            let which = points.isEmpty ? "no point is affected" : "points affected: \(points.map(String.init).joined(separator: ", "))"
            return "verify found \(n) damaged item\(n == 1 ? "" : "s") (listed above); \(which); restore unaffected points, or use another copy of the chain"
        case .targetMismatch(let p, let b, let n):
            return "target \(p) does not read back as written: \(n) block\(n == 1 ? "" : "s") differ, the first is block \(b); the target device may be failing"
        case .targetInUse(let p, let use):
            let what: String
            switch use {
            case .mounted, .backing(_, .mounted): what = "unmount it first (--force does not override this)"
            case .swap(let d), .backing(_, .swap(let d)): what = "run swapoff \(d) first"
            default: what = "stop what holds it first"
            }
            return "target \(p) is in use: \(use.explanation(for: p)); nothing was written: \(what)"
        case .partOfChain(let role, let p, let c, let d):
            let harm = role == .target ? "restoring onto it would destroy the chain" : "capturing it would image the chain into itself"
            return "\(role.rawValue) \(p) is part of the chain \(c) (\(d)): \(harm); nothing was changed: choose a \(role.rawValue) outside the chain"
        case .sourceHoldsChain(let p, let d, let c, let m):
            let which = d == p ? "" : " (on its partition \(d))"
            return "source \(p) holds the chain \(c)\(which), mounted at \(m): the capture would image its own writes; nothing was changed: keep the chain on another disk"
        case .targetExists(let p):
            return "target \(p) exists and is not empty; nothing was written: pass --force to replace it"
        case .nothingRestorable(let p):
            return "no point of chain \(p) can be restored, so repair cannot keep any; nothing was changed: restore from another copy of the chain"
        case .chainChanged(let p):
            return "chain \(p) was changed by another writer while this one worked; nothing was committed: run again"
        case .mountPointUnusable(let p, let problem, let todo):
            return "cannot mount at \(p): \(problem); nothing was mounted: \(todo)"
        case .noFilesystem(let point, let found):
            return "point \(point) holds no filesystem strata can mount read-only (found \(found)); nothing was mounted: mount without --files and read point-\(point).img"
        case .notMounted(let p):
            return "\(p) is not a strata mount; nothing was changed: name the directory given to strata mount"
        case .mountBusy(let p):
            return "\(p) is in use (a process has a file open or its working directory there); nothing was unmounted: close what uses it and run strata unmount again"
        case .machineLacks(let d): return d
        case .cannotFreeze(let m, let r, let t):
            return "cannot freeze the filesystem at \(m): \(r); nothing was read: \(t)"
        case .cannotSnapshot(let p, let r, let t):
            return "cannot snapshot \(p): \(r); nothing was read: \(t)"
        case .outputUnwritable(let p, let r):
            return "cannot write \(p): \(r); nothing was done: name a file in a writable directory"
        case .keyNeeded(let p):
            return "chain \(p) is encrypted: give its key with --key-file FILE, or its passphrase in STRATA_PASSPHRASE; nothing was done"
        case .wrongKey(let p, let d):
            return "the key does not open chain \(p): \(d); nothing was done: give the key file or passphrase this chain was made with"
        case .keyFileUnusable(let p, let r): return "key file \(p): \(r)"
        case .storeUnreachable(let l, let r):
            return "cannot reach the store of \(l): \(r); the chain was not changed: check the endpoint (AWS_ENDPOINT_URL) and the network, and try again"
        case .storeRefused(let l, let r, let t): return "the store of \(l) refused: \(r); nothing was done: \(t)"
        case .nbdUnusable(let u, let r):
            return "cannot read NBD export \(u): \(r); the chain was not changed: check that the server runs and exports it to this host"
        case .noChangeSource(let why):
            return "cannot read only what changed: \(why); with --require-change-source nothing was written: capture without it to scan the whole source"
        case .noSuchPartition(let point, let n, let d):
            return "point \(point) has no partition \(n) to restore: \(d); nothing was written: see strata list CHAIN --partitions"
        case .damagedPartitionTable(let point, let d):
            return "the partition table of point \(point) is damaged: \(d); nothing was written: restore the whole point and repair the table"
        case .syncRefused(let t, let d):
            return "will not sync into \(t): \(d); nothing was changed: sync into an empty place, or remove what is there first"
        }
    }

    /// Process exit codes, following sysexits(3) where one fits.
    public var exitCode: Int32 {
        switch self {
        case .invalidOption, .noSuchPoint, .notMounted, .noSuchPartition: return 64  // EX_USAGE
        case .damaged, .corruptData, .notAChain, .sourceMismatch, .verifyFailed, .nothingRestorable, .noFilesystem, .damagedPartitionTable: return 65  // EX_DATAERR
        case .sourceUnavailable, .nbdUnusable: return 66  // EX_NOINPUT
        case .targetTooSmall, .targetUnavailable, .insufficientSpace, .mountPointUnusable, .outputUnwritable: return 73  // EX_CANTCREAT
        case .io, .sourceReadError, .tooManyBadBlocks, .targetMismatch: return 74  // EX_IOERR
        case .chainInUse, .chainChanged, .mountBusy: return 75  // EX_TEMPFAIL
        case .sourceMounted, .targetInUse, .partOfChain, .sourceHoldsChain, .targetExists, .syncRefused: return 77  // refused for safety
        case .engineUnavailable, .machineLacks, .cannotFreeze, .cannotSnapshot, .noChangeSource: return 69  // EX_UNAVAILABLE
        case .keyNeeded, .wrongKey, .keyFileUnusable: return 67  // EX_NOUSER: "no such key"; not damage
        case .storeUnreachable: return 69  // EX_UNAVAILABLE
        case .storeRefused: return 77  // EX_NOPERM
        }
    }
}

extension ChainError {
    /// What went wrong, for a report that names the file itself: for damage, the file and what is wrong with it;
    /// otherwise no file and the whole message.
    static func damage(of error: Error) -> (file: String?, detail: String) {
        switch lifting(error) {
        case ChainError.damaged(let f, let d), ChainError.corruptData(let f, let d): return (f, d)
        case let e as ChainError: return (nil, e.description)
        default: return (nil, "\(error)")
        }
    }

    /// The detail of `damaged` for an object that does not exist.
    static let missingDetail = "the file is missing"
}

extension ChainError {
    /// A store's failure as a person reads it: a missing object is damage to the chain (its manifest names it),
    /// the rest are the store's (refused, unreachable) or another writer's (changed).
    public init(_ e: StoreError) {
        switch e.kind {
        case .missing: self = .damaged(file: e.object, detail: ChainError.missingDetail)
        case .tooLarge: self = e.operation == "read" ? .damaged(file: e.object, detail: e.reason) : .storeRefused(location: e.object, reason: e.reason, todo: "keep the source below that size")
        case .refused(let todo): self = .storeRefused(location: e.object, reason: e.reason, todo: todo)
        case .unreachable: self = .storeUnreachable(location: e.object, reason: e.reason)
        case .changed: self = .chainChanged(e.object)
        }
    }

    /// Any error of the layers below as a chain error where it is one (a store's), else as it is.
    public static func lifting(_ error: Error) -> Error { (error as? StoreError).map { ChainError($0) } ?? error }
}

/// Wraps lower layers' errors, naming the file they concern.
func damaged(_ file: String, _ error: Error) -> ChainError {
    if let c = error as? ChainError { return c }
    if let e = error as? StoreError { return e.kind == .missing ? .damaged(file: file, detail: ChainError.missingDetail) : ChainError(e) }
    if let f = error as? FormatError { return .damaged(file: file, detail: f.description) }
    if let e = error as? IOError {
        if e.isMissing { return .damaged(file: file, detail: ChainError.missingDetail) }
        return .io(e)
    }
    return .damaged(file: file, detail: "\(error)")
}
