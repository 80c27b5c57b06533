"""Rank 0 sends shape (4,); rank 1 expects (5,): MismatchError on the receiver, naming both."""
import sys

import numpy as np

import ringdist as rd

g = rd.init()
if g.rank() == 0:
    rd.send(np.zeros(4, dtype=np.float32), 1)
    print("sent", flush=True)
else:
    try:
        rd.recv((5,), np.float32, 0)
    except rd.MismatchError as exc:
        print(f"MismatchError: {exc}", flush=True)
        sys.exit(3)
