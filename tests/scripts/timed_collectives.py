"""Times all_gather and all_sum of large arrays and checks every result, for the lossy-link test.

usage: timed_collectives.py MIB [REPEATS]
Each rank contributes MIB MiB of int32 (element i of rank r is 4*i + r, so a misplaced or
corrupted block cannot go unnoticed). After one untimed warm-up of each op, each op runs
REPEATS times (default 3), each between barriers; a run's time is the slowest rank's.
Rank 0 prints one JSON line: {"all_gather": [seconds...], "all_sum": [seconds...], ...}.
"""
import json
import sys
import time

import numpy as np

import ringdist as rd

mib = float(sys.argv[1])
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
g = rd.init()
r, n = g.rank(), g.size()
count = int(mib * (1 << 20)) // 4
base = np.arange(count, dtype=np.int32) * 4
x = base + r
want = {
    "all_gather": np.concatenate([base + q for q in range(n)]),
    "all_sum": base * n + n * (n - 1) // 2,
}
times: dict[str, list[float]] = {op: [] for op in want}
for op, expected in want.items():
    fn = getattr(rd, op)
    for i in range(repeats + 1):
        rd.barrier()
        start = time.perf_counter()
        got = fn(x)
        took = time.perf_counter() - start
        if not np.array_equal(got, expected):
            bad = np.flatnonzero(got != expected)
            raise SystemExit(f"rank {r}: {op} run {i}: {bad.size} wrong elements, first at {bad[0]}: "
                             f"{got[bad[0]]} instead of {expected[bad[0]]}")
        slowest = float(rd.all_max(np.array([took]))[0])
        if i:  # the first run is a warm-up (connections' windows, page faults)
            times[op].append(slowest)
if r == 0:
    print(json.dumps({"ranks": n, "mib": mib, **times}), flush=True)
