"""A first message to a rank that takes connections but never answers the handshake (stopped:
SIGSTOP). Rank 1 stops itself; rank 0 sends to it with timeout=2, blocking then non-blocking,
each printing "<kind>: <error type>: <message>", then continues rank 1 and both exit 0. Run with
RINGDIST_CONNECT_TIMEOUT well above 2: the call's timeout bounds the dial.
"""

import os
import signal
import time

import numpy as np

import ringdist as rd

g = rd.init()
pids = rd.all_gather(np.array([os.getpid()]))
if g.rank() == 1:
    os.kill(os.getpid(), signal.SIGSTOP)
else:
    time.sleep(0.5)
    for kind in ("blocking", "async"):
        try:
            if kind == "blocking":
                rd.send(np.zeros(4), 1, timeout=2)
            else:
                rd.send(np.zeros(4), 1, timeout=2, async_op=True).wait()
            print(f"{kind}: returned", flush=True)
        except rd.RingError as exc:
            print(f"{kind}: {type(exc).__name__}: {exc}", flush=True)
    os.kill(int(pids[1]), signal.SIGCONT)
