"""Counts the SIGTERMs this rank, and a child it forked, get: the launcher's stop sends one to each.

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
who = "child" if child == 0 else "rank"
if child:
    print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and (not got or time.monotonic() < got[0] + 0.5):
    time.sleep(0.01)
print(f"{who} got {len(got)}", flush=True)
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
sys.exit(0)
