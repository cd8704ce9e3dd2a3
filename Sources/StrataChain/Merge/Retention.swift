// Which points a calendar retention policy keeps, with Proxmox Backup Server's semantics (its prune.rs and
// "Maintenance Tasks" docs): the rules run in the order last, hourly, daily, weekly, monthly, yearly over the
// points newest first. Each rule keeps the newest point of each of its periods until it has kept N periods;
// a period that holds a point an earlier rule kept is already covered and does not count; a point an earlier
// rule looked at (kept or passed over) is not looked at again. Periods are local time (ISO weeks). Points are
// ordered as the chain orders them (newest captured last), not by their clocks, so a clock set back cannot
// reorder a chain. This file decides; Merge+Prune.swift folds the points not kept away.
import StrataIO

/// How many periods of each length a prune keeps (0: that rule is not used).
public struct RetentionRules: Sendable, Equatable {
    public var last = 0
    public var hourly = 0
    public var daily = 0
    public var weekly = 0
    public var monthly = 0
    public var yearly = 0

    public init(last: Int = 0, hourly: Int = 0, daily: Int = 0, weekly: Int = 0, monthly: Int = 0, yearly: Int = 0) {
        (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly) = (last, hourly, daily, weekly, monthly, yearly)
    }

    /// The rules in the order they apply, with the strftime pattern naming each one's period (nil for `last`:
    /// every point is its own period).
    var ordered: [(reason: RetentionReason, count: Int, period: String?)] {
        [(.last, last, nil), (.hourly, hourly, "%Y-%m-%d %H"), (.daily, daily, "%Y-%m-%d"), (.weekly, weekly, "%G-W%V"),
         (.monthly, monthly, "%Y-%m"), (.yearly, yearly, "%Y")]
    }

    /// Whether any rule keeps anything.
    public var keepsAnything: Bool { ordered.contains { $0.count > 0 } }
}

/// Why a point is kept: the rule that kept it.
public enum RetentionReason: String, Sendable, Equatable {
    case last, hourly, daily, weekly, monthly, yearly
}

/// One point and what the rules decided for it.
public struct RetentionDecision: Sendable, Equatable {
    public var point: UInt32
    public var createdAt: UInt64
    /// The rule that keeps it; nil: it is removed.
    public var keptBy: RetentionReason?

    public init(point: UInt32, createdAt: UInt64, keptBy: RetentionReason?) {
        (self.point, self.createdAt, self.keptBy) = (point, createdAt, keptBy)
    }
}

public enum Retention {
    /// Decides for each of `points` (oldest first, as the chain lists them; each with its capture time) whether
    /// `rules` keep it. `period` names the period of a moment for a strftime pattern (local time by default).
    /// Returns the decisions oldest first. The newest point is always kept.
    public static func decide(
        _ points: [(point: UInt32, createdAt: UInt64)], rules: RetentionRules,
        period: (UInt64, String) -> String = LocalCalendar.format
    ) throws -> [RetentionDecision] {
        for rule in rules.ordered where rule.count < 0 {
            throw ChainError.invalidOption("--keep-\(rule.reason.rawValue) must not be negative")
        }
        guard rules.keepsAnything else {
            throw ChainError.invalidOption("no retention rule given: use --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly or --keep-yearly")
        }
        let newestFirst = Array(points.reversed())
        var kept = [RetentionReason?](repeating: nil, count: newestFirst.count)
        var seen = [Bool](repeating: false, count: newestFirst.count)
        for rule in rules.ordered where rule.count > 0 {
            let names = newestFirst.indices.map { i in rule.period.map { period(newestFirst[i].createdAt, $0) } ?? "#\(i)" }
            let covered = Set(newestFirst.indices.filter { kept[$0] != nil }.map { names[$0] })
            var periods = Set<String>()
            for i in newestFirst.indices where !seen[i] {
                let id = names[i]
                if covered.contains(id) { continue }
                if periods.contains(id) {
                    seen[i] = true
                    continue
                }
                if periods.count >= rule.count { break }
                periods.insert(id)
                kept[i] = rule.reason
                seen[i] = true
            }
        }
        if !newestFirst.isEmpty && kept[0] == nil { kept[0] = .last }
        return zip(newestFirst, kept).map { RetentionDecision(point: $0.0.point, createdAt: $0.0.createdAt, keptBy: $0.1) }.reversed()
    }
}
