// The frames a walk over a window of resolved extents needs, in the order it first needs them, and the extent
// after which each is needed no more: what a hash-map rebuild reads ahead and drops its tables by, a window at a
// time (restore, which keeps frames across windows, plans as it goes instead: RestorePipeline.swift).
struct FramePlan {
    /// Distinct frames, by first use.
    let frames: [FrameRef]
    /// For each extent, its frame's place in `frames` (-1 for a zero or unreadable extent).
    let extentFrame: [Int32]
    /// For each frame, the last extent that uses it.
    let lastUse: [Int]

    init(_ resolved: [ResolvedExtent]) {
        var seen: [FrameRef: Int] = [:]
        var frames: [FrameRef] = [], extentFrame = [Int32](repeating: -1, count: resolved.count), lastUse: [Int] = []
        for (i, e) in resolved.enumerated() where e.kind == .data {
            if let k = seen[e.frameRef] {
                extentFrame[i] = Int32(k)
                lastUse[k] = i
            } else {
                seen[e.frameRef] = frames.count
                extentFrame[i] = Int32(frames.count)
                frames.append(e.frameRef)
                lastUse.append(i)
            }
        }
        self.frames = frames
        self.extentFrame = extentFrame
        self.lastUse = lastUse
    }
}
