#ifndef STRATA_CURING_SHIM_H
#define STRATA_CURING_SHIM_H
/* liburing.h defines _GNU_SOURCE/_XOPEN_SOURCE before its includes, which changes the shape of fd_set and
   clashes with Swift's Glibc module. Including the system headers first, as Glibc sees them, avoids that. */
#include <sys/types.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <inttypes.h>
#include <time.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <sys/vfs.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/memfd.h>
#include <linux/fsmap.h>
/* The kernel's own io_uring.h first (liburing's copy has the same include guard and then steps aside), so
   that modules which also see it through swift-system's CSystem agree on one definition of io_uring_sqe. */
#include <linux/io_uring.h>
#include <liburing.h>
/* Function-like ioctl macros and _GNU_SOURCE-only flags do not import into Swift; these constants do. */
static const unsigned long strata_BLKGETSIZE64 = BLKGETSIZE64;
static const unsigned long strata_BLKSSZGET = BLKSSZGET;
static const unsigned long strata_BLKZEROOUT = BLKZEROOUT;
static const unsigned long strata_BLKDISCARD = BLKDISCARD;
/* FS_IOC_GETFSMAP's header (192 bytes: flags, counts, the low and high keys) and its records (64 bytes each). */
static const unsigned long strata_FS_IOC_GETFSMAP = FS_IOC_GETFSMAP;
static const int strata_fsmap_head_size = (int)sizeof(struct fsmap_head);
static const int strata_fsmap_size = (int)sizeof(struct fsmap);
static const int strata_O_DIRECT = __O_DIRECT;
static inline int strata_stat(const char *path, struct stat *st) { return stat(path, st); }
/* The filesystem type (statfs f_type) of an open file, or -1 with errno set. */
static inline long strata_fstatfs_type(int fd) {
    struct statfs s;
    if (fstatfs(fd, &s) != 0) return -1;
    return (long)s.f_type;
}
/* fallocate(2) needs _GNU_SOURCE; the system call does not. */
#include <sys/syscall.h>
#include <unistd.h>
static inline int strata_fallocate(int fd, int mode, int64_t offset, int64_t length) {
    return (int)syscall(SYS_fallocate, fd, mode, (off_t)offset, (off_t)length);
}
/* Names the calling thread (prctl is variadic, pthread_setname_np needs _GNU_SOURCE: neither imports). */
#include <sys/prctl.h>
static inline void strata_name_thread(const char *name) { prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0); }
#endif

/* An anonymous file in memory (memfd): a probe's sparse copy of a disk (DiskProbe.swift), a program's output
   (Sys.runProgram). */
static inline int strata_memfd(const char *name) { return (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC); }
