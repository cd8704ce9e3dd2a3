// `strata repair`: puts a chain back in order, saying each change before making it. Always: removes what
// interrupted runs left behind, and rebuilds a missing or damaged head hash map from the newest point's images.
// With `dropDamaged`: removes the points that cannot be restored (a full verify says which), merging each run of
// them into the whole point that follows it (that point restores exactly as before: the merge takes only its
// blocks, none of them damaged), and dropping those after the last whole point (its hash map is built anew and
// it becomes the newest; the next capture takes the number after it). Every change is a merge or a manifest switch: crash-safe like them. `dryRun` says the
// same things and changes nothing.
import StrataFormat
import StrataIO

public struct RepairOptions: Sendable {
    public var dryRun = false
    /// What the writer accepts of the chain's store.
    public var store = StoreOptions()
    public var dropDamaged = false
    /// An encrypted chain's secret.
    public var secret: UserSecret? = nil
    public var threads: Int = Sys.onlineCores

    public init() {}
}

public struct RepairReport: Sendable, Equatable {
    /// Each change, in the order made (or, in a dry run, that would be made).
    public var actions: [String] = []
    /// Points removed because they could not be restored.
    public var removedPoints: [UInt32] = []
    /// The chain's points afterwards (in a dry run: as they would be).
    public var points: [UInt32] = []
}

public enum Repair {
    /// `announce` receives each change before it is made.
    public static func run(chain location: String, options: RepairOptions, announce: (String) -> Void = { _ in }) throws -> RepairReport {
        let chain = try Chain(location: location, access: .write, cleanUp: false, secret: options.secret, store: options.store)
        _ = try chain.dataKeys()
        guard var manifest = chain.manifest else { throw ChainError.notAChain(path: location) }
        var report = RepairReport()
        func act(_ what: String, _ body: () throws -> Void) rethrows {
            report.actions.append(what)
            announce(what)
            if !options.dryRun { try body() }
        }
        for name in chain.leftovers() {
            act("remove \(name): left by an interrupted run") { try? chain.store.remove(name) }
        }
        var points = manifest.points
        if options.dropDamaged {
            var verify = VerifyOptions()
            verify.secret = options.secret
            verify.threads = options.threads
            verify.recordDamage = !options.dryRun
            let found = try Verify.run(chain: location, options: verify)
            let affected = Set(found.affectedPoints)
            guard !found.wholePoints.isEmpty else { throw ChainError.nothingRestorable(path: location) }
            // Runs of points that cannot be restored, each followed by a whole point, fold into that point.
            var run: [UInt32] = []
            for p in manifest.points {
                if affected.contains(p) {
                    run.append(p)
                    continue
                }
                if let first = run.first {
                    let dropped = run.map(String.init).joined(separator: ", ")
                    try act("merge points \(first)-\(p) into one image: point\(run.count == 1 ? "" : "s") \(dropped) cannot be restored and go\(run.count == 1 ? "es" : ""); \(p) restores as before") {
                        var o = MergeOptions(to: p)
                        o.from = first
                        o.threads = options.threads
                        _ = try Merge.merge(chain, options: o)
                    }
                    report.removedPoints += run
                    run = []
                }
            }
            if !run.isEmpty {
                let kept = found.wholePoints.last!
                let dropped = run.map(String.init).joined(separator: ", ")
                try act("remove point\(run.count == 1 ? "" : "s") \(dropped): \(run.count == 1 ? "it cannot" : "they cannot") be restored; point \(kept) becomes the newest") {
                    try dropTail(chain, keeping: kept)
                }
                report.removedPoints += run
            }
            points.removeAll { report.removedPoints.contains($0) }
            if !options.dryRun { manifest = chain.manifest! }
        }
        if !(options.dropDamaged && options.dryRun), let problem = HeadMap.problem(chain.store, manifest, keys: chain.keys) {
            try act("rebuild \(manifest.hashMapFile) (\(problem)) from the newest point's images") {
                let next = try HeadMap.rebuild(chain.store, manifest, chain.openPoint(manifest.images.last!.lastPoint), keys: chain.keys)
                if next != manifest { try chain.commit(next) }
            }
        }
        report.points = points
        return report
    }

    /// Drops the points after `kept`: its hash map is built anew from its images and published, then the manifest
    /// ends at it (the dropped images and the old map become leftovers, removed after the commit).
    private static func dropTail(_ chain: Chain, keeping kept: UInt32) throws {
        guard var next = chain.manifest, let end = next.images.firstIndex(where: { $0.lastPoint == kept }) else {
            throw ChainError.notAChain(path: chain.location)
        }
        next.images.removeSubrange((end + 1)...)
        next.hashMapFile = Chain.hashMapName(point: kept)
        next.hashMapPoint = nil
        next.nextPoint = kept + 1  // points follow on without a gap (the manifest's rule): the next capture is kept + 1
        try HeadMap.rebuild(chain.store, next, chain.openPoint(kept), keys: chain.keys)
        try chain.commit(next)
    }
}
