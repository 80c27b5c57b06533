"""Rank 4 leaves (os._exit) at its third exchange or run of the group's first call of a kind,
while links to it are still to be opened; the others print how long their call took and how it
ended (`<rank> ended after <s>s: <Type or returned>: <message>`).

usage: gone_mid_first_call.py all_to_all|all_to_all_small|scatter|gather|all_gather_object
"""
import os
import sys
import time

import numpy as np

import ringdist as rd
from ringdist import comm

case = sys.argv[1]
g = rd.init()
r, n = g.rank(), g.size()
if r == 4:
    calls = [0]
    exchange, run = comm.Comm.exchange, comm.Comm.run

    def leave_at_third(real):
        def wrapped(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 3:
                os._exit(0)
            return real(self, *args, **kwargs)
        return wrapped

    comm.Comm.exchange, comm.Comm.run = leave_at_third(exchange), leave_at_third(run)
start = time.monotonic()
try:
    if case == "all_to_all":  # pairwise exchange
        rd.all_to_all(np.ones((n * 9000, 2)), timeout=20)
    elif case == "all_to_all_small":  # Bruck
        rd.all_to_all(np.ones((n, 2)), timeout=20)
    elif case == "scatter":
        rd.scatter(np.ones((n * 3, 2)) if r == 0 else None, root=0, timeout=20)
    elif case == "all_gather_object":  # Bruck's steps with each block's fields
        got = rd.all_gather_object({"rank": r}, timeout=20)
        assert [o["rank"] for o in got] == list(range(n)), got  # a rank that returns has every block
    else:
        rd.gather(np.ones(4), root=0, timeout=20)
    ended = "returned: "
except rd.RingError as exc:
    ended = f"{type(exc).__name__}: {exc}"
print(f"{r} ended after {time.monotonic() - start:.2f}s: {ended}", flush=True)
