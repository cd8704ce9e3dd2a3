// Escaping characters in text written for another program to parse (a Prometheus label value, an SVG text node):
// one loop, each caller bringing its format's table.
extension String {
    /// The string with each character found in `replacements` replaced by its text.
    public func escaping(_ replacements: [Character: String]) -> String {
        var out = ""
        out.reserveCapacity(utf8.count)
        for c in self {
            if let r = replacements[c] { out += r } else { out.append(c) }
        }
        return out
    }
}
