// Lists of block or byte ranges kept in order and joined where they touch: the unreadable ranges that capture
// and restore report, the used runs of a filesystem's map.

extension Array where Element == Range<UInt64> {
    /// Appends `r`, extending the last range instead when `r` starts where it ends or inside it. (A range that
    /// starts before the last one, as unreadable blocks found out of order do, is appended as it is: a caller
    /// that needs order sorts.)
    public mutating func appendJoining(_ r: Range<UInt64>) {
        if let last = self.last, last.lowerBound <= r.lowerBound, r.lowerBound <= last.upperBound {
            self[count - 1] = last.lowerBound..<Swift.max(last.upperBound, r.upperBound)
        } else {
            append(r)
        }
    }
}
