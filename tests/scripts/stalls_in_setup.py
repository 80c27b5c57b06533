"""World rank STALLER (default 1) stalls (sleeps) in the setup of a group, before it dials its
ring: the world's (`world`), or that of its group from the first split (`split`, colors by rank
parity; `split_one`, one color); or
(`split_send`) every rank splits into one group, which rank 1 fails to make once its links
and shared memory are made (a RuntimeError) while rank 0, done with it, sends rank 1 16 MiB
in it. Every rank that fails prints `raised <Type>: <message>`; the others print `set up`.
SIGTERM is ignored: each rank reports, then leaves by itself.

usage: stalls_in_setup.py world|split|split_one|split_send [STALLER]
"""
import os
import signal
import sys
import time

import numpy as np

# STALLS_PATIENT: a world rank that waits twice RINGDIST_CONNECT_TIMEOUT (set before ringdist reads
# it), so that the rank it waits for, which waits for the staller as long as it does, has failed
# and can say why by the time it gives up.
if os.environ.get("STALLS_PATIENT") == os.environ["RINGDIST_RANK"]:
    os.environ["RINGDIST_CONNECT_TIMEOUT"] = str(2 * float(os.environ.get("RINGDIST_CONNECT_TIMEOUT", "30")))

import ringdist as rd  # noqa: E402
from ringdist import comm, ring  # noqa: E402

signal.signal(signal.SIGTERM, lambda *a: None)
case = sys.argv[1]
staller = sys.argv[2] if len(sys.argv) > 2 else "1"
if os.environ["RINGDIST_RANK"] == staller and case == "split_send":
    made = comm.open_link

    def failing(endpoint, links, **kwargs):
        link = made(endpoint, links, **kwargs)
        if kwargs["group"] != "world":
            time.sleep(0.5)  # rank 0 has its group, and sends
            if link is not None:
                link.close()
            raise RuntimeError("injected failure after the links were made")
        return link

    comm.open_link = failing
elif os.environ["RINGDIST_RANK"] == staller:
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
    elif case == "split_one":
        g.split(0)
    elif case == "split_send":
        sub = g.split(0)
        if g.rank() == 0:
            rd.send(np.ones(1 << 22, np.float32), 1, group=sub)
except (rd.RingError, RuntimeError) as exc:
    print(f"raised {type(exc).__name__}: {exc}", flush=True)
    raise SystemExit(1)
print("set up", flush=True)
