"""A refused call behind async work, and from a second thread: it fails on every rank, in order.

usage: refused_async.py CASE
  split-small  rank 0 issues a small async all_sum, then split() with a float color
  split-large  the same behind a 16 MB all_sum the progress thread is still running
  async-dtype  every rank issues a good async all_sum, then one with an object array on rank 1
  thread       rank 0's second thread calls all_gather with an object array while the main
               thread's all_sum runs (the other ranks' all_sum waits for rank 0's)
Each rank prints `outcome <what>: <error class or ok>` for each step, then `group <state>`.
"""
import sys
import threading
import time

import numpy as np

import ringdist as rd
from attempts import attempt

case = sys.argv[1]
g = rd.init()
r = g.rank()


def outcome(what, call):
    attempt(f"outcome {what}:", call)


if case.startswith("split-"):
    size = 2_000_000 if case == "split-large" else 2
    earlier = rd.all_sum(np.ones(size), async_op=True)
    if case == "split-large":
        time.sleep(0.05)  # the progress thread is in the all_sum
    outcome("split", lambda: g.split(1.5 if r == 0 else 1))
    outcome("earlier", lambda: earlier.wait(timeout=30))
elif case == "async-dtype":
    good = rd.all_sum(np.ones(3), async_op=True)
    bad = rd.all_sum(np.array([None] * 3) if r == 1 else np.ones(3), async_op=True)
    outcome("good", lambda: good.wait(timeout=30))
    outcome("bad", lambda: bad.wait(timeout=30))
elif case == "thread":
    if r == 0:
        def second():
            deadline = time.monotonic() + 10
            while g._in_call() is not main and time.monotonic() < deadline:  # main is in its all_sum
                time.sleep(0.001)
            outcome("thread", lambda: rd.all_gather(np.array([object()])))
        main = threading.current_thread()
        threading.Thread(target=second).start()
        outcome("all_sum", lambda: rd.all_sum(np.ones(4)))
    else:
        time.sleep(2.0)
        outcome("all_sum", lambda: rd.all_sum(np.ones(4)))
        outcome("next", lambda: rd.barrier())
    time.sleep(0.5)
print(f"group {'broken' if 'broken' in repr(g) else 'open'}", flush=True)
