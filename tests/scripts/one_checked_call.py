"""One barrier, then one checked collective (no warm-up): no rank waits on a peer's earlier call.

usage: one_checked_call.py all_gather|all_sum|isend MiB
(isend: each rank sends its array to the next with async_op=True, and receives the previous's.)
Prints `ok after <s>` and exits 0 when the result is right; `raised <Type>: <message>` and exits 1 on
a RingError; exits 3 on a wrong result.
"""
import sys
import time

import numpy as np

import ringdist as rd

op, mib = sys.argv[1], float(sys.argv[2])
g = rd.init()
r, n = g.rank(), g.size()
count = int(mib * (1 << 20)) // 4
count -= count % n
base = np.arange(count, dtype=np.int32) * 4
want = {"all_gather": lambda: np.concatenate([base + q for q in range(n)]),
        "all_sum": lambda: base * n + n * (n - 1) // 2, "isend": lambda: base + (r - 1) % n}[op]()


def isend(x):
    sending = rd.send(x, (r + 1) % n, async_op=True)
    got = rd.recv(x.shape, x.dtype, (r - 1) % n)
    sending.wait()
    return got


rd.barrier()
began = time.monotonic()
try:
    got = isend(base + r) if op == "isend" else getattr(rd, op)(base + r)
except rd.RingError as exc:
    print(f"raised {type(exc).__name__}: {exc}", flush=True)
    sys.exit(1)
if not np.array_equal(got, want):
    print("wrong result", flush=True)
    sys.exit(3)
print(f"ok after {time.monotonic() - began:.1f} s", flush=True)
