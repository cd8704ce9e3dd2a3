// The map of used blocks of an ext2/3/4 filesystem, read with e2fsprogs' libext2fs (Sources/CExt2fs/ext2map.c):
// the one thing Strata asks of it, behind a small C interface (libext2fs's own header is macros and inline
// functions Swift does not import well).
#ifndef STRATA_CEXT2FS_H
#define STRATA_CEXT2FS_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t blockSize;   // the filesystem's block size, bytes
    uint64_t blocks;      // its size in blocks
    uint64_t usedBlocks;  // blocks its bitmaps mark used (metadata included)
} strata_ext2_info;

// A used run, in bytes from the start of the filesystem.
typedef void (*strata_ext2_emit)(void *context, uint64_t offset, uint64_t length);

// Reads the block bitmaps of the ext2/3/4 filesystem at byte `offset` of `path` and gives its used runs, in
// order, to `emit`. Returns 0 when the map was given; otherwise 1, with why the filesystem must be read whole
// in `why` (it cannot be opened, it needs journal recovery, it is not clean, its bitmaps disagree with its
// group descriptors, it uses a feature this reader does not map). Nothing is written to the filesystem.
int strata_ext2_used(const char *path, uint64_t offset, strata_ext2_info *info, strata_ext2_emit emit, void *context,
                     char *why, size_t whyLength);

#endif
