// patternfs: a FUSE filesystem serving disks of any size that cost no storage, for Tools/scale-check.
// Files (all SIZE bytes):
//   night0, night1   read-only: 4 KiB blocks alternating data and zero (the worst case for extents); a data
//                    block holds its number and version in a compressible pattern; night1 changes version of
//                    1 data block in 64
//   target           write-only sink: every 4 KiB written is compared with night1's content and thrown away;
//   status           "written N mismatched M" for target
// usage: patternfs MOUNTPOINT SIZE_GIB [fuse options]
#define FUSE_USE_VERSION 31
#include <errno.h>
#include <fuse.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t size;
static atomic_uint_fast64_t written, mismatched;

static int version(uint64_t block, int night) { return night == 1 && ((block * 0x9E3779B97F4A7C15ull) >> 58) == 0; }

// The content of 4 KiB block `block` on `night`.
static void fill(uint64_t block, int night, unsigned char *out) {
    if (block & 1) {
        memset(out, 0, 4096);
        return;
    }
    uint64_t v = (uint64_t)version(block, night);
    uint64_t words[8] = {block, v, block * 31 + v, ~block, block ^ 0x5555, v * 77, block >> 3, 0x5452415441ull};
    for (int i = 0; i < 4096; i += 64) memcpy(out + i, words, 64);
    memcpy(out + 2048, &block, 8);
}

static int which(const char *path) {
    if (!strcmp(path, "/night0")) return 0;
    if (!strcmp(path, "/night1")) return 1;
    if (!strcmp(path, "/target")) return 2;
    if (!strcmp(path, "/status")) return 3;
    return -1;
}

static int pf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    memset(st, 0, sizeof *st);
    if (!strcmp(path, "/")) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        return 0;
    }
    int w = which(path);
    if (w < 0) return -ENOENT;
    st->st_mode = S_IFREG | (w == 2 ? 0600 : 0400);
    st->st_nlink = 1;
    st->st_size = w == 3 ? 64 : (off_t)size;
    return 0;
}

static int pf_readdir(const char *path, void *buf, fuse_fill_dir_t add, off_t off, struct fuse_file_info *fi, enum fuse_readdir_flags f) {
    (void)off; (void)fi; (void)f;
    if (strcmp(path, "/")) return -ENOENT;
    const char *names[] = {".", "..", "night0", "night1", "target", "status"};
    for (int i = 0; i < 6; i++) add(buf, names[i], NULL, 0, 0);
    return 0;
}

static int pf_open(const char *path, struct fuse_file_info *fi) {
    int w = which(path);
    if (w < 0) return -ENOENT;
    fi->direct_io = 1;  // no page cache: every read is served here
    return 0;
}

static int pf_read(const char *path, char *buf, size_t n, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    int w = which(path);
    if (w == 3) {
        char s[64];
        int len = snprintf(s, sizeof s, "written %llu mismatched %llu\n", (unsigned long long)written, (unsigned long long)mismatched);
        if (off >= len) return 0;
        if ((size_t)(len - off) < n) n = len - off;
        memcpy(buf, s + off, n);
        return (int)n;
    }
    if (w < 0 || w == 2) return -EACCES;
    if ((uint64_t)off >= size) return 0;
    if ((uint64_t)off + n > size) n = size - off;
    unsigned char block[4096];
    size_t done = 0;
    while (done < n) {
        uint64_t at = off + done, b = at / 4096, in = at % 4096;
        size_t k = 4096 - in < n - done ? 4096 - in : n - done;
        if (in == 0 && k == 4096) {
            fill(b, w, (unsigned char *)buf + done);
        } else {
            fill(b, w, block);
            memcpy(buf + done, block + in, k);
        }
        done += k;
    }
    return (int)n;
}

static int pf_write(const char *path, const char *buf, size_t n, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    if (which(path) != 2) return -EACCES;
    unsigned char block[4096];
    size_t done = 0;
    while (done < n) {
        uint64_t at = off + done, b = at / 4096, in = at % 4096;
        size_t k = 4096 - in < n - done ? 4096 - in : n - done;
        fill(b, 1, block);
        if (memcmp(block + in, buf + done, k)) atomic_fetch_add(&mismatched, k);
        done += k;
    }
    atomic_fetch_add(&written, n);
    return (int)n;
}

static int pf_truncate(const char *path, off_t len, struct fuse_file_info *fi) {
    (void)fi;
    return which(path) == 2 && (uint64_t)len == size ? 0 : -EPERM;
}

static int pf_fsync(const char *path, int datasync, struct fuse_file_info *fi) { (void)path; (void)datasync; (void)fi; return 0; }

static const struct fuse_operations ops = {
    .getattr = pf_getattr, .readdir = pf_readdir, .open = pf_open, .read = pf_read, .write = pf_write,
    .truncate = pf_truncate, .fsync = pf_fsync,
};

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: patternfs MOUNTPOINT SIZE_GIB [fuse options]\n");
        return 64;
    }
    size = (uint64_t)strtoull(argv[2], NULL, 10) << 30;
    char *args[16] = {argv[0], argv[1]};
    int n = 2;
    for (int i = 3; i < argc && n < 15; i++) args[n++] = argv[i];
    return fuse_main(n, args, &ops, NULL);
}
