"""A job that runs while a stranger holds idle connections to its ports (driven by tests/test_strangers.py).

argv[1] is a directory of gate files the test creates: ranks but the last wait for
`init` before rd.init(), the last rank for `last` (so the others listen, flooded,
while the rings connect), and every rank for `go` before the work: a split, the first
point-to-point send, then collectives on the world and the split group, every result
checked exactly. A sampler records the most file descriptors, threads (itself not
counted) and resident memory the rank had; the last line reports them.
"""

import os
import sys
import threading
import time

import numpy as np

import ringdist as rd
from ringdist import world

gates = sys.argv[1]
rank = int(os.environ["RINGDIST_RANK"])
n = int(os.environ["RINGDIST_WORLD_SIZE"])
print(f"pid {os.getpid()}", flush=True)


def wait_gate(name: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(gates, name)):
        if time.monotonic() > deadline:
            sys.exit(f"rank {rank}: gate {name} never opened")
        time.sleep(0.02)


peak = {"fds": 0, "threads": 0, "rss_kb": 0}
sampling = True


def sample() -> None:
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    while sampling:
        with open("/proc/self/statm") as f:
            rss_kb = int(f.read().split()[1]) * page_kb
        peak["fds"] = max(peak["fds"], len(os.listdir("/proc/self/fd")))
        peak["threads"] = max(peak["threads"], threading.active_count() - 1)
        peak["rss_kb"] = max(peak["rss_kb"], rss_kb)
        time.sleep(0.01)


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
wait_gate("last" if rank == n - 1 else "init")
world = rd.init()
print("ready", flush=True)
wait_gate("go")

half = world.split(color=rank % 2, key=n - rank)  # new rings to dial, in reverse rank order
members = [r for r in range(n) if r % 2 == rank % 2][::-1]
assert half.size() == len(members) and members[half.rank()] == rank

block = np.arange(10, dtype=np.int64) + 100 * rank
if rank == 0:  # first point-to-point messages: 0 -> n-1 (a new connection), then 1 -> 0
    rd.send(block, n - 1)
    assert np.array_equal(rd.recv_like(block, 1), np.arange(10) + 100)
elif rank == 1:
    rd.send(block, 0)
if rank == n - 1:
    assert np.array_equal(rd.recv_like(block, 0), np.arange(10))

for step in range(20):  # steady state: small (direct) and large (ring) calls, world and split
    for size in (7, 300_000):
        x = (np.arange(size, dtype=np.int64) * 3 + rank + step) % 1000
        want = [(np.arange(size, dtype=np.int64) * 3 + r + step) % 1000 for r in range(n)]
        assert np.array_equal(rd.all_gather(x), np.concatenate(want))
        assert np.array_equal(rd.all_sum(x), sum(want))
        assert np.array_equal(rd.all_gather(x, group=half), np.concatenate([want[r] for r in members]))
        assert np.array_equal(rd.all_max(x, group=half), np.max([want[r] for r in members], axis=0))
    assert np.array_equal(rd.broadcast(np.full(5, rank), root=n - 1), np.full(5, n - 1))
rd.barrier()
sampling = False
sampler.join()
print(f"done fds={peak['fds']} threads={peak['threads']} rss_kb={peak['rss_kb']} "
      f"refused={world._endpoint.refused}", flush=True)
