"""World rank 1 stalls (sleeps) in the setup of a group, before it dials its ring: the world's
(`world`), or that of its group from the first split (`split`, colors by rank parity). Every
rank that fails prints `raised <Type>: <message>`; the others print `set up`. SIGTERM is
ignored: each rank reports, then leaves by itself.

usage: stalls_in_setup.py world|split
"""
import os
import signal
import sys
import time

import ringdist as rd
from ringdist import ring

signal.signal(signal.SIGTERM, lambda *a: None)
case = sys.argv[1]
if os.environ["RINGDIST_RANK"] == "1":
    real = ring.RingLinks.connect

    def stalled(self, *args, **kwargs):
        if (self.group == "world") == (case == "world"):
            time.sleep(20)
        real(self, *args, **kwargs)

    ring.RingLinks.connect = stalled
try:
    g = rd.init()
    if case == "split":
        g.split(g.rank() % 2)
except rd.RingError as exc:
    print(f"raised {type(exc).__name__}: {exc}", flush=True)
    raise SystemExit(1)
print("set up", flush=True)
