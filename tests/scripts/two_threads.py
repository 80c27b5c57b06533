"""Two threads of one rank call collectives on one group.

usage: two_threads.py overlap|async|apart|close
- overlap: rank 0's thread A is inside an all_sum (rank 1 comes 2 s late) when its main thread
  calls another; async: the main thread's second call is async_op=True (it runs on the group's
  runner, and the refusal names the main thread); apart: two threads call one after the other, which is fine; close: rank 0's main
  thread closes a split group while thread A is in an all_sum on it, then again once A is done.
Prints one line per outcome: "<who>: ok <value>" or "<who>: <ErrorClass> after S s: <message>".
"""
import sys
import threading
import time

import numpy as np

import ringdist as rd

mode = sys.argv[1]
g = rd.init()
r = g.rank()


def report(who, fn):
    start = time.monotonic()
    try:
        out = fn()
        print(f"{who}: ok {float(out[0])}", flush=True)
    except rd.RingError as exc:
        print(f"{who}: {type(exc).__name__} after {time.monotonic() - start:.1f} s: {exc}", flush=True)


def call(value):
    return rd.all_sum(np.full(4, value, np.float32), timeout=20)


if mode == "apart":
    for value in (1.0, 2.0):
        t = threading.Thread(target=report, args=(f"thread {value}", lambda v=value: call(v)))
        t.start()
        t.join()
    report("main", lambda: call(3.0))
    sys.exit(0)

if mode == "close":
    sub = g.split(0)

    def call(value):  # noqa: F811 - on the split group
        return rd.all_sum(np.full(4, value, np.float32), group=sub, timeout=20)

    def close():
        sub.close()
        return np.array([sub.size()])

if r == 1:
    time.sleep(2.0)
    report("rank 1", lambda: call(1.0))
    report("rank 1 next", lambda: call(1.0))
    sys.exit(0)

a = threading.Thread(target=report, args=("thread A", lambda: call(1.0)))
a.start()
running = sub if mode == "close" else g
deadline = time.monotonic() + 10
while running._in_call() is not a and time.monotonic() < deadline:  # A is in its all_sum, waiting for rank 1
    time.sleep(0.001)
if mode == "overlap":
    report("main", lambda: call(2.0))
elif mode == "close":
    report("main", close)
else:
    report("main", lambda: rd.all_sum(np.full(4, 2.0, np.float32), timeout=20, async_op=True).wait())
a.join()
if mode == "close":
    report("main once A is done", close)
    sys.exit(0)
report("rank 0 next", lambda: call(1.0))
