// See include/CNtfs.h.
#include "CNtfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ntfs-3g/types.h>
#include <ntfs-3g/attrib.h>
#include <ntfs-3g/device.h>
#include <ntfs-3g/inode.h>
#include <ntfs-3g/layout.h>
#include <ntfs-3g/logfile.h>
#include <ntfs-3g/logging.h>
#include <ntfs-3g/volume.h>

// The volume is `size` bytes at `base` of a file or device: libntfs-3g reads it through these operations, which
// add the offset (its own Unix operations open a whole device) and refuse every write.
typedef struct {
    int fd;
    uint64_t base, size;
    int64_t position;
    const char *path;
} window;

static int w_open(struct ntfs_device *dev, int flags) {
    window *w = dev->d_private;
    if ((flags & O_ACCMODE) != O_RDONLY) { errno = EROFS; return -1; }
    w->fd = open(w->path, O_RDONLY | O_CLOEXEC);
    if (w->fd < 0) return -1;
    w->position = 0;
    NDevSetOpen(dev);
    NDevSetReadOnly(dev);
    return 0;
}

static int w_close(struct ntfs_device *dev) {
    window *w = dev->d_private;
    NDevClearOpen(dev);
    int r = close(w->fd);
    w->fd = -1;
    return r;
}

static s64 w_seek(struct ntfs_device *dev, s64 offset, int whence) {
    window *w = dev->d_private;
    s64 to = whence == SEEK_SET ? offset : whence == SEEK_CUR ? w->position + offset : (s64)w->size + offset;
    if (to < 0) { errno = EINVAL; return -1; }
    w->position = to;
    return to;
}

static s64 w_pread(struct ntfs_device *dev, void *buf, s64 count, s64 offset) {
    window *w = dev->d_private;
    if (offset < 0 || count < 0) { errno = EINVAL; return -1; }
    if ((uint64_t)offset >= w->size) return 0;
    if ((uint64_t)(offset + count) > w->size) count = (s64)(w->size - (uint64_t)offset);
    s64 done = 0;
    while (done < count) {
        ssize_t n = pread(w->fd, (char *)buf + done, (size_t)(count - done), (off_t)(w->base + (uint64_t)offset + (uint64_t)done));
        if (n < 0) { if (errno == EINTR) continue; return done > 0 ? done : -1; }
        if (n == 0) break;
        done += n;
    }
    return done;
}

static s64 w_read(struct ntfs_device *dev, void *buf, s64 count) {
    window *w = dev->d_private;
    s64 n = w_pread(dev, buf, count, w->position);
    if (n > 0) w->position += n;
    return n;
}

static s64 w_write(struct ntfs_device *dev, const void *buf, s64 count) {
    (void)dev; (void)buf; (void)count;
    errno = EROFS;
    return -1;
}

static s64 w_pwrite(struct ntfs_device *dev, const void *buf, s64 count, s64 offset) {
    (void)offset;
    return w_write(dev, buf, count);
}

static int w_sync(struct ntfs_device *dev) { (void)dev; return 0; }

static int w_stat(struct ntfs_device *dev, struct stat *st) {
    window *w = dev->d_private;
    if (fstat(w->fd, st) != 0) return -1;
    st->st_mode = (st->st_mode & ~S_IFMT) | S_IFREG;
    st->st_size = (off_t)w->size;
    return 0;
}

static int w_ioctl(struct ntfs_device *dev, unsigned long request, void *argp) {
    (void)dev; (void)request; (void)argp;
    errno = ENOTTY;
    return -1;
}

static struct ntfs_device_operations window_ops = {
    .open = w_open, .close = w_close, .seek = w_seek, .read = w_read, .write = w_write,
    .pread = w_pread, .pwrite = w_pwrite, .sync = w_sync, .stat = w_stat, .ioctl = w_ioctl,
};

static int refuse(ntfs_volume *vol, char *why, size_t n, const char *text) {
    snprintf(why, n, "%s", text);
    if (vol) ntfs_umount(vol, FALSE);
    return 1;
}

/// Whether every cluster of `na`'s runs is marked used in the bitmap; -1 where the bitmap cannot be read. The
/// bitmap's bytes for each run are read 4 KiB (32768 clusters) at a time, not a byte a cluster.
static int runs_marked(ntfs_volume *vol, ntfs_attr *na) {
    if (ntfs_attr_map_whole_runlist(na) != 0) return -1;
    u8 bytes[4096];
    for (runlist_element *rl = na->rl; rl && rl->length; rl++) {
        if (rl->lcn < 0) continue;  // a hole or the runlist's end
        for (s64 lcn = rl->lcn, end = rl->lcn + rl->length; lcn < end;) {
            s64 first = lcn >> 3, count = ((end - 1) >> 3) - first + 1;
            if (count > (s64)sizeof bytes) count = sizeof bytes;
            if (ntfs_attr_pread(vol->lcnbmp_na, first, count, bytes) != count) return -1;
            for (; lcn < end && (lcn >> 3) < first + count; lcn++) {
                if (!(bytes[(lcn >> 3) - first] & (1 << (lcn & 7)))) return 0;
            }
        }
    }
    return 1;
}

