"""Rank 1 leaves after a barrier; every other rank then waits to receive from it.

usage: recv_from_gone.py {recv|irecv|chain|raised}
  chain: rank 1 fails (exit code 1); rank 2 waits for rank 1 instead, then leaves too; rank 0,
         once told that rank 2 left, receives from it.
  raised: ranks 1 and 2 split off a group of their own, where rank 1 passes another shape
          (MismatchError on both) and exits with code 3, rank 2 once it has heard that; rank 0 then
          receives from rank 1.
Prints `outcome after <s>: <error class>: <message>` (or `outcome after <s>: returned`).
"""
import signal
import sys
import time

import numpy as np

import ringdist as rd

if sys.argv[1] in ("chain", "raised"):  # the launcher stops the job when rank 1 fails: the others stay to report
    signal.signal(signal.SIGTERM, lambda *a: None)
g = rd.init()
rd.barrier()
if sys.argv[1] == "raised":
    sub = g.split(0 if g.rank() == 0 else 1)
    if g.rank() != 0:
        try:
            rd.all_gather(np.zeros(3 + g.rank()), group=sub)
        except rd.MismatchError:
            if g.rank() == 2:  # leaves after rank 1, whose departure rank 0 reads: never the first to leave
                deadline = time.monotonic() + 30
                while g.endpoint.departed(g.addresses[1]) is None and time.monotonic() < deadline:
                    time.sleep(0.01)
            sys.exit(3 if g.rank() == 1 else 0)
    deadline = time.monotonic() + 30
    while g.endpoint.departed(g.addresses[1]) is None and time.monotonic() < deadline:
        time.sleep(0.01)
if g.rank() == 1:
    sys.exit(1 if sys.argv[1] == "chain" else 0)
start = time.monotonic()
if sys.argv[1] == "chain" and g.rank() == 2:
    try:
        rd.recv((3,), np.float64, 1)
    except rd.PeerLostError:
        sys.exit(0)
if sys.argv[1] == "chain":  # rank 2's departure heard from the launcher, not found by a dial of this rank's
    while g.endpoint.departed(g.addresses[2]) is None and time.monotonic() < start + 30:
        time.sleep(0.01)
try:
    if sys.argv[1] == "chain":
        rd.recv((3,), np.float64, 2)
    elif sys.argv[1] == "raised":
        rd.recv((3,), np.float64, 1)
    elif sys.argv[1] == "irecv":
        rd.recv((3,), np.float64, 1, async_op=True).wait()
    else:
        rd.recv((3,), np.float64, 1)
    print(f"outcome after {time.monotonic() - start:.2f}: returned", flush=True)
except rd.RingError as exc:
    print(f"outcome after {time.monotonic() - start:.2f}: {type(exc).__name__}: {exc}", flush=True)
