// `strata prune`: keep the points a retention policy names (Retention.swift) and fold every other one away.
// Each run of removed points is merged into the kept point after it (the newest point is always kept, so there
// is one), or into a synthetic full when the run starts at the chain's first point: kept points restore exactly
// as before, and the only bytes written are those of the merged images. All the merged images are written and
// published first and the manifest then switches to them in one replacement, so an interrupted prune leaves
// the chain as it was or as it is after (as a merge does), never half pruned.
import StrataFormat
import StrataIO

public struct PruneResult: Sendable, Equatable {
    /// Every point the chain had, oldest first, with what the rules decided.
    public var decisions: [RetentionDecision]
    /// The merges made (planned only, with a dry run), oldest first.
    public var merges: [PruneMerge]
    /// The chain's points after the prune.
    public var points: [UInt32]
    public var bytesBefore: UInt64
    public var bytesWritten: UInt64
    public var seconds: Double
    public var dryRun: Bool

    /// The chain's image bytes after the prune: what it had, less the images merged away, plus the merged ones.
    public var bytesAfter: UInt64 { bytesBefore - merges.reduce(0) { $0 + ($1.result?.bytesBefore ?? 0) } + bytesWritten }
}

/// One run of removed points folded into the kept point after it.
public struct PruneMerge: Sendable, Equatable {
    public var removed: [UInt32]
    public var into: UInt32
    /// The merge itself; nil in a dry run.
    public var result: MergeResult?
}

extension Merge {
    /// Prunes the chain to the points `rules` keep. With `dryRun`, decides and returns without changing anything.
    public static func prune(
        chain chainPath: String, rules: RetentionRules, options: MergeOptions? = nil, dryRun: Bool = false,
        period: (UInt64, String) -> String = LocalCalendar.format, progress: ProgressHandler? = nil
    ) throws -> PruneResult {
        let started = Sys.monotonicNanos()
        let o = options ?? MergeOptions(to: 0)
        try o.check()
        if dryRun {
            let chain = try Chain(location: chainPath, access: .read)
            guard let manifest = chain.manifest else { throw ChainError.notAChain(path: chainPath) }
            let (decisions, runs) = try plan(manifest, rules: rules, period: period)
            return PruneResult(
                decisions: decisions, merges: runs.map { PruneMerge(removed: $0.removed, into: $0.into, result: nil) },
                points: decisions.filter { $0.keptBy != nil }.map(\.point), bytesBefore: manifest.images.reduce(0) { $0 + $1.bytesStored },
                bytesWritten: 0, seconds: Double(Sys.monotonicNanos() - started) / 1e9, dryRun: true)
        }
        let chain = try Chain(location: chainPath, access: .write, secret: o.secret, store: o.store)
        guard let manifest = chain.manifest else { throw ChainError.notAChain(path: chainPath) }
        _ = try chain.dataKeys()  // merges read and write the index: an encrypted chain's key, before anything
        let (decisions, runs) = try plan(manifest, rules: rules, period: period)
        var merged: [MergedImage] = []
        do {
            for (k, run) in runs.enumerated() {
                let share: ProgressHandler? = progress.map { report in
                    { done, total in report(UInt64(k) * 1000 + done * 1000 / max(total, 1), UInt64(runs.count) * 1000) }
                }
                merged.append(
                    try write(
                        chain, manifest, from: run.removed[0] == manifest.points[0] ? nil : run.removed[0], to: run.into, options: o,
                        progress: share))
            }
        } catch {
            for m in merged { try? chain.store.remove(m.entry.file) }
            throw error
        }
        let points = merged.isEmpty ? manifest.points : try commit(chain, manifest, merged)
        var merges: [PruneMerge] = []
        for (run, m) in zip(runs, merged) {
            var r = m.result
            r.points = points
            merges.append(PruneMerge(removed: run.removed, into: run.into, result: r))
        }
        return PruneResult(
            decisions: decisions, merges: merges, points: points, bytesBefore: manifest.images.reduce(0) { $0 + $1.bytesStored },
            bytesWritten: merged.reduce(0) { $0 + $1.entry.bytesStored }, seconds: Double(Sys.monotonicNanos() - started) / 1e9,
            dryRun: false)
    }

    /// Keeps the newest `keep` points and folds everything older into the oldest kept one (a synthetic full):
    /// `--keep-last keep`. Returns the merge, or nil when the chain has no more than `keep` points.
    public static func prune(chain chainPath: String, keep: Int, options: MergeOptions? = nil, progress: ProgressHandler? = nil) throws -> MergeResult? {
        guard keep >= 1 else { throw ChainError.invalidOption("--keep must be at least 1") }
        return try prune(chain: chainPath, rules: RetentionRules(last: keep), options: options, progress: progress).merges.first?.result
    }

    /// The rules' decisions for the chain's points, and the runs of removed points with the kept point each
    /// folds into.
    static func plan(
        _ manifest: ChainManifest, rules: RetentionRules, period: (UInt64, String) -> String
    ) throws -> ([RetentionDecision], [(removed: [UInt32], into: UInt32)]) {
        let decisions = try Retention.decide(manifest.images.map { ($0.point, $0.createdAt) }, rules: rules, period: period)
        var runs: [(removed: [UInt32], into: UInt32)] = []
        var removed: [UInt32] = []
        for d in decisions {
            if d.keptBy == nil {
                removed.append(d.point)
            } else if !removed.isEmpty {
                runs.append((removed, d.point))
                removed = []
            }
        }
        precondition(removed.isEmpty, "the newest point is always kept")
        return (decisions, runs)
    }
}
