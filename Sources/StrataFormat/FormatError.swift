// Typed decoding errors. Each names the structure and where it went wrong; the chain layer adds the file.

public enum FormatError: Error, Equatable, Sendable {
    /// The bytes end before the structure does.
    case truncated(String, at: UInt64)
    /// The magic number is not Strata's: a foreign file.
    case badMagic(String)
    /// A stored checksum does not match the bytes.
    case checksumMismatch(String)
    /// A format version or incompatible feature this build does not know.
    case unsupported(String)
    /// A field holds a value that cannot be right (sizes, counts, order).
    case invalid(String)
}

extension FormatError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .truncated(let what, let at): return "\(what) is truncated at byte \(at)"
        case .badMagic(let what): return "\(what) does not start with Strata's magic number"
        case .checksumMismatch(let what): return "\(what) fails its checksum"
        case .unsupported(let what): return "\(what) needs a newer version of strata"
        case .invalid(let what): return what
        }
    }
}
