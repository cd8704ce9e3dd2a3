#!/usr/bin/python3
"""Writes onto TARGET the 4 KiB blocks where NEW differs from OLD (a night of the reference disk applied in
place), so that what tracks writes sees exactly that night's: a file (pwrite, fsync) or an NBD URI (through
libnbd: a QEMU dirty bitmap then marks them). Prints the bytes written.
usage: apply-night.py OLD NEW TARGET [BLOCK=4096]"""
import os
import sys

old, new, target = sys.argv[1:4]
bs = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
chunk = bs * 256
if "://" in target:
    import nbd
    h = nbd.NBD()
    h.connect_uri(target)
    write = lambda data, offset: h.pwrite(data, offset)
    finish = lambda: (h.flush(), h.shutdown())
else:
    fd = os.open(target, os.O_WRONLY)
    write = lambda data, offset: os.pwrite(fd, data, offset)
    finish = lambda: (os.fsync(fd), os.close(fd))
written = 0
offset = 0
with open(old, "rb") as a, open(new, "rb") as b:
    while True:
        x, y = a.read(chunk), b.read(chunk)
        if not y:
            break
        if x != y:
            i = 0
            while i < len(y):
                if x[i:i + bs] != y[i:i + bs]:
                    j = i + bs
                    while j < len(y) and x[j:j + bs] != y[j:j + bs]:
                        j += bs
                    write(y[i:j], offset + i)
                    written += j - i
                    i = j
                else:
                    i += bs
        offset += len(y)
finish()
print(written)
