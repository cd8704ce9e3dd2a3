// See include/CExt2fs.h.
#include "CExt2fs.h"

#include <ext2fs/ext2fs.h>
#include <stdio.h>
#include <string.h>

static int refuse(ext2_filsys fs, char *why, size_t n, const char *text) {
    snprintf(why, n, "%s", text);
    if (fs) ext2fs_close_free(&fs);
    return 1;
}

int strata_ext2_used(const char *path, uint64_t offset, strata_ext2_info *info, strata_ext2_emit emit, void *context,
                     char *why, size_t whyLength) {
    char options[64];
    snprintf(options, sizeof options, "offset=%llu", (unsigned long long)offset);
    ext2_filsys fs = NULL;
    // Read-only (no EXT2_FLAG_RW); checksums checked (a damaged descriptor fails the open).
    errcode_t err = ext2fs_open2(path, options, EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs);
    if (err) {
        char text[256];
        snprintf(text, sizeof text, "libext2fs cannot open it (%s)", error_message(err));
        return refuse(NULL, why, whyLength, text);
    }
    struct ext2_super_block *sb = fs->super;
    if (ext2fs_has_feature_journal_needs_recovery(sb))
        return refuse(fs, why, whyLength, "it needs journal recovery (mounted, or not cleanly unmounted), so its bitmaps may be stale");
    if (!(sb->s_state & EXT2_VALID_FS) || (sb->s_state & EXT2_ERROR_FS))
        return refuse(fs, why, whyLength, "it is not marked clean (mounted, or errors found), so its bitmaps may be stale");
    if (fs->cluster_ratio_bits != 0)
        return refuse(fs, why, whyLength, "it uses bigalloc clusters, which Strata does not map yet");
    err = ext2fs_read_block_bitmap(fs);
    if (err) {
        char text[256];
        snprintf(text, sizeof text, "its block bitmaps cannot be read (%s)", error_message(err));
        return refuse(fs, why, whyLength, text);
    }
    blk64_t first = sb->s_first_data_block, last = ext2fs_blocks_count(sb) - 1;
    info->blockSize = fs->blocksize;
    info->blocks = ext2fs_blocks_count(sb);
    info->usedBlocks = first;  // blocks before the first data block (the boot block of a 1 KiB filesystem)
    if (first > 0) emit(context, 0, (uint64_t)first * fs->blocksize);
    // Every group's free blocks counted from the bitmap must equal its descriptor's count: a bitmap that
    // disagrees is not trusted.
    for (dgrp_t g = 0; g < fs->group_desc_count; g++) {
        blk64_t start = ext2fs_group_first_block2(fs, g), end = ext2fs_group_last_block2(fs, g);
        uint64_t used = 0;
        blk64_t at = start;
        while (at <= end) {
            blk64_t runStart, runEnd;
            if (ext2fs_find_first_set_block_bitmap2(fs->block_map, at, end, &runStart) != 0) break;
            if (ext2fs_find_first_zero_block_bitmap2(fs->block_map, runStart, end, &runEnd) != 0) runEnd = end + 1;
            used += runEnd - runStart;
            emit(context, (uint64_t)runStart * fs->blocksize, (uint64_t)(runEnd - runStart) * fs->blocksize);
            at = runEnd;
        }
        uint64_t size = end - start + 1;
        if (size - used != ext2fs_bg_free_blocks_count(fs, g)) {
            char text[256];
            snprintf(text, sizeof text, "the bitmap of its group %u counts %llu free blocks, its descriptor %u", g,
                     (unsigned long long)(size - used), ext2fs_bg_free_blocks_count(fs, g));
            return refuse(fs, why, whyLength, text);
        }
        info->usedBlocks += used;
    }
    (void)last;
    ext2fs_close_free(&fs);
    return 0;
}
