import ArgumentParser
import StrataChain

struct PruneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Keep the points retention rules name; fold the others away.",
        discussion: """
            The rules are Proxmox Backup Server's. They apply in the order last, hourly, daily, weekly, monthly, \
            yearly, over the points newest first: each keeps the newest point of each of its periods until it has \
            kept N periods. A period that holds a point an earlier rule kept is already covered and does not \
            count, so --keep-daily 7 --keep-weekly 4 keeps the last 7 days and then 4 weeks before them. Periods \
            are in local time (TZ applies); weeks are ISO weeks, Monday to Sunday. The newest point is always \
            kept. Points are ordered as they were captured, whatever their clocks say.

            Every kept point restores exactly as before. Each run of removed points is merged into the kept point \
            after it (into a synthetic full when the run starts at the chain's first point); frames whose blocks \
            survive are copied without recompression. All merged images are written first and the chain switches \
            to them at once: interrupted at any moment, it keeps either every old point or exactly the kept ones.

            --dry-run prints every point with "keep (RULE)" or "remove" and changes nothing. --json prints one \
            object: dryRun, points ([{point, created, keep, rule}], rule null when removed), merges ([{removed, \
            into, bytesStored}]), remaining, bytesBefore, bytesWritten, seconds.

            EXAMPLES
              strata prune /backup/sdb --keep-last 3 --keep-daily 7 --keep-weekly 4 \\
                --keep-monthly 12 --keep-yearly 2
              strata prune /backup/sdb --keep-daily 7 --keep-weekly 4 --dry-run
              strata prune /backup/sdb --keep 7          # the same as --keep-last 7
            """)

    @Argument(help: "Chain directory.") var chain: String
    @Option(name: [.customLong("keep"), .customLong("keep-last")], help: "Keep the newest N points.") var keepLast: Int = 0
    @Option(help: "Keep the newest point of each of the last N hours that have one.") var keepHourly: Int = 0
    @Option(help: "Keep the newest point of each of the last N days that have one.") var keepDaily: Int = 0
    @Option(help: "Keep the newest point of each of the last N ISO weeks that have one.") var keepWeekly: Int = 0
    @Option(help: "Keep the newest point of each of the last N months that have one.") var keepMonthly: Int = 0
    @Option(help: "Keep the newest point of each of the last N years that have one.") var keepYearly: Int = 0
    @Flag(help: "Print what would be kept and removed; change nothing.") var dryRun = false
    @OptionGroup var work: MergeWork
    @OptionGroup var metrics: MetricsFile

    @OptionGroup var store: StoreArguments

    func run() throws {
        Output.warnIfExposed(chain)
        try metrics.check()
        let clock = RunMetrics.Stopwatch()
        let rules = RetentionRules(last: keepLast, hourly: keepHourly, daily: keepDaily, weekly: keepWeekly, monthly: keepMonthly, yearly: keepYearly)
        let progress = ProgressLine(verb: "prune", quiet: work.quiet || dryRun)
        let r: PruneResult
        do {
            var options = try work.options(to: 0)
            options.store = store.value
            r = try Merge.prune(chain: chain, rules: rules, options: options, dryRun: dryRun, progress: progress.update)
            progress.finish()
            if !dryRun { metrics.record("prune", chain: chain, clock: clock, seconds: r.seconds, stored: r.bytesWritten) }
        } catch {
            progress.finish()
            if !dryRun { metrics.record("prune", chain: chain, clock: clock, failure: error) }
            throw Output.fail(error)
        }
        if work.json {
            Output.json(Report(r))
            return
        }
        if work.quiet && !dryRun { return }
        for d in r.decisions {
            print("point \(pad(String(d.point), 5, left: true))  \(ChainListing.localTime(d.createdAt))  \(d.keptBy.map { "keep (\($0.rawValue))" } ?? "remove")")
        }
        let removed = r.decisions.filter { $0.keptBy == nil }.count
        if removed == 0 {
            print("nothing to prune: the rules keep all \(r.decisions.count) points")
        } else if dryRun {
            print("would remove \(removed) of \(r.decisions.count) points in \(r.merges.count) merge\(r.merges.count == 1 ? "" : "s") (dry run: nothing changed)")
        } else {
            print("removed \(removed) of \(r.decisions.count) points in \(r.merges.count) merge\(r.merges.count == 1 ? "" : "s"): \(Output.bytes(r.bytesBefore)) -> \(Output.bytes(r.bytesAfter)), \(Output.bytes(r.bytesWritten)) written, in \(Output.fixed(r.seconds, 2)) s")
        }
    }
}

extension PruneCommand {
    /// What --json prints (`rule` null for a point removed).
    struct Report: Encodable {
        struct Point: Encodable {
            var point: UInt32, created: UInt64, keep: Bool, rule: OrNull<String>
        }
        struct Merge: Encodable {
            var removed: [UInt32], into: UInt32, bytesStored: UInt64
        }
        var dryRun: Bool, points: [Point], merges: [Merge], remaining: [UInt32], bytesBefore, bytesWritten: UInt64, seconds: Seconds

        init(_ r: PruneResult) {
            dryRun = r.dryRun
            points = r.decisions.map { Point(point: $0.point, created: $0.createdAt, keep: $0.keptBy != nil, rule: OrNull($0.keptBy?.rawValue)) }
            merges = r.merges.map { Merge(removed: $0.removed, into: $0.into, bytesStored: $0.result?.bytesStored ?? 0) }
            (remaining, bytesBefore, bytesWritten, seconds) = (r.points, r.bytesBefore, r.bytesWritten, Seconds(r.seconds))
        }
    }
}
