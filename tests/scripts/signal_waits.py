"""A rank's waits on non-blocking receives, split again and again by an error a signal handler
raises (as Ctrl-C's KeyboardInterrupt is): SIGALRM every 0.3 ms raises Tick while armed, around
`Work.wait`, `wait_all` and `wait_any` alone; first, every time, the handler itself waits 0.1 ms
for a receive outstanding until the end, and waits a handle done at once (a handler that waits
on a handle while the main thread is in a wait must not block on it). Each interrupted wait is tried again (a handle stays
valid); every message must arrive, in order, and nothing else be raised. Rank 0 sends COUNT
messages per kind of wait, 2 ms apart. Rank 1 prints `ticks <k> other <k> ok <bool>`."""

import signal
import sys
import time

import numpy as np

import ringdist as rd

g = rd.init()
COUNT = int(sys.argv[1])
WAITS = {"wait": lambda w: w.wait(timeout=10), "wait_all": lambda w: rd.wait_all([w], timeout=10)[0],
         "wait_any": lambda w: rd.wait_any([w], timeout=10)[1]}


class Tick(Exception):
    pass


armed = False
spare = None
depth = 0  # handlers running, one inside another's wait: at most NESTED wait (a loaded machine
NESTED = 3  # runs a handler for longer than the interval: nested without end, a RecursionError)


def tick(*_: object) -> None:
    global armed, depth
    if spare is not None and depth < NESTED:
        depth += 1
        try:
            spare.wait(timeout=0.0001)
        except rd.RingTimeoutError:
            pass
        finally:
            depth -= 1
        rd.send(np.zeros(1), None, async_op=True).wait()  # (a handle done at once, waited a first time)
    if armed:  # (disarmed here: the next tick, maybe in a handler of this one, raises nothing until re-armed)
        armed = False
        raise Tick()


if g.rank() == 0:
    for _ in WAITS:
        for k in range(COUNT):
            time.sleep(0.002)
            rd.send(np.full(2, k), 1)
    rd.send(np.full(1, -1), 1, tag=5)
else:
    spare = rd.recv((1,), np.int64, 0, tag=5, async_op=True)
    signal.signal(signal.SIGALRM, tick)
    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
    ticks = other = 0
    got = []
    for name, wait in WAITS.items():
        for k in range(COUNT):
            w = rd.recv((2,), np.int64, 0, async_op=True)
            while True:
                try:
                    armed = True
                    value = wait(w)
                    armed = False
                    got.append(int(value[0]))
                    break
                except Tick:
                    armed = False
                    ticks += 1
                except Exception as exc:  # noqa: BLE001 (what the test looks for)
                    armed = False
                    other += 1
                    print(f"{name}: {type(exc).__name__}: {exc}", flush=True)
                    break
    signal.setitimer(signal.ITIMER_REAL, 0)
    last = spare.wait(timeout=10)
    print(f"ticks {ticks} other {other} ok {got == list(range(COUNT)) * len(WAITS) and last.tolist() == [-1]}",
          flush=True)
rd.barrier()
