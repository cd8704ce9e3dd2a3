// Lists of block or byte ranges kept in order and joined where they touch: the unreadable ranges that capture
// and restore report.

extension Array where Element == Range<UInt64> {
    /// Appends `r`, extending the last range instead when `r` starts where it ends.
    mutating func appendJoining(_ r: Range<UInt64>) {
        if let last = self.last, last.upperBound == r.lowerBound {
            self[count - 1] = last.lowerBound..<r.upperBound
        } else {
            append(r)
        }
    }
}
