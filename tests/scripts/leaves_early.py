"""Rank 2 leaves the job before its peers connect to it or it to them; they must raise
PeerLostError at once, not wait out RINGDIST_CONNECT_TIMEOUT / RINGDIST_TIMEOUT.

usage: leaves_early.py MODE, MODE one of
  init        rank 2 is killed before init(), once the others have set their SIGTERM handler
              (each writes a file in $LEAVES_EARLY_DIR then)
  registered  rank 2 is killed in init(), after registering, before its ring is built
  split       rank 2 is killed in split(), after the color exchange, before the new ring is built
  recv        rank 0 receives from rank 2, which exits without sending (a link opened on first use)
  send        rank 0 sends to rank 2 after rank 2 exited

The survivors ignore SIGTERM, so what they print is their own detection, not the launcher's stop.
Each prints "raised NAME: message" and exits 1, or "done" when nothing was raised.
"""
import os
import signal
import sys
import time

import numpy as np

import ringdist as rd

mode = sys.argv[1]
victim = os.environ.get("RINGDIST_RANK") == "2"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


marks = os.environ.get("LEAVES_EARLY_DIR")  # where each survivor notes that its handler is set
if not victim:
    signal.signal(signal.SIGTERM, lambda *a: None)
    if marks:
        open(os.path.join(marks, os.environ["RINGDIST_RANK"]), "w").close()
elif mode == "init":
    deadline = time.monotonic() + 30
    while marks and len(os.listdir(marks)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the others have likely registered too
    die()
elif mode == "registered":
    import ringdist.control as control  # noqa: E402 - the moment of the kill, nothing else changed

    register = control.ControlLink.register
    control.ControlLink.register = lambda self: (register(self), die())[0]
elif mode == "split":
    import ringdist.split as split  # noqa: E402

    exchange = split.gather_rows
    split.gather_rows = lambda *a, **k: (exchange(*a, **k), die())[0]

try:
    g = rd.init()
    if mode == "split":
        g.split(color=0)
    elif mode == "recv":
        if g.rank() == 2:
            os._exit(0)
        if g.rank() == 0:
            rd.recv((4,), np.float32, 2)
    elif mode == "send":
        if g.rank() == 2:
            os._exit(0)
        if g.rank() == 0:
            time.sleep(0.5)
            rd.send(np.ones(4, np.float32), 2)
except rd.RingError as exc:
    print(f"raised {type(exc).__name__}: {exc}", flush=True)
    time.sleep(0.5)  # after the victim, so the launcher names it as the first failure
    os._exit(1)
print("done", flush=True)
