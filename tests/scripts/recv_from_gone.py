"""Rank 1 leaves after a barrier; every other rank then waits to receive from it.

usage: recv_from_gone.py {recv|irecv|chain}
  chain: rank 1 fails (exit code 1); rank 2 waits for rank 1 instead, then leaves too; rank 0,
         once told that rank 2 left, receives from it.
Prints `outcome after <s>: <error class>: <message>` (or `outcome after <s>: returned`).
"""
import signal
import sys
import time

import numpy as np

import ringdist as rd

if sys.argv[1] == "chain":  # the launcher stops the job when rank 1 fails: the others stay to report
    signal.signal(signal.SIGTERM, lambda *a: None)
g = rd.init()
rd.barrier()
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
    elif sys.argv[1] == "irecv":
        rd.recv((3,), np.float64, 1, async_op=True).wait()
    else:
        rd.recv((3,), np.float64, 1)
    print(f"outcome after {time.monotonic() - start:.2f}: returned", flush=True)
except rd.RingError as exc:
    print(f"outcome after {time.monotonic() - start:.2f}: {type(exc).__name__}: {exc}", flush=True)
