"""Rank 2 exits mid-job; the others must raise PeerLostError by themselves (not hang).

The survivors ignore SIGTERM, so what they print is their own detection, not the launcher's stop.
"""
import os
import signal
import time

import numpy as np

import ringdist as rd

if os.environ.get("RINGDIST_RANK") != "2":
    signal.signal(signal.SIGTERM, lambda *a: None)  # before anything: the launcher stops us as soon as rank 2 exits
g = rd.init()
r = g.rank()
x = np.ones(1 << 18, dtype=np.float32)
t0 = time.monotonic()
try:
    for i in range(100000):
        rd.all_gather(x)
        if r == 2 and i == 4:
            print("exiting now", flush=True)
            os._exit(7)
except rd.PeerLostError as exc:
    print(f"PeerLostError after {time.monotonic() - t0:.2f}s: {exc}", flush=True)
    time.sleep(1.0)  # exit after rank 2, so the launcher reports rank 2 as the first failure
    print(f"later: {exc}", flush=True)  # by now this rank has heard why rank 2 left
    os._exit(1)
except rd.RingError as exc:
    print(f"other {type(exc).__name__}: {exc}", flush=True)
    os._exit(1)
