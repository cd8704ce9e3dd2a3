// See include/CXfs.h. The structures and constants are xfslibs-dev's; the checks follow the kernel's verifiers
// (xfs_sb_verify, xfs_agf_verify, xfs_btree_sblock_verify, xfs_alloc_verify) and its log's tail finding
// (xlog_find_tail, xlog_check_unmount_rec). What is read is bounded: the superblock, the log once in 1 MiB
// pieces, one AGF per group, and each tree block at most once (a block named twice breaks the order of records
// and is refused), with one buffer per tree level.
#include "CXfs.h"

#include <xfs/xfs.h>
#include <xfs/xfs_format.h>
#include <xfs/xfs_log_format.h>

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The deepest free-space tree the kernel builds (xfs_allocbt_maxlevels_ondisk): far fewer than this.
enum { maxLevels = 9, logPiece = 1 << 20 };

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]; }

// CRC-32C as XFS stores it (xfs_end_cksum: the standard CRC, little-endian), over `length` bytes with the four
// at `at` taken as zeros.
static int checksumMatches(const uint8_t *buffer, size_t length, size_t at) {
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    (void)buffer; (void)length; (void)at;
    return 1;  // the fuzzer reaches the checks behind the checksums
#else
    // (Built on each call, a few hundred operations, rather than shared between threads unguarded.)
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
    uint32_t crc = ~0u;
    for (size_t i = 0; i < length; i++) {
        uint8_t byte = i >= at && i < at + 4 ? 0 : buffer[i];
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8);
    }
    return ~crc == le32(buffer + at);
#endif
}

typedef struct {
    strata_xfs_read read;
    void *readContext;
    uint64_t size;
    strata_xfs_emit emit;
    void *context;
    char *why;
    size_t whyLength;
    uint32_t blockSize, sectorSize, groupBlocks, groups;
    uint8_t groupLog;
    uint64_t blocks;
    int v5;
    uint8_t uuid[16];      // the metadata's (sb_meta_uuid where the filesystem has one)
    uint8_t userUUID[16];  // sb_uuid, which the log carries
    uint8_t *level[maxLevels];
    // The group being walked.
    uint32_t group, groupLength;
    uint64_t groupStart;  // its first block, of the filesystem
    uint32_t end;         // where the last free extent ended, in its blocks
    uint64_t free, visited;
    uint32_t longest;
} reader;

static int refuse(reader *r, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(r->why, r->whyLength, format, args);
    va_end(args);
    return 1;
}

static int readAt(reader *r, uint64_t offset, void *buffer, size_t length) {
    if (offset > r->size || length > r->size - offset)
        return refuse(r, "its metadata at byte %llu lies past its %llu bytes", (unsigned long long)offset, (unsigned long long)r->size);
    if (r->read(r->readContext, offset, buffer, length) != 0)
        return refuse(r, "its metadata at byte %llu cannot be read", (unsigned long long)offset);
    return 0;
}

static void emitUsed(reader *r, uint32_t from, uint32_t to) {
    if (to > from)
        r->emit(r->context, (r->groupStart + from) * r->blockSize, (uint64_t)(to - from) * r->blockSize);
}

