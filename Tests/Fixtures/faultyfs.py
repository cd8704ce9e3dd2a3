#!/usr/bin/python3
"""A failing disk for tests: serves BACKING as MOUNTPOINT/disk through FUSE, read-only, and answers EIO to every
read that touches one of the byte ranges listed in BADLIST ("offset length" per line). A line "offset length
stall" makes a read touching that range wait instead (making the file MOUNTPOINT.stalled first, for the test to
see), until the file MOUNTPOINT.release exists, then answer it (a disk that hangs: a test holds its reader there
for as long as it needs). Runs in the foreground until
unmounted (fusermount -u MOUNTPOINT). Needs python3-fusepy.

    faultyfs.py BACKING BADLIST MOUNTPOINT
"""
import bisect
import errno
import os
import stat
import sys
import time

from fusepy import FUSE, FuseOSError, Operations


class FaultyDisk(Operations):
    def __init__(self, backing, bad, stalls, release):
        self.fd = os.open(backing, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.bad = sorted(bad)
        self.starts = [s for s, _ in self.bad]
        self.stalls = stalls
        self.release = release + ".release"
        self.stalled = release + ".stalled"

    def getattr(self, path, fh=None):
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == "/disk":
            return dict(st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=self.size)
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "disk"]

    def open(self, path, flags):
        if path != "/disk":
            raise FuseOSError(errno.ENOENT)
        return 0

    def read(self, path, size, offset, fh):
        # The ranges are sorted and disjoint: only the last one starting before the read's end can touch it.
        i = bisect.bisect_left(self.starts, offset + size)
        if i > 0 and self.bad[i - 1][1] > offset:
            raise FuseOSError(errno.EIO)
        if any(s < offset + size and offset < e for s, e in self.stalls):
            open(self.stalled, "w").close()
            while not os.path.exists(self.release):
                time.sleep(0.01)
        return os.pread(self.fd, size, offset)


def main():
    backing, badlist, mountpoint = sys.argv[1:4]
    bad, stalls = [], []
    with open(badlist) as f:
        for line in f:
            words = line.split()
            if words:
                s, n = int(words[0]), int(words[1])
                (stalls if words[2:] == ["stall"] else bad).append((s, s + n))
    merged = []
    for s, e in sorted(bad):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    disk = FaultyDisk(backing, merged, stalls, mountpoint.rstrip("/"))
    FUSE(disk, mountpoint, foreground=True, ro=True, direct_io=True, allow_other=True, nothreads=False)


if __name__ == "__main__":
    main()
