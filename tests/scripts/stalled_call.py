"""Rank 1 stalls for 8 s; rank 0's all_sum must fail after its timeout, however long it may spin.

usage: stalled_call.py TIMEOUT
Rank 0 prints "timed out after S s: <message>" when the call raises RingTimeoutError.
"""
import sys
import time

import numpy as np

import ringdist as rd

timeout = float(sys.argv[1])
g = rd.init()
if g.rank() == 1:
    time.sleep(8)
    sys.exit(0)
start = time.monotonic()
try:
    rd.all_sum(np.ones(16), timeout=timeout)
except rd.RingTimeoutError as exc:
    print(f"timed out after {time.monotonic() - start:.1f} s: {exc}", flush=True)
    sys.exit(3)
sys.exit("no timeout")
