"""Forms the world from whatever environment it finds, then checks all_gather, all_sum and split.

usage: world_check.py [BIG]   (BIG: elements of one large float32 all_sum, default 0: skip)
Prints one JSON line: rank, size, who started it, the addresses it listens on, the split's members.
"""
import json
import sys
import time

import numpy as np

import ringdist as rd
import ringdist.world as world

g = rd.init()
r, n = g.rank(), g.size()
got = rd.all_gather(np.array([r, 10 * r], dtype=np.int64))
assert got.tolist() == [v for q in range(n) for v in (q, 10 * q)], got
total = rd.all_sum(np.arange(1000, dtype=np.float64) * (r + 1))
assert np.array_equal(total, np.arange(1000, dtype=np.float64) * (n * (n + 1) // 2)), total[:4]
assert rd.all_max(np.array([r]))[0] == n - 1
sub = g.split(r % 2, key=n - r)  # reversed order inside each half
members = rd.all_gather(np.array([r]), group=sub).tolist()
assert members == sorted((q for q in range(n) if q % 2 == r % 2), reverse=True), members
assert rd.all_sum(np.array([1]), group=sub)[0] == len(members)
time.sleep(0.5)  # under a scheduler rank 0's rendezvous is closed by now: the world must not mind
rd.barrier()
big = int(sys.argv[1]) if len(sys.argv) > 1 else 0
if big:
    x = np.full(big, r + 1, dtype=np.float32)
    assert np.array_equal(rd.all_sum(x), np.full(big, n * (n + 1) // 2, dtype=np.float32))
job = world._job
print(json.dumps({"rank": r, "size": n, "source": job.source if job else None,
                  "addresses": [ip for ip, _ in world._endpoint.addresses] if world._endpoint else [],
                  "split": members}), flush=True)