int strata_ntfs_used(const char *path, uint64_t offset, uint64_t size, strata_ntfs_info *info, strata_ntfs_emit emit,
                     void *context, char *why, size_t whyLength) {
    // libntfs-3g logs to stderr by default; its words are not the capture's.
    ntfs_log_set_handler(ntfs_log_handler_null);
    window *w = calloc(1, sizeof *w);
    if (!w) return refuse(NULL, why, whyLength, "no memory for libntfs-3g");
    *w = (window){.fd = -1, .base = offset, .size = size, .position = 0, .path = path};
    struct ntfs_device *dev = ntfs_device_alloc(path, 0, &window_ops, w);
    if (!dev) { free(w); return refuse(NULL, why, whyLength, "libntfs-3g cannot make a device for it"); }
    ntfs_volume *vol = ntfs_device_mount(dev, NTFS_MNT_RDONLY);
    if (!vol) {
        char text[256];
        snprintf(text, sizeof text, "libntfs-3g cannot open it (%s)", strerror(errno));
        ntfs_device_free(dev);
        free(w);
        return refuse(NULL, why, whyLength, text);
    }
    // From here ntfs_umount closes and frees the device; the window is freed after it.
    int status = 1;
    if (ntfs_volume_check_hiberfile(vol, 0) != 0) {
        status = refuse(vol, why, whyLength, errno == EPERM
            ? "Windows left it hibernated or by Fast Startup, so its bitmap may not be the disk's"
            : "its hiberfil.sys cannot be read, so it may be hibernated");
        goto out;
    }
    if (le16_to_cpu(vol->flags) & le16_to_cpu(VOLUME_IS_DIRTY)) {
        status = refuse(vol, why, whyLength, "it is marked dirty (not cleanly unmounted; chkdsk has not run), so its bitmap may be stale");
        goto out;
    }
    ntfs_inode *log = ntfs_inode_open(vol, FILE_LogFile);
    ntfs_attr *log_na = log ? ntfs_attr_open(log, AT_DATA, AT_UNNAMED, 0) : NULL;
    RESTART_PAGE_HEADER *rp = NULL;
    BOOL clean = log_na && ntfs_check_logfile(log_na, &rp) && ntfs_is_logfile_clean(log_na, rp);
    free(rp);
    if (log_na) ntfs_attr_close(log_na);
    if (log) ntfs_inode_close(log);
    if (!clean) {
        status = refuse(vol, why, whyLength, "its $LogFile is not clean (Windows did not shut it down cleanly), so its bitmap may be stale");
        goto out;
    }
    s64 clusters = vol->nr_clusters, bytes = (clusters + 7) >> 3;
    if (vol->lcnbmp_na->data_size < bytes) {
        status = refuse(vol, why, whyLength, "its $Bitmap is shorter than the volume's clusters");
        goto out;
    }
    // The bitmap must mark used what the volume's own metadata occupies: the boot sector's cluster, $MFT,
    // $MFTMirr and $Bitmap itself.
    int marked = runs_marked(vol, vol->mft_na);
    if (marked == 1) marked = runs_marked(vol, vol->mftmirr_na);
    if (marked == 1) marked = runs_marked(vol, vol->lcnbmp_na);
    u8 first = 0;
    if (marked == 1 && (ntfs_attr_pread(vol->lcnbmp_na, 0, 1, &first) != 1 || !(first & 1))) marked = 0;
    if (marked != 1) {
        status = refuse(vol, why, whyLength, marked < 0 ? "its $Bitmap cannot be read"
            : "its $Bitmap does not mark used the clusters of its own metadata ($Boot, $MFT, $MFTMirr, $Bitmap)");
        goto out;
    }
    uint64_t cs = vol->cluster_size, used = 0;
    const s64 chunk = 1 << 20;
    u8 *buf = malloc((size_t)chunk);
    if (!buf) { status = refuse(vol, why, whyLength, "no memory for its $Bitmap"); goto out; }
    s64 runStart = -1;
    for (s64 at = 0; at < bytes; at += chunk) {
        s64 want = bytes - at < chunk ? bytes - at : chunk;
        if (ntfs_attr_pread(vol->lcnbmp_na, at, want, buf) != want) {
            free(buf);
            status = refuse(vol, why, whyLength, "its $Bitmap cannot be read");
            goto out;
        }
        for (s64 i = 0; i < want; i++) {
            u8 b = buf[i];
            if ((b == 0xFF && runStart >= 0) || (b == 0 && runStart < 0)) continue;
            for (int bit = 0; bit < 8; bit++) {
                s64 lcn = ((at + i) << 3) + bit;
                if (lcn >= clusters) break;
                if (b & (1 << bit)) {
                    if (runStart < 0) runStart = lcn;
                } else if (runStart >= 0) {
                    emit(context, (uint64_t)runStart * cs, (uint64_t)(lcn - runStart) * cs);
                    used += (uint64_t)(lcn - runStart);
                    runStart = -1;
                }
            }
        }
    }
    if (runStart >= 0) {
        emit(context, (uint64_t)runStart * cs, (uint64_t)(clusters - runStart) * cs);
        used += (uint64_t)(clusters - runStart);
    }
    free(buf);
    info->clusterSize = cs;
    info->clusters = (uint64_t)clusters;
    info->usedClusters = used;
    ntfs_umount(vol, FALSE);
    status = 0;
out:
    free(w);
    return status;
}
