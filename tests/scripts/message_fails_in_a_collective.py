"""A message fails on one thread of a rank (rank 1 of 2, else N-2) while its main thread is in a collective.

usage: message_fails_in_a_collective.py all_gather|all_sum
That rank's main thread is in the collective (a 16 MB all_gather, whose frames wait for
the others, or a small all_sum, whose links past 8 ranks open on first use), the other ranks
coming 0.5 s late, when another of its threads has a recv from rank 0 fail (rank 0 sent a
message of another dtype, so it is a MismatchError there). Every rank then
makes one more such call. Prints one line per outcome: "<who>: ok", "<who>: wrong data", or
"<who>: <ErrorClass>: <message>".
"""
import sys
import threading
import time

import numpy as np

import ringdist as rd

g = rd.init()
r, n = g.rank(), g.size()
failing = max(1, n - 2)  # past 8 ranks, one that others open links to in a small all_sum
if r == 0:  # the pair's connection is open: a failed message breaks the group
    rd.send(np.zeros(1), failing)
    rd.send(np.zeros(2, np.int32), failing)  # not what the receive below expects
elif r == failing:
    rd.recv(1, np.float64, 0)
if sys.argv[1] == "all_gather":
    x = np.full(1 << 20, float(r))
    expected = np.repeat(np.arange(n, dtype=np.float64), 1 << 20)
    call = lambda: rd.all_gather(x, timeout=20)  # noqa: E731
else:
    expected = np.full(4, n * (n - 1) / 2)
    call = lambda: rd.all_sum(np.full(4, float(r)), timeout=20)  # noqa: E731
rd.all_gather(np.zeros(1 << 16))  # in step, round the ring only


def report(who, fn):
    try:
        print(f"{who}: {'ok' if np.array_equal(fn(), expected) else 'wrong data'}", flush=True)
    except rd.RingError as exc:
        print(f"{who}: {type(exc).__name__}: {exc}", flush=True)


def fail_a_message():
    deadline = time.monotonic() + 10
    while g._in_call() is not threading.main_thread() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.1)  # the collective is under way, the others not in it yet
    try:
        rd.recv(1, np.float64, 0, timeout=20)
        print("recv: returned", flush=True)
    except rd.RingError as exc:
        print(f"recv: {type(exc).__name__}: {exc}", flush=True)


side = None
if r == failing:
    side = threading.Thread(target=fail_a_message)
    side.start()
else:
    time.sleep(0.5)
report("call", call)
if side is not None:
    side.join()
report("next", call)
