"""Rank 0 calls all_gather where the others call split: a MismatchError on every rank, no hang."""
import signal
import sys
import time

import numpy as np

import ringdist as rd

signal.signal(signal.SIGTERM, lambda *a: None)  # each rank reports, then leaves by itself
g = rd.init()
try:
    if g.rank() == 0:
        rd.all_gather(np.zeros(2, dtype=np.int64))
    else:
        g.split(1)
except rd.MismatchError as exc:
    print(f"MismatchError: {exc}", flush=True)
    time.sleep(1.0)
    sys.exit(3)
print("no error", flush=True)
