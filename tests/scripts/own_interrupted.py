"""A rank's messages to itself, sent while a signal handler raises at random moments (as Ctrl-C
does), on a group of one: a non-blocking receive posted before each send must end, with the
message or its own timeout, never wait forever nor fail with the sender's interruption; a
message is never taken twice. Prints `counts: {...}` and exits 0, or says what went wrong.

usage: own_interrupted.py ITERATIONS
"""
import random
import signal
import sys

import numpy as np

import ringdist as rd


class Stop(Exception):
    pass


armed = [False]  # the handler raises only while a send is under way (once)


def handler(*_):
    if armed[0]:
        armed[0] = False
        raise Stop()


signal.signal(signal.SIGALRM, handler)
g = rd.init()
counts: dict[str, int] = {}
for i in range(int(sys.argv[1])):
    w = None
    try:
        w = rd.recv((1,), np.int64, 0, tag=1, timeout=0.05, async_op=True)
        armed[0] = True
        signal.setitimer(signal.ITIMER_REAL, random.uniform(0, 80e-6))
        rd.send(np.array([i]), 0, tag=1)
        armed[0] = False
        kind = "sent"
    except Stop:
        kind = "interrupted"
    armed[0] = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    if w is not None:
        try:
            got = w.wait(timeout=5)
            kind += ", received"
            if int(got[0]) != i:
                sys.exit(f"iteration {i}: received message {int(got[0])}")
        except rd.RingTimeoutError as exc:
            if "still outstanding" in str(exc):
                sys.exit(f"iteration {i} ({kind}): the receive never ended")
            kind += ", timed out"
        except Stop:
            sys.exit(f"iteration {i} ({kind}): the receive failed with the sender's interruption")
    counts[kind] = counts.get(kind, 0) + 1
    try:  # a message whose receive timed out first is the next receive's: drained
        while True:
            rd.recv((1,), np.int64, 0, tag=1, timeout=0.001)
    except rd.RingTimeoutError:
        pass
# wait_any interrupted at random moments, over and over: a lock it left held made every later
# completion (and so every later message to itself) wait forever.
done = rd.recv((1,), np.int64, 0, tag=2, async_op=True)
rd.send(np.array([0]), 0, tag=2)
for _ in range(int(sys.argv[1])):
    try:
        armed[0] = True
        signal.setitimer(signal.ITIMER_REAL, random.uniform(0, 30e-6))
        for _ in range(10):
            rd.wait_any([done])
    except Stop:
        pass
    armed[0] = False
    signal.setitimer(signal.ITIMER_REAL, 0)
late = rd.recv((1,), np.int64, 0, tag=3, async_op=True)
rd.send(np.array([3]), 0, tag=3)
if int(late.wait(timeout=5)[0]) != 3:
    sys.exit("after interrupted wait_any calls: a message to itself went wrong")
print("counts:", counts, flush=True)