// The log, at filesystem block `start`, `length` blocks: clean when nothing was written past its head, and its
// last record ends at the head and is an unmount record alone (nothing left to replay), as xlog_find_tail and
// xlog_check_unmount_rec decide.
static int checkLog(reader *r, uint64_t start, uint32_t length) {
    static const char *dirty = "its log is not clean (not unmounted cleanly, or mounted), so its free-space trees may be stale";
    uint64_t group = start >> r->groupLog, block = start & ((1ull << r->groupLog) - 1);
    if (group >= r->groups || block >= r->groupBlocks || length < 2)
        return refuse(r, "its superblock places its log outside it");
    uint64_t offset = (group * r->groupBlocks + block) * r->blockSize, bytes = (uint64_t)length * r->blockSize;
    if (offset + bytes > r->blocks * r->blockSize) return refuse(r, "its superblock places its log outside it");
    uint64_t count = bytes / BBSIZE, head = count, last = count;
    uint32_t first = 0;
    uint8_t *piece = malloc(logPiece);
    if (!piece) return refuse(r, "no memory to read its log");
    for (uint64_t at = 0; at < count; at += logPiece / BBSIZE) {
        uint64_t n = count - at < logPiece / BBSIZE ? count - at : logPiece / BBSIZE;
        if (readAt(r, offset + at * BBSIZE, piece, n * BBSIZE)) { free(piece); return 1; }
        for (uint64_t i = 0; i < n; i++) {
            const uint8_t *bb = piece + i * BBSIZE;
            int header = be32(bb) == XLOG_HEADER_MAGIC_NUM;
            // Every basic block of the log starts with the cycle it was written in; a record's header carries it.
            uint32_t cycle = header ? be32(bb + offsetof(xlog_rec_header_t, h_cycle)) : be32(bb);
            if (at + i == 0) first = cycle;
            if (head == count && cycle != first) head = at + i;
            if (head < count && cycle == first) { free(piece); return refuse(r, "%s", dirty); }  // written past its head
            if (head == count && header) last = at + i;
        }
    }
    free(piece);
    if (last == count) return refuse(r, "its log holds no record");
    uint8_t bb[BBSIZE];
    if (readAt(r, offset + last * BBSIZE, bb, BBSIZE)) return 1;
    uint32_t version = be32(bb + offsetof(xlog_rec_header_t, h_version)), recordLength = be32(bb + offsetof(xlog_rec_header_t, h_len));
    uint32_t iclog = be32(bb + offsetof(xlog_rec_header_t, h_size));
    if ((version != XLOG_VERSION_1 && version != XLOG_VERSION_2) || recordLength > XLOG_MAX_RECORD_BSIZE || iclog > XLOG_MAX_RECORD_BSIZE)
        return refuse(r, "its log's last record is damaged");
    uint64_t headers = version == XLOG_VERSION_2 && iclog > XLOG_HEADER_CYCLE_SIZE ? (iclog + XLOG_HEADER_CYCLE_SIZE - 1) / XLOG_HEADER_CYCLE_SIZE : 1;
    uint64_t lsn = (uint64_t)first << 32 | last;
    if (last + headers + BTOBB(recordLength) != head || be64(bb + offsetof(xlog_rec_header_t, h_lsn)) != lsn) return refuse(r, "%s", dirty);
    static const uint8_t none[16];
    const uint8_t *uuid = bb + offsetof(xlog_rec_header_t, h_fs_uuid);
    if (memcmp(uuid, none, 16) != 0 && memcmp(uuid, r->userUUID, 16) != 0) return refuse(r, "its log belongs to another filesystem");
    // (Its tail may name the checkpoint before it: the kernel pushed everything out before writing it.)
    if (be32(bb + offsetof(xlog_rec_header_t, h_num_logops)) != 1 || recordLength < sizeof(xlog_op_header_t))
        return refuse(r, "%s", dirty);
    if (readAt(r, offset + (last + headers) * BBSIZE, bb, BBSIZE)) return 1;
    if (!(bb[offsetof(xlog_op_header_t, oh_flags)] & XLOG_UNMOUNT_TRANS)) return refuse(r, "%s", dirty);
    return 0;
}

// One block of the group's free-space tree at `block`, `depth` levels above the leaves; its records' gaps given
// as used.
static int walk(reader *r, uint32_t block, unsigned depth, int root) {
    if (++r->visited > r->groupLength || block == 0 || block >= r->groupLength)
        return refuse(r, "allocation group %u's free-space tree names block %u, outside it", r->group, block);
    uint8_t *b = r->level[depth];
    uint64_t address = (r->groupStart + block) * r->blockSize;
    if (readAt(r, address, b, r->blockSize)) return 1;
    size_t header = r->v5 ? XFS_BTREE_SBLOCK_CRC_LEN : XFS_BTREE_SBLOCK_LEN;
    if (be32(b) != (r->v5 ? XFS_ABTB_CRC_MAGIC : XFS_ABTB_MAGIC) || be16(b + 4) != depth)
        return refuse(r, "allocation group %u's free-space tree block %u is not one", r->group, block);
    if (r->v5) {
        size_t base = offsetof(struct xfs_btree_block, bb_u);
        if (!checksumMatches(b, r->blockSize, XFS_BTREE_SBLOCK_CRC_OFF))
            return refuse(r, "allocation group %u's free-space tree block %u fails its checksum", r->group, block);
        if (be64(b + base + offsetof(struct xfs_btree_block_shdr, bb_blkno)) != address / BBSIZE ||
            be32(b + base + offsetof(struct xfs_btree_block_shdr, bb_owner)) != r->group ||
            memcmp(b + base + offsetof(struct xfs_btree_block_shdr, bb_uuid), r->uuid, 16) != 0)
            return refuse(r, "allocation group %u's free-space tree block %u belongs elsewhere", r->group, block);
    }
    uint32_t records = be16(b + 6);
    if (depth == 0) {
        if (records > (r->blockSize - header) / sizeof(xfs_alloc_rec_t) || (records == 0 && !root))
            return refuse(r, "allocation group %u's free-space tree block %u holds %u records", r->group, block, records);
        for (uint32_t i = 0; i < records; i++) {
            const uint8_t *rec = b + header + i * sizeof(xfs_alloc_rec_t);
            uint32_t start = be32(rec), length = be32(rec + 4);
            if (length == 0 || start < r->end || start >= r->groupLength || length > r->groupLength - start)
                return refuse(r, "allocation group %u's free-space tree has extents out of order, overlapping or outside it", r->group);
            emitUsed(r, r->end, start);
            r->end = start + length;
            r->free += length;
            if (length > r->longest) r->longest = length;
        }
        return 0;
    }
    uint32_t most = (r->blockSize - header) / (sizeof(xfs_alloc_key_t) + sizeof(xfs_alloc_ptr_t));
    if (records == 0 || records > most)
        return refuse(r, "allocation group %u's free-space tree block %u holds %u records", r->group, block, records);
    for (uint32_t i = 0; i < records; i++) {
        // (This block's buffer is its level's alone: the walk below reads into the levels under it.)
        uint32_t child = be32(b + header + most * sizeof(xfs_alloc_key_t) + i * sizeof(xfs_alloc_ptr_t));
        if (walk(r, child, depth - 1, 0)) return 1;
    }
    return 0;
}

