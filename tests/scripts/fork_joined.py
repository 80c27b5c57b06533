"""Rank 0 forks while an async sendrecv and an async send are outstanding: the child's waits on
both fail at once (the parent's operations are the parent's), and the parent gets both results."""
import os
import sys
import time

import numpy as np

import ringdist as rd

g = rd.init()
if g.rank() == 1:
    time.sleep(2)
    rd.recv(None, None, 0)
    rd.send(np.ones(3), 0)
    rd.recv(None, None, 0)
    sys.exit(0)
both = rd.sendrecv(np.zeros(1 << 22), 1, 1, async_op=True)
plain = rd.send(np.zeros(1 << 22), 1, async_op=True)
pid = os.fork()
if pid == 0:
    for name, work in (("plain", plain), ("sendrecv", both)):
        began = time.monotonic()
        try:
            work.wait(timeout=5)
            print(f"child {name}: returned", flush=True)
        except rd.RingError as exc:
            print(f"child {name}: {type(exc).__name__} after {time.monotonic() - began:.1f} s", flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print("parent", both.wait(timeout=30).tolist(), plain.wait(timeout=30).shape, flush=True)
