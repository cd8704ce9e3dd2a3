// Calendar periods in local time, for retention rules. A period is named the way strftime(3) names it (the
// day as "%Y-%m-%d", the ISO week as "%G-W%V"), so two moments are in the same period exactly when their names
// are equal: no calendar arithmetic of our own, and the C library's time zone rules (TZ, /etc/localtime, DST)
// apply as they do for every other program on the machine.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public enum LocalCalendar {
    /// `seconds` since the epoch formatted with strftime's `pattern` in the local time zone.
    public static func format(_ seconds: UInt64, _ pattern: String) -> String {
        var t = time_t(clamping: seconds)
        var parts = tm()
        guard localtime_r(&t, &parts) != nil else { return "" }
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, buffer.count, pattern, &parts)
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Sets the TZ environment variable (nil removes it) and re-reads the time zone.
    public static func setTimeZone(_ zone: String?) {
        if let zone { setenv("TZ", zone, 1) } else { unsetenv("TZ") }
        tzset()
    }
}
