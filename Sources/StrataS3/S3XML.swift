// The few elements Strata reads from S3's XML answers (ListObjectsV2, InitiateMultipartUpload, CopyPartResult,
// ListMultipartUploads, Error): found by tag, entities decoded. Not a general XML parser; S3's answers are flat
// enough for this, and it keeps libxml2 (which a static binary cannot link from Debian) out.

enum S3XML {
    /// The text of every `<tag>` element, in order.
    static func values(_ xml: String, _ tag: String) -> [String] {
        var out: [String] = []
        var rest = Substring(xml)
        let open = "<\(tag)>", close = "</\(tag)>"
        while let a = rest.firstRange(of: open), let b = rest[a.upperBound...].firstRange(of: close) {
            out.append(decode(String(rest[a.upperBound..<b.lowerBound])))
            rest = rest[b.upperBound...]
        }
        return out
    }

    static func value(_ xml: String, _ tag: String) -> String? { values(xml, tag).first }

    /// The inner text of every `<tag>...</tag>` block (for the elements inside each `<Contents>`, `<Upload>`).
    static func blocks(_ xml: String, _ tag: String) -> [String] {
        var out: [String] = []
        var rest = Substring(xml)
        while let a = rest.firstRange(of: "<\(tag)>"), let b = rest[a.upperBound...].firstRange(of: "</\(tag)>") {
            out.append(String(rest[a.upperBound..<b.lowerBound]))
            rest = rest[b.upperBound...]
        }
        return out
    }

    static func decode(_ s: String) -> String {
        guard s.contains("&") else { return s }
        return s.replacing("&lt;", with: "<").replacing("&gt;", with: ">").replacing("&quot;", with: "\"").replacing("&apos;", with: "'")
            .replacing("&amp;", with: "&")
    }

    static func escape(_ s: String) -> String {
        s.replacing("&", with: "&amp;").replacing("<", with: "&lt;").replacing(">", with: "&gt;")
    }
}
