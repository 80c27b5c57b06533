"""Peak resident memory of a large collective: input + output and little more, call after call.

usage: memory_peak.py MIB_PER_RANK [OP [CALLS]]   (OP: all_gather, the default, all_sum, all_to_all,
sum_scatter, reduce (to rank 0; None elsewhere), all_gather_uneven (rank r gives 2(r+1)/(N+1) of MIB_PER_RANK)
reduce_scatter_counts (rank r gets 2(r+1)/(N+1) of the rows' N-th share) or exscan (an exclusive
sum scan; None on rank 0); CALLS: 3)
Prints on every rank `call <i>: peak <MiB> MiB over baseline` after each call, then
`shm=<bool> in=<MiB> out=<MiB> peak=<MiB>`. The peak is VmHWM, reset to the current RSS
after the group is made, minus the RSS then: it counts the input, the result, every shared
segment touched and any other memory the calls needed. The cached result block is reused
once the previous result is dropped (ringdist.buffers).
"""
import sys

import numpy as np

import ringdist as rd


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


mib = int(sys.argv[1])
op = sys.argv[2] if len(sys.argv) > 2 else "all_gather"
calls = int(sys.argv[3]) if len(sys.argv) > 3 else 3
g = rd.init()
rd.barrier()
n, count = g.size(), mib * (1 << 20) // 4
base = status_mib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the current RSS
uneven = [count * 2 * (q + 1) // (n + 1) for q in range(n)]  # rows of each rank: an uneven all_gather's,
shares = [k // n for k in uneven]                             # a reduce-scatter's result's
shares[-1] += count - sum(shares)
x = np.full(uneven[g.rank()] if op == "all_gather_uneven" else count, g.rank() + 1, np.float32)
for call in range(calls):
    if op == "reduce":
        y = rd.reduce(x, root=0)
    elif op == "all_gather_uneven":
        y = rd.all_gather(x, uneven=True)
    elif op == "reduce_scatter_counts":
        y = rd.reduce_scatter(x, counts=shares)
    elif op == "exscan":
        y = rd.scan(x, exclusive=True)
    else:
        y = getattr(rd, op)(x)
    peak = status_mib("VmHWM") - base
    out = y.nbytes if y is not None else 0
    if call < calls - 1:
        del y
    print(f"call {call}: peak {peak:.1f} MiB over baseline", flush=True)
print(f"shm={g.shm is not None} in={x.nbytes / (1 << 20):.1f} out={out / (1 << 20):.1f} peak={peak:.1f}", flush=True)
want = np.repeat(np.arange(1, n + 1, dtype=np.float32), count) if op == "all_gather" else \
    np.repeat(np.arange(1, n + 1, dtype=np.float32), uneven) if op == "all_gather_uneven" else \
    np.full(shares[g.rank()], n * (n + 1) / 2, np.float32) if op == "reduce_scatter_counts" else \
    np.repeat(np.arange(1, n + 1, dtype=np.float32), count // n) if op == "all_to_all" else \
    np.full(count // n, n * (n + 1) / 2, np.float32) if op == "sum_scatter" else \
    np.full(count, g.rank() * (g.rank() + 1) / 2, np.float32) if op == "exscan" else \
    np.full(count, n * (n + 1) / 2, np.float32)
nothing = (op == "reduce" and g.rank() != 0) or (op == "exscan" and g.rank() == 0)  # (None there)
assert y is None if nothing else np.array_equal(y, want)
