"""One collective whose blocks are read straight out of the peers' memory, checked on every rank.

usage: cma_job.py all_gather|all_to_all|all_sum|broadcast|scatter
Prints `<op> by shm-cma ok, peers' processes <pid>,<pid>,...` (this rank's and its peers').
"""
import os
import sys

import numpy as np

import ringdist as rd
from ringdist import tuning

op = sys.argv[1]
g = rd.init()
n, r = g.size(), g.rank()
block = tuning.CMA_BLOCK_MIN // 4 + 3  # float32s per block: just over the threshold
x = np.arange(n * block, dtype=np.float32) + 1000 * r
if op == "all_gather":
    x = x[:block]
    want = np.concatenate([np.arange(block, dtype=np.float32) + 1000 * q for q in range(n)])
elif op == "all_sum":  # exact in float32: every value below 2**24
    want = sum(np.arange(n * block, dtype=np.float32) + 1000 * q for q in range(n))
elif op == "broadcast":  # rank n-1's array
    want = np.arange(n * block, dtype=np.float32) + 1000 * (n - 1)
elif op == "scatter":  # rank n-1's array, twice: a scatter is chosen by the previous one's size
    want = np.arange(r * block, (r + 1) * block, dtype=np.float32) + 1000 * (n - 1)
    assert np.array_equal(rd.scatter(x if r == n - 1 else None, root=n - 1), want)
else:
    want = np.concatenate([np.arange(r * block, (r + 1) * block, dtype=np.float32) + 1000 * q for q in range(n)])
name = tuning.choose(g, op, g.plans["scatter-size"] if op == "scatter" else x.nbytes).name
if op == "broadcast":
    got = rd.broadcast(x, root=n - 1)
elif op == "scatter":
    got = rd.scatter(x if r == n - 1 else None, root=n - 1)
else:
    got = getattr(rd, op)(x)
assert np.array_equal(got, want), (op, r)
assert g.shm is not None and g.shm.pids is not None
pids = sorted([os.getpid()] + list(g.shm.pids.values()))
print(f"{op} by {name} ok, peers' processes {','.join(map(str, pids))}", flush=True)
