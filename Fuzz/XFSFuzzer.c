// libFuzzer target for the XFS map reader (Sources/CXfs/xfsmap.c), built by Tools/fuzz with the address
// sanitizer and the reader's checksums skipped (FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION), so that mutations
// reach the checks behind them. An input is a sparse filesystem: records of a big-endian u32 sector (512 bytes),
// a big-endian u16 count of sectors and their bytes; every byte no record gives reads as zero. Beyond not
// crashing, the reader must give its used runs in order, apart, and inside the filesystem it described.
// Built with -DSTRATA_XFS_RECORD instead, it is the seed maker: `xfs-record IMAGE > SEED` runs the reader on a
// real filesystem and writes every sector it read that is not zero (nor a log sector mkfs left at cycle 0,
// which reads the same to it as zeros).
#include "../Sources/CXfs/include/CXfs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { sector = 512 };
static const uint64_t fuzzedSize = 64ull << 20;  // larger than any seed; bounds what one input can make it read

typedef struct {
    const uint8_t *data;
    size_t size;
} image;

static int readImage(void *context, uint64_t offset, void *buffer, size_t length) {
    const image *im = context;
    memset(buffer, 0, length);
    for (size_t at = 0; at + 6 <= im->size;) {
        const uint8_t *p = im->data + at;
        uint64_t start = ((uint64_t)p[0] << 24 | (uint64_t)p[1] << 16 | (uint64_t)p[2] << 8 | p[3]) * sector;
        size_t bytes = (size_t)(p[4] << 8 | p[5]) * sector;
        if (bytes > im->size - at - 6) bytes = (im->size - at - 6) / sector * sector;
        uint64_t lo = start > offset ? start : offset, hi = start + bytes < offset + length ? start + bytes : offset + length;
        if (lo < hi) memcpy((uint8_t *)buffer + (lo - offset), p + 6 + (lo - start), hi - lo);
        at += 6 + bytes;
        if (bytes == 0) break;
    }
    return 0;
}

typedef struct {
    uint64_t end;
} order;

static void checkOrder(void *context, uint64_t offset, uint64_t length) {
    order *o = context;
    if (length == 0 || offset < o->end) __builtin_trap();  // runs out of order, overlapping or empty
    o->end = offset + length;
}

#ifndef STRATA_XFS_RECORD
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    image im = {data, size};
    order o = {0};
    strata_xfs_info info;
    char why[512];
    if (strata_xfs_used(readImage, &im, fuzzedSize, &info, checkOrder, &o, why, sizeof why) == 0) {
        if (info.blocks * info.blockSize > fuzzedSize || o.end > info.blocks * info.blockSize) __builtin_trap();
    } else if (memchr(why, 0, sizeof why) == NULL || why[0] == 0) {
        __builtin_trap();  // a refusal always says why
    }
    return 0;
}
#else
static FILE *source;

static int recordRead(void *context, uint64_t offset, void *buffer, size_t length) {
    (void)context;
    if (fseeko(source, (off_t)offset, SEEK_SET) != 0 || fread(buffer, 1, length, source) != length) return 1;
    for (size_t s = 0; s + sector <= length; s += sector) {
        const uint8_t *p = (const uint8_t *)buffer + s;
        int zero = 1;
        for (int i = 0; i < sector && zero; i++) zero = p[i] == 0;
        int unwrittenLog = p[0] == 0xFE && p[1] == 0xED && p[2] == 0xBA && p[3] == 0xBE && !p[4] && !p[5] && !p[6] && !p[7];
        if (zero || unwrittenLog) continue;
        uint32_t at = (uint32_t)((offset + s) / sector);
        uint8_t head[6] = {at >> 24, at >> 16, at >> 8, at, 0, 1};
        fwrite(head, 1, 6, stdout);
        fwrite(p, 1, sector, stdout);
    }
    return 0;
}

static void ignore(void *context, uint64_t offset, uint64_t length) { (void)context; (void)offset; (void)length; }

int main(int argc, char **argv) {
    if (argc != 2 || !(source = fopen(argv[1], "rb"))) { fprintf(stderr, "usage: xfs-record IMAGE > SEED\n"); return 64; }
    fseeko(source, 0, SEEK_END);
    uint64_t size = (uint64_t)ftello(source);
    strata_xfs_info info;
    char why[512];
    if (strata_xfs_used(recordRead, NULL, size, &info, ignore, NULL, why, sizeof why) != 0) { fprintf(stderr, "xfs-record: %s\n", why); return 1; }
    return 0;
}
#endif
