// `strata bench --chart FILE.svg`: the picture of a bench run. Left, the real full capture's rate against its
// threads; right, the device's read rate against the requests in flight, one line per request size; on both, the
// device's best read rate as a dashed line, so the curve shows where adding cores or requests stops paying.
import StrataChain
import StrataFormat
import StrataIO

public enum BenchChart {
    public static func svg(_ r: BenchReport) -> String {
        let width = 900.0, height = 380.0, panel = 380.0, top = 50.0, plot = 260.0
        let best = r.reads.map(\.bytesPerSecond).max() ?? 0
        let capture = r.runs.fullCapture.map { (x: Double($0.threads), y: $0.bytesPerSecond) }
        let uring = r.reads.filter { $0.engine != "pread" }
        let ymax = max(best, capture.map(\.y).max() ?? 0, 1) * 1.15
        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="20" y="24" font-size="15">strata bench: \(escape(r.source)), \(gib(Double(r.sourceBytes))) GiB, \(r.cores) cores, zstd -\(r.level)</text>

            """
        func axes(_ x0: Double, _ title: String, _ xlabel: String, _ ticks: [Double], _ xOf: (Double) -> Double) {
            out += "<text x=\"\(x0)\" y=\"\(top - 8)\">\(escape(title))</text>\n"
            out += "<line x1=\"\(x0)\" y1=\"\(top + plot)\" x2=\"\(x0 + panel - 40)\" y2=\"\(top + plot)\" stroke=\"black\"/>\n"
            out += "<line x1=\"\(x0)\" y1=\"\(top)\" x2=\"\(x0)\" y2=\"\(top + plot)\" stroke=\"black\"/>\n"
            for t in ticks { out += "<text x=\"\(xOf(t) - 4)\" y=\"\(top + plot + 16)\">\(Int(t))</text>\n" }
            out += "<text x=\"\(x0 + panel / 2 - 60)\" y=\"\(top + plot + 34)\">\(escape(xlabel))</text>\n"
            for i in 0...4 {
                let v = ymax * Double(i) / 4
                out += "<text x=\"\(x0 - 36)\" y=\"\(yOf(v) + 4)\">\(fixed1(gib(v)))</text>\n"
            }
            out += "<line x1=\"\(x0)\" y1=\"\(yOf(best))\" x2=\"\(x0 + panel - 40)\" y2=\"\(yOf(best))\" stroke=\"gray\" stroke-dasharray=\"6,4\"/>\n"
            out += "<text x=\"\(x0 + panel - 200)\" y=\"\(yOf(best) - 6)\" fill=\"gray\">device reads \(fixed1(gib(best))) GiB/s</text>\n"
        }
        func yOf(_ v: Double) -> Double { top + plot - v / ymax * plot }
        func line(_ points: [(Double, Double)], _ color: String, _ label: String, _ labelY: Double, _ x0: Double) {
            let p = points.map { "\(fixed1($0.0)),\(fixed1($0.1))" }.joined(separator: " ")
            out += "<polyline points=\"\(p)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"/>\n"
            for (x, y) in points { out += "<circle cx=\"\(fixed1(x))\" cy=\"\(fixed1(y))\" r=\"3\" fill=\"\(color)\"/>\n" }
            out += "<text x=\"\(x0 + 10)\" y=\"\(labelY)\" fill=\"\(color)\">\(escape(label))</text>\n"
        }
        // Left: full capture against threads (log2 spacing).
        let x0 = 70.0
        let maxT = max(capture.map(\.x).max() ?? 1, 1)
        let xT = { (t: Double) -> Double in x0 + 10 + (maxT > 1 ? log2(t) / log2(maxT) : 0.5) * (panel - 70) }
        axes(x0, "real full capture, GiB/s", "threads", capture.map(\.x), xT)
        line(capture.map { (xT($0.x), yOf($0.y)) }, "#1f77b4", "full capture", top + 14, x0)
        // Right: reads against queue depth, per request size.
        let x1 = x0 + panel + 60
        let depths = Array(Set(uring.map { Double($0.queueDepth) })).sorted()
        let maxD = max(depths.last ?? 1, 1)
        let xD = { (d: Double) -> Double in x1 + 10 + (maxD > 1 ? log2(d) / log2(maxD) : 0.5) * (panel - 70) }
        axes(x1, "device reads (\(uring.first?.engine ?? "pread")), GiB/s", "requests in flight", depths, xD)
        let colors = ["#2ca02c", "#d62728", "#9467bd", "#8c564b"]
        for (i, size) in Array(Set(uring.map(\.requestSize))).sorted().enumerated() {
            let pts = uring.filter { $0.requestSize == size }.sorted { $0.queueDepth < $1.queueDepth }.map { (xD(Double($0.queueDepth)), yOf($0.bytesPerSecond)) }
            line(pts, colors[i % colors.count], "\(size >> 10) KiB requests", top + 14 + Double(i) * 16, x1)
        }
        out += "</svg>\n"
        return out
    }

    /// Refuses a chart path that is not an SVG file's (before a bench runs, so nothing is measured for nothing).
    public static func checkPath(_ path: String) throws {
        guard path.hasSuffix(".svg") else { throw ChainError.invalidOption("--chart writes SVG: name the file .svg (\(path))") }
    }

    /// Writes the chart of `r` to `path` (SVG; mode 0600 when new).
    public static func write(_ r: BenchReport, to path: String) throws {
        try checkPath(path)
        let bytes = Array(svg(r).utf8)
        do {
            let file = try Sys.create(path, [.writeOnly, .truncate])
            try bytes.withUnsafeBytes { try Sys.pwriteAll(file.rawValue, $0.baseAddress!, $0.count, 0, path: path) }
        } catch let e as IOError {
            throw ChainError.targetUnavailable(path: path, reason: e.reason)
        }
    }

    private static func gib(_ v: Double) -> Double { v / Double(1 << 30) }

    /// log2 of a positive `x`, to a chart's precision, in Swift alone (this module imports no C library): the
    /// binary exponent, plus the significand's logarithm from the series of atanh.
    static func log2(_ x: Double) -> Double {
        guard x > 0, x.isFinite else { return 0 }
        let m = x.significand  // in [1, 2)
        let z = (m - 1) / (m + 1)
        var term = z, sum = 0.0
        for k in stride(from: 1, to: 40, by: 2) {
            sum += term / Double(k)
            term *= z * z
        }
        return Double(x.exponent) + 2 * sum / 0.693_147_180_559_945_3
    }
    private static func fixed1(_ v: Double) -> String { String(Double(Int((v * 10).rounded())) / 10) }
    private static func escape(_ s: String) -> String { s.escaping(["&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"]) }
}

