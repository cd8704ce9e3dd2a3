// The map of used blocks of an XFS filesystem that is not mounted, read from its free-space B+trees (one per
// allocation group, sorted by block number) after its log is found clean (Sources/CXfs/xfsmap.c). No library
// reads them (xfsprogs keeps libxfs to itself); the structures are those of xfslibs-dev's xfs_format.h and
// xfs_log_format.h, and every block is checked as the kernel's verifiers check it before it is believed.
#ifndef STRATA_CXFS_H
#define STRATA_CXFS_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t blockSize;   // the filesystem's block size, bytes
    uint64_t blocks;      // its data blocks
    uint64_t freeBlocks;  // blocks its free-space trees hold
    uint32_t groups;      // allocation groups
    uint32_t version;     // superblock version: 4, or 5 (checksummed metadata)
} strata_xfs_info;

// Reads `length` bytes at byte `offset` of the filesystem into `buffer`: 0, or nonzero where it cannot.
typedef int (*strata_xfs_read)(void *context, uint64_t offset, void *buffer, size_t length);
// A used run, in bytes from the start of the filesystem.
typedef void (*strata_xfs_emit)(void *context, uint64_t offset, uint64_t length);

// Gives the used runs of the XFS whose bytes `read` gives (`size` bytes at most), in order, to `emit`: every
// block its free-space B+trees (bnobt) do not hold. Returns 0 when the map was given; otherwise 1, with why the
// filesystem must be read whole in `why`: not XFS, a superblock, AGF or tree block that fails its checks (magic,
// checksum, its own address, owner, uuid, level, record counts, order, bounds), an AG whose tree holds other than
// its AGF's free count, a log that is external, not clean (transactions to replay: the trees may be stale) or
// unreadable, mkfs unfinished, or marked as needing repair. Nothing is written.
int strata_xfs_used(strata_xfs_read read, void *readContext, uint64_t size, strata_xfs_info *info,
                    strata_xfs_emit emit, void *context, char *why, size_t whyLength);

// strata_xfs_used on the `size` bytes at byte `offset` of the file or device `path`, read through the page cache.
int strata_xfs_used_path(const char *path, uint64_t offset, uint64_t size, strata_xfs_info *info,
                         strata_xfs_emit emit, void *context, char *why, size_t whyLength);

#endif
