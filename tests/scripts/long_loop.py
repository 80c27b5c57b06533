"""A long loop of one collective on large arrays, for fault tests.

usage: long_loop.py all_gather|all_sum|all_to_all [MiB]
Prints `ready pid=<pid>` once running. On any RingError prints
`raised <Type> at <unix time>: <message>` and exits 1. SIGTERM is ignored, so
what a rank prints is its own detection, not the launcher stopping it.
"""
import os
import signal
import sys
import time

import numpy as np

import ringdist as rd

signal.signal(signal.SIGTERM, lambda *a: None)
op = getattr(rd, sys.argv[1])
mib = float(sys.argv[2]) if len(sys.argv) > 2 else 4
g = rd.init()
count = int(mib * (1 << 20)) // 4
x = np.full(count - count % g.size(), g.rank() + 1, dtype=np.float32)  # all_to_all: N equal blocks
op(x)
print(f"ready pid={os.getpid()}", flush=True)
try:
    for _ in range(1_000_000):
        op(x)
except rd.RingError as exc:
    print(f"raised {type(exc).__name__} at {time.time():.3f}: {exc}", flush=True)
    time.sleep(0.3)
    os._exit(1)