static int walkGroup(reader *r, uint8_t *sector, uint32_t group) {
    r->group = group;
    r->groupStart = (uint64_t)group * r->groupBlocks;
    r->groupLength = group == r->groups - 1 ? (uint32_t)(r->blocks - r->groupStart) : r->groupBlocks;
    if (readAt(r, r->groupStart * r->blockSize + r->sectorSize, sector, r->sectorSize)) return 1;
    if (be32(sector) != XFS_AGF_MAGIC || be32(sector + offsetof(xfs_agf_t, agf_versionnum)) != XFS_AGF_VERSION ||
        be32(sector + offsetof(xfs_agf_t, agf_seqno)) != group || be32(sector + offsetof(xfs_agf_t, agf_length)) != r->groupLength)
        return refuse(r, "allocation group %u's header (AGF) is damaged", group);
    if (r->v5 && (!checksumMatches(sector, r->sectorSize, XFS_AGF_CRC_OFF) || memcmp(sector + offsetof(xfs_agf_t, agf_uuid), r->uuid, 16) != 0))
        return refuse(r, "allocation group %u's header (AGF) fails its checksum", group);
    uint32_t root = be32(sector + offsetof(xfs_agf_t, agf_roots)), levels = be32(sector + offsetof(xfs_agf_t, agf_levels));
    uint32_t freeCount = be32(sector + offsetof(xfs_agf_t, agf_freeblks)), longest = be32(sector + offsetof(xfs_agf_t, agf_longest));
    if (levels < 1 || levels > maxLevels)
        return refuse(r, "allocation group %u's free-space tree is %u levels deep", group, levels);
    r->end = 0;
    r->free = 0;
    r->visited = 0;
    r->longest = 0;
    if (walk(r, root, levels - 1, 1)) return 1;
    emitUsed(r, r->end, r->groupLength);
    if (r->free != freeCount || r->longest != longest)
        return refuse(r, "allocation group %u's free-space tree holds %llu free blocks (longest %u), its header says %u (longest %u)",
                      group, (unsigned long long)r->free, r->longest, freeCount, longest);
    return 0;
}

