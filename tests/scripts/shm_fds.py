"""Many small collectives over shared memory, and the open descriptors and maps before and after.

usage: shm_fds.py CALLS
Prints `shm=<bool>`, then `fds <after 100 calls> <after CALLS calls>` and
`maps <after 100> <after CALLS>` (lines of /proc/self/maps naming a memfd) on every rank.
"""
import os
import sys

import numpy as np

import ringdist as rd

calls = int(sys.argv[1])
g = rd.init()
print(f"shm={g.shm is not None}", flush=True)


def counts() -> tuple[int, int]:
    with open("/proc/self/maps") as f:
        maps = sum("memfd:ringdist" in line for line in f)
    return len(os.listdir("/proc/self/fd")), maps


x = np.arange(1024, dtype=np.float32) + g.rank()
first = None
for i in range(calls):
    if i == 100:
        first = counts()
    out = rd.all_gather(x) if i % 2 else rd.all_sum(x)
    assert out.shape in ((1024,), (1024 * g.size(),))
last = counts()
print(f"fds {first[0]} {last[0]}", flush=True)
print(f"maps {first[1]} {last[1]}", flush=True)
