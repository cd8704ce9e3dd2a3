#include <blkid.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/memfd.h>
/* An anonymous file in memory (memfd): the sparse copy of a point's table and superblocks that libblkid, which
   reads only from a descriptor, is given to probe (StrataIO/DiskProbe.swift). */
static inline int strata_memfd(const char *name) { return (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC); }
