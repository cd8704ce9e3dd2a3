// What can go wrong talking to a store, in terms a message can use.

public enum S3Error: Error, Equatable, CustomStringConvertible {
    /// No credentials, or an endpoint that is not a URL.
    case configuration(String)
    /// The store answered with an error: HTTP status, S3's error code (may be empty), and what was asked.
    case status(Int, code: String, message: String, request: String)
    /// The store could not be reached or stopped answering, after retries.
    case unreachable(String)

    public var description: String {
        switch self {
        case .configuration(let m): return m
        case .status(let s, let c, let m, let r): return "\(r): HTTP \(s)\(c.isEmpty ? "" : " \(c)")\(m.isEmpty ? "" : ": \(m)")"
        case .unreachable(let m): return m
        }
    }

    public var httpStatus: Int? { if case .status(let s, _, _, _) = self { return s } else { return nil } }
    /// 404: no such key (or bucket, with code NoSuchBucket).
    public var isNotFound: Bool { httpStatus == 404 }
    /// 412: a conditional write lost.
    public var isPreconditionFailed: Bool { httpStatus == 412 }
    public var code: String { if case .status(_, let c, _, _) = self { return c } else { return "" } }
}
