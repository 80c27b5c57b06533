"""Each rank forces the all_sum algorithm given for its rank: `per_rank_algo.py NAME0 NAME1 ...`.

Rank r sets RINGDIST_ALGO=all_sum:NAMEr before init, then runs one all_sum of 1000 float64
and prints `ok <sum>` or `raised <Type>: <message>`.
"""
import os
import sys

import numpy as np

rank = int(os.environ["RINGDIST_RANK"])
os.environ["RINGDIST_ALGO"] = f"all_sum:{sys.argv[1 + rank]}"

import ringdist as rd  # noqa: E402

g = rd.init()
try:
    out = rd.all_sum(np.ones(1000) * (rank + 1), timeout=20)
    print(f"ok {out[0]:g}", flush=True)
except rd.RingError as exc:
    print(f"raised {type(exc).__name__}: {exc}", flush=True)
