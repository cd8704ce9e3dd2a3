#!/usr/bin/env python3
"""Writes the 4 KiB blocks that differ between two disk images, concatenated, to OUT: the payload an ideal
incremental must store. `zstd -1` of OUT is the yardstick for Strata's incremental size.
usage: changed-blocks.py OLD NEW OUT [BLOCK=4096]"""
import sys

old, new, out = sys.argv[1:4]
bs = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
chunk = bs * 256
changed = 0
with open(old, "rb") as a, open(new, "rb") as b, open(out, "wb") as o:
    while True:
        x, y = a.read(chunk), b.read(chunk)
        if not x and not y:
            break
        if x == y:
            continue
        for i in range(0, max(len(x), len(y)), bs):
            if x[i:i + bs] != y[i:i + bs]:
                o.write(y[i:i + bs])
                changed += 1
print(changed)
