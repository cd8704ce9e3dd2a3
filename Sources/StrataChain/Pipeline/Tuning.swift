// The sizes the pipelines and files are built with, as one value the options carry. The defaults are the
// measured ones (docs/DESIGN.md says why each is what it is); tests shrink them to reach, with a small fixture,
// the paths a large disk takes: frames leaving their slots and coming back, images of many index chunks,
// windows narrower than an extent, sub-frames of an older size.
import StrataFormat

struct Tuning: Sendable, Equatable {
    /// Frames and extents in one chunk of an image's index.
    var framesPerIndexChunk = IndexChunks.framesPerChunk
    var extentsPerIndexChunk = IndexChunks.extentsPerChunk
    /// The most read slots a restore uses.
    var maxRestoreSlots = 48
    /// The most blocks one window of a point's walk covers.
    var maxWindowBlocks = UInt64.max
    /// The bytes a sub-frame of a seekable chain's frame decodes to.
    var subframeBytes = 32 << 10
    /// A merge in a bucket downloads whole the runs of frames shorter than 1/`mergePaddingShare` of the image.
    var mergePaddingShare = 32
}
