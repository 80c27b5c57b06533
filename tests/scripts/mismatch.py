"""Rank 1 passes a different shape (or dtype); every rank must raise MismatchError.

usage: mismatch.py shape|dtype|op|straddle|path|directions
  straddle: rank 1's array is above RINGDIST_DIRECT_MAX (ring path), the others' below (direct)
  path: rank 1's world takes the ring where the others go direct (its direct limit set to 0
        after init, which refuses a RINGDIST_DIRECT_MAX that differs)
  directions: rank 1 sends 4 MiB blocks both ways round the ring, the others one way (likewise)
"""
import signal
import sys
import time

import numpy as np

import ringdist as rd

signal.signal(signal.SIGTERM, lambda *a: None)  # each rank reports, then leaves by itself
kind = sys.argv[1]
g = rd.init()
r = g.rank()
if kind == "path" and r == 1:
    g.direct_max = 0
if kind == "directions" and r == 1:
    g.both_ways = True
x = np.zeros(4, dtype=np.float32)
if kind not in ("path", "directions"):
    rd.all_gather(x)  # one good collective first
if kind == "directions":
    x = np.zeros(1 << 20, dtype=np.float32)  # 4 MiB blocks: the ring, both ways or one way
if r == 1:
    x = {"shape": np.zeros(5, np.float32), "dtype": np.zeros(4, np.int32), "op": None,
         "straddle": np.zeros(1 << 20, np.float32), "path": x, "directions": x}[kind]
t0 = time.monotonic()
try:
    if kind == "op" and r == 1:
        rd.all_sum(np.zeros(4, np.float32))
    else:
        rd.all_gather(x)
except rd.MismatchError as exc:
    print(f"MismatchError after {time.monotonic() - t0:.2f}s: {exc}", flush=True)
    try:
        rd.all_gather(np.zeros(4, np.float32))
    except rd.GroupBrokenError as again:
        print(f"then GroupBrokenError: {again}", flush=True)
    time.sleep(1.0)  # let every rank report before the launcher stops the job
    sys.exit(3)
print("no error raised", flush=True)
