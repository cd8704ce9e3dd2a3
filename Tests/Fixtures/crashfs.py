#!/usr/bin/python3
"""A disk that loses power on cue, for tests: an in-memory filesystem served through FUSE that keeps what is
written in memory and makes it durable only the way a real disk does. A file's bytes are durable once the file
is fsynced; a directory's entries (a new name, a rename, a removal) once the directory is fsynced. A power cut
drops everything that is not durable: a file's bytes go back to what its last fsync saw (nothing, if none), a
directory's entries to what its last fsync saw, and files no durable entry names are gone.

The test drives it through the control file MOUNTPOINT/.crashfs. Writing a command:
    sync                 make everything durable now (after the test has set up a chain)
    arm steps N          stop at the Nth durability step from now: an fsync of a file or a directory, a rename,
                         an unlink (counted from 1); `arm writes N` counts write calls instead
    crash powercut       the stopped step fails (EIO), everything not durable is dropped, and every further
                         change fails (EIO) until `resume`: the machine lost power at that step
    crash kill           the same, but nothing is dropped: the process died, the page cache survived
    resume               serve normally again; disarm
    count                set the counters to zero
Reading it gives one line: `state=running|stopped|crashed steps=N writes=N at=OP PATH`. While stopped, every
change waits (the machine stands still at that step) until the test has killed the process and sent `crash`.

Runs in the foreground until unmounted (fusermount -u MOUNTPOINT). Needs python3-fusepy.
    crashfs.py MOUNTPOINT
"""
import errno
import stat
import sys
import threading
import time

from fusepy import FUSE, FuseOSError, Operations

CONTROL = "/.crashfs"


class Inode:
    def __init__(self, ino, kind, mode):
        self.ino = ino
        self.kind = kind  # "file" or "dir"
        self.mode = mode
        self.data = bytearray()
        self.durable = b""  # the bytes the last fsync saw
        self.entries = {}  # for a directory: name -> ino, as it is now
        self.durable_entries = {}  # as its last fsync saw them


