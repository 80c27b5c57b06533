"""A soak: many collectives of random op, size (0 B to 4 MiB) and group, every result checked.

usage: soak.py COUNT. Prints open fds and resident memory at the start and at the end.
"""
import ctypes
import os
import sys
import time

import numpy as np

import ringdist as rd

# Transparent huge pages arrive whenever khugepaged gets round to the buffer cache's blocks:
# resident memory then jumped by 14 MiB at a random moment of the run (AnonHugePages 0 -> 14336 kB),
# which is not growth with the number of calls. The leak check turns them off for this process.
try:
    ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
except (OSError, AttributeError):
    pass


def fds():
    return len(os.listdir("/proc/self/fd"))


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


count = int(sys.argv[1])
world = rd.init()
r, n = world.rank(), world.size()
groups = {"world": world, "halves": world.split(r % 2), "pairs": world.split(r // 2),
          "reversed": world.split(0, key=n - r)}
names = sorted(groups)
rng = np.random.default_rng(2026)  # the same program on every rank
ops = ["all_gather", "all_sum", "all_max", "all_min", "all_prod", "sum_scatter", "broadcast", "barrier"]


def rank_data(q, elems, seed):
    return ((np.arange(elems, dtype=np.int64) * 31 + q * 7 + seed) % 5).astype(np.int32)


# warm up every group and op so the start figures include steady-state buffers
for name in names:
    rd.all_sum(np.zeros(1 << 20, dtype=np.int32), group=groups[name])
start_fds, start_rss = fds(), rss_mib()
t0 = time.perf_counter()
moved = 0
for i in range(count):
    op = ops[rng.integers(len(ops))]
    g = groups[names[rng.integers(len(names))]]
    size = int(np.exp(rng.uniform(0, np.log(4 << 20)))) if rng.random() > 0.05 else 0
    elems = size // 4
    gr, gn = g.rank(), g.size()
    mine = rank_data(gr, elems, i)
    if op == "all_gather":
        y = rd.all_gather(mine, group=g)
        want = np.concatenate([rank_data(q, elems, i) for q in range(gn)])
    elif op == "sum_scatter":
        elems -= elems % gn
        mine = rank_data(gr, elems, i)
        y = rd.sum_scatter(mine, group=g)
        c = elems // gn
        want = sum(rank_data(q, elems, i) for q in range(gn))[gr * c:(gr + 1) * c]
    elif op == "broadcast":
        root = i % gn
        y = rd.broadcast(mine, root=root, group=g)
        want = rank_data(root, elems, i)
    elif op == "barrier":
        rd.barrier(group=g)
        y = want = np.zeros(0)
    else:
        y = getattr(rd, op)(mine, group=g)
        stack = np.stack([rank_data(q, elems, i) for q in range(gn)])
        want = {"all_sum": lambda s: s.sum(0, dtype=np.int32), "all_max": lambda s: s.max(0),
                "all_min": lambda s: s.min(0), "all_prod": lambda s: s.prod(0, dtype=np.int32)}[op](stack)
    assert np.array_equal(y, want), (i, op, size)
    moved += y.nbytes
    if i == count // 2:
        half_rss = rss_mib()
end_fds, end_rss = fds(), rss_mib()
print(f"soak ok rank={r} collectives={count} seconds={time.perf_counter() - t0:.1f} "
      f"MiB={moved / 2**20:.0f} fds {start_fds}->{end_fds} rss_mib {start_rss:.1f}->{half_rss:.1f}->{end_rss:.1f}",
      flush=True)
