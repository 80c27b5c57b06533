"""Whether a group uses shared memory when one rank turns it off (RINGDIST_SHM=0 on rank 1 only).

Prints `shm=<bool>` and `sum ok` after a 1 MiB all_sum gives the right answer.
"""
import os
import sys

if sys.argv[1:] == ["rank1-off"] and os.environ["RINGDIST_RANK"] == "1":
    os.environ["RINGDIST_SHM"] = "0"

import numpy as np  # noqa: E402

import ringdist as rd  # noqa: E402

g = rd.init()
print(f"shm={g.shm is not None}", flush=True)
x = np.full(1 << 18, g.rank() + 1, dtype=np.float32)
assert (rd.all_sum(x) == sum(range(1, g.size() + 1))).all()
print("sum ok", flush=True)
