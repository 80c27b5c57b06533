"""Failures of point-to-point operations issued with async_op=True.

usage: async_p2p_faults.py timeout|unwaited|mismatch
  timeout:  rank 0 sends 32 MiB with timeout=1 to rank 1, which receives nothing for 6 s:
            the send's wait() raises; rank 1 then finds the group broken.
  unwaited: rank 0 sends 32 MiB with timeout=1 to rank 1, which receives nothing; the handle
            fails, is dropped and collected (`logged when dropped: <line>` for what the
            "ringdist" logger said meanwhile); a second send then fails (the group is broken)
            and is left, never waited, at exit.
  mismatch: rank 0 sends 8 MiB of float32, rank 1 posts a recv of a float64 shape (or, with
            `shape`, of another float32 shape): both waits raise.
Prints `raised <Name>: <message>` for each error a wait raises, `ok <op>` for a result.
"""
import gc
import logging
import sys
import time

import numpy as np

import ringdist as rd

mode = sys.argv[1]
variant = sys.argv[2] if len(sys.argv) > 2 else ""
g = rd.init()
r = g.rank()
BIG = 8 << 20  # float32 elements: 32 MiB, far more than the socket buffers take


def report(w):
    try:
        w.wait(timeout=30)
        print(f"ok {w.op}", flush=True)
    except rd.RingError as exc:
        print(f"raised {type(exc).__name__}: {exc}", flush=True)


if mode == "timeout":
    if r == 0:
        w = rd.send(np.zeros(BIG, dtype=np.float32), 1, timeout=1, async_op=True)
        print(f"issued done={w.done()}", flush=True)
        report(w)
        report(rd.all_sum(np.ones(2), async_op=True))
    else:
        time.sleep(6)
        report(rd.all_sum(np.ones(2), async_op=True))
    sys.exit(0)

class Seen(logging.Handler):
    """Records what the "ringdist" logger says, so the script can tell when it was said."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


if mode == "unwaited":
    if r == 0:
        seen = Seen()
        logging.getLogger("ringdist").addHandler(seen)
        w = rd.send(np.zeros(BIG, dtype=np.float32), 1, timeout=1, async_op=True)
        while not w.done():
            time.sleep(0.05)
        print(f"before drop: {len(seen.lines)} logged", flush=True)
        del w
        gc.collect()
        logging.getLogger("ringdist").removeHandler(seen)  # what is logged from here goes to stderr
        for line in seen.lines:
            print(f"logged when dropped: {line}", flush=True)
        left = rd.send(np.zeros(BIG, dtype=np.float32), 1, timeout=1, async_op=True)
        while not left.done():
            time.sleep(0.05)
        print("leaving", flush=True)
    else:
        time.sleep(6)
    sys.exit(0)

if mode == "mismatch":
    n = 2 << 20  # 8 MiB of float32
    if r == 0:
        report(rd.send(np.ones(n, dtype=np.float32), 1, async_op=True))
    elif variant == "shape":
        report(rd.recv((n + 1,), np.float32, 0, async_op=True))
    else:
        report(rd.recv((n // 2,), np.float64, 0, async_op=True))
    time.sleep(1.0)  # both ranks report before the launcher stops the job
    sys.exit(0)