int strata_xfs_used(strata_xfs_read read, void *readContext, uint64_t size, strata_xfs_info *info,
                    strata_xfs_emit emit, void *context, char *why, size_t whyLength) {
    reader r = {.read = read, .readContext = readContext, .size = size, .emit = emit, .context = context, .why = why, .whyLength = whyLength};
    uint8_t *sb = calloc(1, XFS_MAX_SECTORSIZE);
    int status = 1;
    if (!sb) return refuse(&r, "no memory to read it");
    if (readAt(&r, 0, sb, BBSIZE)) goto done;
    if (be32(sb) != XFS_SB_MAGIC) { refuse(&r, "its superblock is not XFS's"); goto done; }
    r.blockSize = be32(sb + offsetof(struct xfs_dsb, sb_blocksize));
    r.sectorSize = be16(sb + offsetof(struct xfs_dsb, sb_sectsize));
    unsigned version = be16(sb + offsetof(struct xfs_dsb, sb_versionnum)) & XFS_SB_VERSION_NUMBITS;
    r.v5 = version == XFS_SB_VERSION_5;
    if (r.blockSize < XFS_MIN_BLOCKSIZE || r.blockSize > XFS_MAX_BLOCKSIZE || (r.blockSize & (r.blockSize - 1)) ||
        r.sectorSize < XFS_MIN_SECTORSIZE || r.sectorSize > XFS_MAX_SECTORSIZE || (r.sectorSize & (r.sectorSize - 1)) || r.sectorSize > r.blockSize) {
        refuse(&r, "its superblock gives a block size of %u and a sector size of %u", r.blockSize, r.sectorSize);
        goto done;
    }
    if (version != XFS_SB_VERSION_4 && !r.v5) { refuse(&r, "its superblock is version %u, which Strata does not read", version); goto done; }
    if (readAt(&r, 0, sb, r.sectorSize)) goto done;
    memcpy(r.userUUID, sb + offsetof(struct xfs_dsb, sb_uuid), 16);
    memcpy(r.uuid, r.userUUID, 16);
    if (r.v5) {
        uint32_t incompat = be32(sb + offsetof(struct xfs_dsb, sb_features_incompat));
        if (!checksumMatches(sb, r.sectorSize, XFS_SB_CRC_OFF)) { refuse(&r, "its superblock fails its checksum"); goto done; }
        if (incompat & XFS_SB_FEAT_INCOMPAT_UNKNOWN) { refuse(&r, "it uses features Strata does not know (incompat 0x%x)", incompat); goto done; }
        if (incompat & XFS_SB_FEAT_INCOMPAT_NEEDSREPAIR) { refuse(&r, "it is marked as needing xfs_repair"); goto done; }
        if (incompat & XFS_SB_FEAT_INCOMPAT_META_UUID) memcpy(r.uuid, sb + offsetof(struct xfs_dsb, sb_meta_uuid), 16);
    }
    if (sb[offsetof(struct xfs_dsb, sb_inprogress)]) { refuse(&r, "mkfs.xfs did not finish it"); goto done; }
    r.groupBlocks = be32(sb + offsetof(struct xfs_dsb, sb_agblocks));
    r.groups = be32(sb + offsetof(struct xfs_dsb, sb_agcount));
    r.groupLog = sb[offsetof(struct xfs_dsb, sb_agblklog)];
    r.blocks = be64(sb + offsetof(struct xfs_dsb, sb_dblocks));
    if (r.groupBlocks < 2 || r.groups == 0 || r.groupLog > 31 || (1ull << r.groupLog) < r.groupBlocks ||
        (1ull << r.groupLog) >= 2ull * r.groupBlocks || r.blocks > (uint64_t)r.groups * r.groupBlocks ||
        r.blocks <= (uint64_t)(r.groups - 1) * r.groupBlocks) {
        refuse(&r, "its superblock's geometry does not hold together");
        goto done;
    }
    if (r.blocks > size / r.blockSize) {
        refuse(&r, "its superblock says it is %llu bytes, larger than its %llu", (unsigned long long)(r.blocks * r.blockSize), (unsigned long long)size);
        goto done;
    }
    uint64_t logStart = be64(sb + offsetof(struct xfs_dsb, sb_logstart));
    if (logStart == 0) { refuse(&r, "its log is on another device, whose state Strata cannot check"); goto done; }
    if (checkLog(&r, logStart, be32(sb + offsetof(struct xfs_dsb, sb_logblocks)))) goto done;
    for (unsigned i = 0; i < maxLevels; i++) {
        if (!(r.level[i] = malloc(r.blockSize))) { refuse(&r, "no memory to read it"); goto done; }
    }
    uint64_t freeBlocks = 0;
    for (uint32_t g = 0; g < r.groups; g++) {
        if (walkGroup(&r, sb, g)) goto done;
        freeBlocks += r.free;
    }
    info->blockSize = r.blockSize;
    info->blocks = r.blocks;
    info->freeBlocks = freeBlocks;
    info->groups = r.groups;
    info->version = version;
    status = 0;
done:
    for (unsigned i = 0; i < maxLevels; i++) free(r.level[i]);
    free(sb);
    return status;
}

typedef struct {
    int fd;
    uint64_t offset;
} file;

static int readFile(void *context, uint64_t offset, void *buffer, size_t length) {
    file *f = context;
    for (size_t done = 0; done < length;) {
        ssize_t n = pread(f->fd, (uint8_t *)buffer + done, length - done, (off_t)(f->offset + offset + done));
        if (n <= 0) return 1;
        done += (size_t)n;
    }
    return 0;
}

int strata_xfs_used_path(const char *path, uint64_t offset, uint64_t size, strata_xfs_info *info,
                         strata_xfs_emit emit, void *context, char *why, size_t whyLength) {
    file f = {.fd = open(path, O_RDONLY | O_CLOEXEC), .offset = offset};
    if (f.fd < 0) {
        snprintf(why, whyLength, "it cannot be opened to read its free-space trees");
        return 1;
    }
    int status = strata_xfs_used(readFile, &f, size, info, emit, context, why, whyLength);
    close(f.fd);
    return status;
}
