"""Counts the SIGTERMs this rank, and a child it forked into a process group of its own (still in
the rank's session, and the job's), get: the launcher's stop sends one to each.

Prints `ready` once both run, then `rank got N` and `child got N` half a second after the first.
"""
import os
import signal
import sys
import time

import ringdist as rd

g = rd.init()
got = []
signal.signal(signal.SIGTERM, lambda *a: got.append(time.monotonic()))
child = os.fork()
if child == 0:
    os.setpgid(0, 0)  # (reached by the pass over the rank's session, not by its group's signal)
who = "child" if child == 0 else "rank"
if child:
    print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and (not got or time.monotonic() < got[0] + 0.5):
    time.sleep(0.01)
os.write(1, f"{who} got {len(got)}\n".encode())  # one write: the rank's and the child's lines stay whole
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
sys.exit(0)
