"""Rank 1 sends rank 0 one message and exits; rank 2 sends one a second later and exits.
Rank 0 takes both with recv_any, then calls it again: nobody is left to send."""

import time

import numpy as np

import ringdist as rd

g = rd.init()
r = g.rank()
if r == 1:
    rd.send(np.array([1]), 0)
elif r == 2:
    time.sleep(1.0)
    rd.send(np.array([2]), 0)
else:
    got = [rd.recv_any(1, np.int64) for _ in range(2)]
    print("got", [(src, int(x[0])) for src, x in got], flush=True)
    began = time.monotonic()
    try:
        rd.recv_any(1, np.int64)
        print("returned", flush=True)
    except rd.RingError as exc:
        print(f"raised {type(exc).__name__} after {time.monotonic() - began:.1f} s: {exc}", flush=True)
