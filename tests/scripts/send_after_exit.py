"""Rank 1 receives one message from rank 0 and leaves; rank 0 then sends it another, on the
connection still open at its end. The send must fail, not return as if delivered.

usage: send_after_exit.py {exit|close} {send|isend}
  exit   rank 1's process ends (the launcher tells rank 0 it left)
  close  rank 1 closes its world group and stays (its connection closes; nothing is announced)
"""
import sys
import time

import numpy as np

import ringdist as rd

how, call = sys.argv[1:3]
g = rd.init()
x = np.ones(10, dtype=np.float32)
if g.rank() == 1:
    rd.recv_like(x, 0)
    if how == "close":
        g.close()
        time.sleep(3)
    sys.exit(0)
rd.send(x, 1)
time.sleep(1.0)  # rank 1 has left, or closed its end
if how == "exit":  # and the launcher has said so (a closed connection alone is the `close` case)
    deadline = time.monotonic() + 30
    while g.endpoint.departed(g.addresses[1]) is None and time.monotonic() < deadline:
        time.sleep(0.01)
try:
    if call == "isend":
        rd.send(x, 1, async_op=True).wait(timeout=10)
    else:
        rd.send(x, 1)
    print("outcome: returned", flush=True)
except rd.RingError as exc:
    print(f"outcome: {type(exc).__name__}: {exc}", flush=True)
print(f"group {'broken' if 'broken' in repr(g) else 'open'}", flush=True)
