"""A message fails on one thread of rank 1 while its main thread is sending a collective's frames.

usage: message_fails_in_a_collective.py
Rank 1's main thread is in a 16 MB all_gather, its frames waiting for rank 0 (which comes
0.5 s late), when another of its threads has a recv time out on the same group. Every rank
then makes one more all_gather. Prints one line per outcome: "<who>: ok", "<who>: wrong
data", or "<who>: <ErrorClass>: <message>".
"""
import threading
import time

import numpy as np

import ringdist as rd

g = rd.init()
r = g.rank()
if r == 0:  # the pair's connection is open: a failed message breaks the group
    rd.send(np.zeros(1), 1)
else:
    rd.recv(1, np.float64, 0)
x = np.full(1 << 20, float(r))
expected = np.repeat([0.0, 1.0], 1 << 20)


def report(who, fn, check=None):
    try:
        out = fn()
        print(f"{who}: {'ok' if check is None or check(out) else 'wrong data'}", flush=True)
    except rd.RingError as exc:
        print(f"{who}: {type(exc).__name__}: {exc}", flush=True)


def fail_a_message():
    deadline = time.monotonic() + 10
    while g._in_call() is not threading.main_thread() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.1)  # the collective's frames are on their way, rank 0 not reading yet
    report("recv", lambda: rd.recv(1, np.float64, 0, timeout=0.001))


side = None
if r == 1:
    side = threading.Thread(target=fail_a_message)
    side.start()
rd.barrier()
if r == 0:
    time.sleep(0.5)
report("all_gather", lambda: rd.all_gather(x, timeout=20), lambda out: np.array_equal(out, expected))
if side is not None:
    side.join()
report("next", lambda: rd.all_gather(x, timeout=20), lambda out: np.array_equal(out, expected))
