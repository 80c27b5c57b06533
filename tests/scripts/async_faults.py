"""Failures of operations issued with async_op=True.

usage: async_faults.py mismatch|kill|exit|fork
  mismatch: rank 1 passes another shape to an async all_gather; an async all_sum follows.
  kill: ranks loop over async collectives and an isend/irecv ring shift until an error (the
        test kills a rank with SIGKILL); survivors ignore SIGTERM, so what they print is theirs.
  exit: each rank leaves with operations outstanding (an irecv no one answers; rank 0 an
        all_gather rank 1 never calls); prints `leaving at <time>`.
  fork: a forked child tries the parent's group and waits for a handle of its parent's.
  late: rank 0 queues an all_sum with timeout=2 behind a barrier that rank 1 joins 4 s late,
        and a recv with timeout=2 behind a recv from rank 1 that comes as late: their timeouts
        count from their start, so both succeed.
Prints `raised <Name> at <time>: <message>` for each error a wait raises.
"""
import os
import signal
import sys
import time

import numpy as np

import ringdist as rd

mode = sys.argv[1]
if mode in ("kill", "mismatch"):  # each rank reports, then leaves by itself
    signal.signal(signal.SIGTERM, lambda *a: None)
g = rd.init()
r, n = g.rank(), g.size()


def report(w):
    try:
        w.wait(timeout=60)
        print(f"{w.op} ok", flush=True)
    except rd.RingError as exc:
        print(f"raised {type(exc).__name__} at {time.time():.3f}: {exc}", flush=True)


if mode == "mismatch":
    x = np.zeros(5 if r == 1 else 4, dtype=np.float32)
    works = [rd.all_gather(x, async_op=True), rd.all_sum(np.ones(3), async_op=True)]
    for w in works:
        report(w)
    time.sleep(1.0)  # every rank reports before the launcher stops the job
    sys.exit(3)

if mode == "kill":
    x = np.full(1 << 16, r, dtype=np.float32)
    y = np.full(1 << 18, r, dtype=np.float32)  # 1 MiB: more than a socket buffer takes at once
    first = True
    while True:
        works = [rd.all_sum(x, async_op=True), rd.send(y, (r + 1) % n, async_op=True),
                 rd.recv_like(y, (r - 1) % n, async_op=True), rd.all_gather(x, async_op=True)]
        for i, w in enumerate(works):
            try:
                w.wait(timeout=60)
            except rd.RingError as exc:
                print(f"raised {type(exc).__name__} at {time.time():.3f}: {exc}", flush=True)
                for later in works[i + 1:]:  # each later operation of the group: GroupBrokenError
                    report(later)
                sys.exit(3)
        if first:
            print(f"ready pid={os.getpid()}", flush=True)
            first = False

if mode == "exit":
    other = (r + 1) % n
    rd.recv((3,), np.float64, other, async_op=True)
    if r == 0:
        rd.all_gather(np.ones(2), async_op=True)  # rank 1 never calls it
    print(f"leaving at {time.time():.3f}", flush=True)
    sys.exit(0)

if mode == "late":
    # Queued behind a 4 s wait with 2 s timeouts: a collective behind the group's barrier, and a
    # recv behind the pair's first recv. Each timeout counts from the operation's own start.
    if r == 0:
        works = [rd.barrier(async_op=True, timeout=20), rd.recv((2,), np.int64, 1, async_op=True, timeout=20),
                 rd.recv((2,), np.int64, 1, async_op=True, timeout=2), rd.all_sum(np.ones(2), async_op=True, timeout=2)]
        t0 = time.monotonic()
        results = [w.wait(timeout=30) for w in works]
        assert results[1].tolist() == [5, 6] and results[2].tolist() == [7, 8] and results[3].tolist() == [2, 2], results
        print(f"late ok after {time.monotonic() - t0:.1f}s", flush=True)
    else:
        time.sleep(4)
        rd.barrier()
        rd.send(np.array([5, 6]), 0)
        rd.send(np.array([7, 8]), 0)
        rd.all_sum(np.ones(2))
    sys.exit(0)

if mode == "fork":
    other = 1 - r
    assert rd.all_sum(np.ones(2), async_op=True).wait().tolist() == [n, n]
    pending = rd.recv((3,), np.int64, other, async_op=True)
    pid = os.fork()
    if pid == 0:
        for attempt in (pending.wait, lambda: rd.all_gather(np.ones(2)),
                        lambda: rd.all_gather(np.ones(2), async_op=True).wait(timeout=10)):
            try:
                attempt()
                print("child: no error", flush=True)
            except Exception as exc:
                print(f"child: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    # Both children are done before either rank sends: a message landing before the other rank
    # forks would complete its handle there, and its child would rightly see no error.
    rd.barrier()
    rd.send(np.arange(3) + r, other)
    assert pending.wait(timeout=30).tolist() == [other, other + 1, other + 2]
    assert rd.all_sum(np.ones(2), async_op=True).wait().tolist() == [n, n]
    print("fork ok", flush=True)
