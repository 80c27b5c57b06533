"""A rank that forks children which outlive it, then runs collectives in a loop.

usage: forking_rank.py [--setsid] [--no-init]
Forks a child that sleeps 60 s in the rank's process group (with --setsid, also one that
calls os.setsid() first: its own session), prints `ready pid=<pid> children=<pid>[,<pid>]`
and loops all_gather/all_sum of 1 MiB. On a RingError it prints
`raised <Type> at <unix time>: <message>` and exits 1. SIGTERM is ignored, so what a
rank prints is its own detection, not the launcher stopping it. With --no-init the rank
never joins (it forks and sleeps): a job of processes, not a ring.
"""
import os
import signal
import sys
import time

import numpy as np

import ringdist as rd

signal.signal(signal.SIGTERM, lambda *a: None)


def fork_sleeper(new_session: bool) -> int:
    """Fork a sleeping child; return once it is settled (in its own session, with new_session)."""
    settled_r, settled_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(settled_r)
        if new_session:
            os.setsid()
        os.write(settled_w, b"x")  # only now may the rank say it is ready
        os.close(settled_w)
        time.sleep(60)
        os._exit(0)
    os.close(settled_w)
    os.read(settled_r, 1)
    os.close(settled_r)
    return pid


if "--no-init" not in sys.argv:
    g = rd.init()
    x = np.full(1 << 18, g.rank() + 1, dtype=np.float32)
    rd.all_gather(x)
children = [fork_sleeper(False)] + ([fork_sleeper(True)] if "--setsid" in sys.argv else [])
print(f"ready pid={os.getpid()} children={','.join(map(str, children))}", flush=True)
if "--no-init" in sys.argv:
    time.sleep(60)
    sys.exit(0)
try:
    while True:
        rd.all_gather(x)
        rd.all_sum(x)
except rd.RingError as exc:
    print(f"raised {type(exc).__name__} at {time.time():.3f}: {exc}", flush=True)
    os._exit(1)
