"""Collectives and messages that really wait, under a long or unlimited timeout.

usage: long_timeouts.py TIMEOUT|default
TIMEOUT is passed as every call's `timeout=` ("default": none, so RINGDIST_TIMEOUT
applies). Rank 0 arrives late at each call, so the others block in the kernel for a
while; every result is checked, and rank 0 prints "ok" when all hold.
"""
import sys
import time

import numpy as np

import ringdist as rd

arg = sys.argv[1]
kw = {} if arg == "default" else {"timeout": float(arg)}
g = rd.init()
r, n = g.rank(), g.size()


def late() -> None:
    if r == 0:
        time.sleep(0.3)


x = np.arange(1000, dtype=np.int64) + r
late()
assert np.array_equal(rd.all_gather(x, **kw), np.concatenate([np.arange(1000) + q for q in range(n)]))
late()
assert np.array_equal(rd.all_sum(x, **kw), np.arange(1000) * n + n * (n - 1) // 2)
big = np.full(1 << 20, r, dtype=np.float32)  # the ring, not the direct path
late()
assert np.array_equal(rd.all_sum(big, **kw), np.full(1 << 20, n * (n - 1) / 2, dtype=np.float32))
late()
rd.barrier(**kw)
sub = g.split(color=0)
late()
assert np.array_equal(rd.all_max(x, group=sub, **kw), np.arange(1000) + n - 1)
if r == 0:
    time.sleep(0.3)
    rd.send(x, 1, **kw)
elif r == 1:
    assert np.array_equal(rd.recv(x.shape, x.dtype, 0, **kw), np.arange(1000))
late()
rd.barrier(**kw)
if r == 0:
    print("ok", flush=True)
