"""Ranks that disagree on a collective's arguments, or arrive after a peer gave up.

usage: disagree.py CASE
  own_root:   every rank passes its own rank as broadcast's root
  split_root: ranks 0 and 1 pass root 0, the others root 2; if the broadcast returns, 100
              small calls and one large one follow (each rank reports how far it got)
  root_shape: the root (rank 0) passes shape (5,), the others (4,)
  algorithms: ranks 0 and 1 call sum_scatter (the ring), the others all_max (recursive
              doubling on the mesh): each pair reads connections the other pair never writes
  pair_path:  2 ranks, all_sum of 64 KiB; rank 1's world has a direct limit of 0 (set after
              init, which refuses a RINGDIST_DIRECT_MAX that differs), so it exchanges the
              arrays on the ring's connections, rank 0 on the direct one
  unknown_dtype: the root (rank 0) alone imports ml_dtypes and scatters a bfloat16 array,
              whose dtype the other ranks' numpy does not know
  late:       for each op, on a fresh sub-group: rank 0 calls it with timeout=0.5, rank 1
              once rank 0's call has ended (2 ranks); a world barrier, then the sub-group is closed

Each rank prints one `outcome: ...` line per call (`returned` or the exception) and exits 0,
after staying long enough that no peer sees it leave (that would be a PeerLostError by itself).
"""
import sys
import time

import numpy as np

import ringdist as rd

case = sys.argv[1]
g = rd.init()
r = g.rank()
if case == "pair_path" and r == 1:
    g.direct_max = 0
x = np.arange(4, dtype=np.float32) + r


def late() -> None:
    ops = {"broadcast(root=1)": lambda sub, **kw: rd.broadcast(x, root=1, group=sub, **kw),
           "broadcast(root=0)": lambda sub, **kw: rd.broadcast(x, root=0, group=sub, **kw),
           "all_gather": lambda sub, **kw: rd.all_gather(x, group=sub, **kw),
           "all_sum": lambda sub, **kw: rd.all_sum(x, group=sub, **kw),
           "barrier": lambda sub, **kw: rd.barrier(group=sub, **kw)}
    for name, call in ops.items():
        sub = g.split(0)
        t0 = time.monotonic()
        try:
            if r == 0:
                try:
                    call(sub, timeout=0.5)
                finally:
                    rd.send(np.zeros(1), 1)  # over the world group: rank 0's call has ended
            else:
                rd.recv((1,), np.float64, 0)
                call(sub)
            outcome = "returned"
        except rd.RingError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        print(f"{name} outcome after {time.monotonic() - t0:.2f}s: {outcome}", flush=True)
        rd.barrier()
        sub.close()


t0 = time.monotonic()
if case == "late":
    late()
    sys.exit(0)
try:
    if case == "own_root":
        rd.broadcast(x, root=r)
    elif case == "split_root":
        rd.broadcast(x, root=0 if r < 2 else 2)
        for _ in range(100):
            rd.all_sum(x)
        print("100 small calls returned", flush=True)
        rd.all_gather(np.zeros(1 << 19, np.float32))
    elif case == "algorithms":
        if r < 2:
            rd.sum_scatter(np.ones(8, np.int32))
        else:
            rd.all_max(np.ones(8, np.int32))
    elif case == "pair_path":
        rd.all_sum(np.ones(16384, np.float32))
    elif case == "root_shape":
        rd.broadcast(np.zeros(5 if r == 0 else 4, np.float32), root=0)
    elif case == "unknown_dtype":
        if r == 0:
            import ml_dtypes
            rd.scatter(np.ones((4 * g.size(), 3), ml_dtypes.bfloat16), root=0)
        else:
            rd.scatter(None, root=0)
    else:
        raise SystemExit(f"unknown case {case}")
    outcome = "returned"
except rd.RingError as exc:
    outcome = f"{type(exc).__name__}: {exc}"
print(f"outcome after {time.monotonic() - t0:.2f}s: {outcome}", flush=True)
time.sleep(1.5)
