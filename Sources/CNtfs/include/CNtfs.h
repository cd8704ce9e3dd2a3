// The map of used clusters of an NTFS volume, read with libntfs-3g (Sources/CNtfs/ntfsmap.c): its $Bitmap, on a
// read-only volume opened at a byte offset of a file or device, behind a small C interface.
#ifndef STRATA_CNTFS_H
#define STRATA_CNTFS_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t clusterSize;   // bytes
    uint64_t clusters;      // the volume's size in clusters
    uint64_t usedClusters;  // clusters $Bitmap marks used
} strata_ntfs_info;

// A used run, in bytes from the start of the volume.
typedef void (*strata_ntfs_emit)(void *context, uint64_t offset, uint64_t length);

// Reads the $Bitmap of the NTFS volume at byte `offset` of `path` (`size` bytes long) and gives its used runs,
// in order, to `emit`. Returns 0 when the map was given; otherwise 1, with why the volume must be read whole in
// `why`: it cannot be opened, it is hibernated or left by Windows' Fast Startup, it is marked dirty, its $LogFile
// is not clean, or its bitmap does not mark used what the volume's own metadata occupies. Nothing is written.
int strata_ntfs_used(const char *path, uint64_t offset, uint64_t size, strata_ntfs_info *info, strata_ntfs_emit emit,
                     void *context, char *why, size_t whyLength);

#endif