class CrashFS(Operations):
    def __init__(self):
        self.mu = threading.RLock()  # the data
        self.cv = threading.Condition()  # the machine's state
        self.state = "running"
        self.armed = None  # ("steps" | "writes", N)
        self.steps = 0
        self.writes = 0
        self.at = "-"
        self.inodes = {}
        self.next_ino = 1
        self.root = self.new_inode("dir", 0o755)
        self.handles = {}
        self.next_fh = 1

    # MARK: model

    def new_inode(self, kind, mode):
        n = Inode(self.next_ino, kind, mode)
        self.inodes[n.ino] = n
        self.next_ino += 1
        return n

    def lookup(self, path):
        node = self.root
        for part in [p for p in path.split("/") if p]:
            if node.kind != "dir" or part not in node.entries:
                raise FuseOSError(errno.ENOENT)
            node = self.inodes[node.entries[part]]
        return node

    def parent(self, path):
        head, _, name = path.rstrip("/").rpartition("/")
        return self.lookup(head or "/"), name

    def make_durable(self):
        for n in self.inodes.values():
            n.durable = bytes(n.data)
            n.durable_entries = dict(n.entries)

    def power_cut(self):
        alive = set()

        def walk(n):
            alive.add(n.ino)
            if n.kind == "dir":
                n.entries = {k: v for k, v in n.durable_entries.items() if v in self.inodes}
                for child in n.entries.values():
                    if child not in alive:
                        walk(self.inodes[child])
            else:
                n.data = bytearray(n.durable)

        walk(self.root)
        self.inodes = {k: v for k, v in self.inodes.items() if k in alive}
        self.handles = {}

    # MARK: the machine

    def gate(self, kind, what):
        """Called before every change: counts it, stops at the armed one, fails every change after a crash."""
        with self.cv:
            while self.state == "stopped":
                self.cv.wait()
            if self.state == "crashed":
                raise FuseOSError(errno.EIO)
            if kind == "step":
                self.steps += 1
            elif kind == "write":
                self.writes += 1
            if self.armed and self.armed[0] == kind + "s" and (self.steps if kind == "step" else self.writes) >= self.armed[1]:
                self.armed = None
                self.state = "stopped"
                self.at = what
                self.cv.notify_all()
                while self.state == "stopped":
                    self.cv.wait()
                if self.state == "crashed":
                    raise FuseOSError(errno.EIO)

    def control(self, text):
        words = text.split()
        with self.cv:
            if words[:1] == ["sync"]:
                with self.mu:
                    self.make_durable()
            elif words[:1] == ["arm"]:
                self.armed = (words[1], int(words[2]))
                self.steps = self.writes = 0
                self.at = "-"
            elif words[:1] == ["crash"]:
                if words[1:2] == ["powercut"]:
                    with self.mu:
                        self.power_cut()
                self.state = "crashed"
                self.cv.notify_all()
            elif words[:1] == ["resume"]:
                self.state = "running"
                self.armed = None
                self.cv.notify_all()
            elif words[:1] == ["count"]:
                self.steps = self.writes = 0
            else:
                raise FuseOSError(errno.EINVAL)

    def status(self):
        with self.cv:
            return f"state={self.state} steps={self.steps} writes={self.writes} at={self.at}\n".encode()

    # MARK: FUSE operations

    def getattr(self, path, fh=None):
        if path == CONTROL:
            return dict(st_mode=stat.S_IFREG | 0o666, st_nlink=1, st_size=4096)
        with self.mu:
            n = self.inodes.get(self.handles[fh]) if fh in self.handles else None
            n = n or self.lookup(path)
            if n.kind == "dir":
                return dict(st_mode=stat.S_IFDIR | n.mode, st_nlink=2, st_size=4096)
            return dict(st_mode=stat.S_IFREG | n.mode, st_nlink=1, st_size=len(n.data), st_blocks=(len(n.data) + 511) // 512)

    def readdir(self, path, fh):
        with self.mu:
            n = self.lookup(path)
            return [".", ".."] + sorted(n.entries) + ([CONTROL[1:]] if path == "/" else [])

    def opendir(self, path):
        with self.mu:
            self.lookup(path)
        return 0

    def statfs(self, path):
        return dict(f_bsize=4096, f_frsize=4096, f_blocks=1 << 24, f_bfree=1 << 23, f_bavail=1 << 23, f_files=1 << 20, f_ffree=1 << 20, f_namemax=255)

    def access(self, path, amode):
        if path != CONTROL:
            with self.mu:
                self.lookup(path)
        return 0

    def mkdir(self, path, mode):
        self.gate("change", f"mkdir {path}")
        with self.mu:
            p, name = self.parent(path)
            if name in p.entries:
                raise FuseOSError(errno.EEXIST)
            p.entries[name] = self.new_inode("dir", mode & 0o7777).ino

    def rmdir(self, path):
        self.gate("step", f"rmdir {path}")
        with self.mu:
            p, name = self.parent(path)
            n = self.lookup(path)
            if n.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del p.entries[name]

    def create(self, path, mode, fi=None):
        self.gate("change", f"create {path}")
        with self.mu:
            p, name = self.parent(path)
            if name in p.entries:
                n = self.inodes[p.entries[name]]
            else:
                n = self.new_inode("file", mode & 0o7777)
                p.entries[name] = n.ino
            return self.handle(n)

    def handle(self, n):
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = n.ino
        return fh

    def open(self, path, flags):
        if path == CONTROL:
            return 0
        if flags & 0o1000:  # O_TRUNC; the gate is passed before the data's lock is taken, never while holding it
            self.gate("change", f"truncate {path}")
        with self.mu:
            n = self.lookup(path)
            if flags & 0o1000:
                n.data = bytearray()
            return self.handle(n)

    def node(self, path, fh):
        n = self.inodes.get(self.handles.get(fh, -1))
        return n if n is not None else self.lookup(path)

    def read(self, path, size, offset, fh):
        if path == CONTROL:
            return self.status()[offset:offset + size]
        with self.mu:
            n = self.node(path, fh)
            return bytes(n.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        if path == CONTROL:
            self.control(data.decode())
            return len(data)
        self.gate("write", f"write {path} at {offset}")
        with self.mu:
            n = self.node(path, fh)
            if offset > len(n.data):
                n.data.extend(b"\0" * (offset - len(n.data)))
            n.data[offset:offset + len(data)] = data
            return len(data)

    def truncate(self, path, length, fh=None):
        if path == CONTROL:
            return 0
        self.gate("change", f"truncate {path}")
        with self.mu:
            n = self.node(path, fh)
            if length < len(n.data):
                del n.data[length:]
            else:
                n.data.extend(b"\0" * (length - len(n.data)))

    def fsync(self, path, datasync, fh):
        if path == CONTROL:
            return 0
        self.gate("step", f"fsync {path}")
        with self.mu:
            n = self.node(path, fh)
            n.durable = bytes(n.data)

    def fsyncdir(self, path, datasync, fh):
        self.gate("step", f"fsyncdir {path}")
        with self.mu:
            n = self.lookup(path)
            n.durable_entries = dict(n.entries)

    def rename(self, old, new):
        self.gate("step", f"rename {old} {new}")
        with self.mu:
            op, oname = self.parent(old)
            np, nname = self.parent(new)
            if oname not in op.entries:
                raise FuseOSError(errno.ENOENT)
            np.entries[nname] = op.entries.pop(oname)

    def unlink(self, path):
        self.gate("step", f"unlink {path}")
        with self.mu:
            p, name = self.parent(path)
            if name not in p.entries:
                raise FuseOSError(errno.ENOENT)
            del p.entries[name]

    def chmod(self, path, mode):
        with self.mu:
            self.lookup(path).mode = mode & 0o7777

    def chown(self, path, uid, gid):
        return 0

    def utimens(self, path, times=None):
        return 0

    def release(self, path, fh):
        with self.mu:
            self.handles.pop(fh, None)

    def flush(self, path, fh):
        return 0


def main():
    # hard_remove: an unlink is an unlink (no .fuse_hidden rename deferred to the last close); open handles keep
    # reading the inode, as on a real filesystem.
    FUSE(CrashFS(), sys.argv[1], foreground=True, direct_io=True, hard_remove=True, attr_timeout=0, entry_timeout=0, negative_timeout=0)


if __name__ == "__main__":
    main()
