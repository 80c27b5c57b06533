"""Hierarchical collectives in a launched job on several hosts: report this rank's place in the
hierarchy, the algorithm the table chose, and digests of results to compare across ranks.

usage: hier_check.py
Prints one JSON line per rank.
"""
import hashlib
import json

import numpy as np

import ringdist as rd
from ringdist import tuning

g = rd.init()
n, r = g.size(), g.rank()
h = g.hierarchy
report = {"rank": r, "hosts": h.hosts if h else None, "host": h.host if h else None,
          "link": bool(h and h.link is not None), "chosen": {}, "ok": {}, "digest": {}}
# Reductions are forced onto the hierarchy (RINGDIST_ALGO, set by the test): the table keeps them flat.
for op, count in (("all_gather", 300_001), ("all_sum", 1_000_003), ("all_max", 70_000), ("all_gather", 5)):
    x = ((np.arange(count) % 1009) * (r + 1)).astype(np.float32)
    got = getattr(rd, op)(x)
    key = f"{op}-{count}"
    if op == "all_gather":
        report["chosen"][key] = tuning.choose(g, op, x.nbytes).name
    parts = [((np.arange(count) % 1009) * (p + 1)).astype(np.float32) for p in range(n)]
    want = {"all_gather": lambda: np.concatenate(parts), "all_sum": lambda: sum(parts),
            "all_max": lambda: np.maximum.reduce(parts)}[op]()
    report["ok"][key] = bool(np.array_equal(got, want))  # small integers: exact in float32
    report["digest"][key] = hashlib.sha256(got.tobytes()).hexdigest()[:16]
print(json.dumps(report), flush=True)
