"""A blocking call queued behind non-blocking operations, interrupted in its wait by an error
a signal handler raises (as Ctrl-C's KeyboardInterrupt would). Rank 0 (or 1) is interrupted
0.5 s in; its peers come once it has been (a file it makes in the folder argv[2]), however
loaded the machine. Each rank prints what it got."""

import os
import signal
import sys
import time

import numpy as np

import ringdist as rd

MODE, FLAGS = sys.argv[1], sys.argv[2]
ELSEWHERE = MODE.endswith("_elsewhere")  # the signal goes to another thread; its handler runs on the main one
MODE = MODE.removesuffix("_elsewhere")
SLOW = MODE.endswith("_slow")  # the runner acts on the interruption 0.3 s late, as on a loaded machine
MODE = MODE.removesuffix("_slow")
g = rd.init()
r = g.rank()

if SLOW:
    from ringdist import runners

    _on_event = runners.Runner.on_event

    def _late(self: runners.Runner, fd: int, ev: int) -> None:
        time.sleep(0.3)
        _on_event(self, fd, ev)

    runners.Runner.on_event = _late  # type: ignore[method-assign]


class Alarm(Exception):
    pass


def _raise(*_: object) -> None:
    raise Alarm("alarm")


def interrupt_soon() -> None:
    signal.signal(signal.SIGALRM, _raise)
    if ELSEWHERE:
        import threading

        def later() -> None:
            time.sleep(0.5)
            signal.pthread_kill(threading.get_ident(), signal.SIGALRM)

        threading.Thread(target=later, daemon=True).start()
    else:
        signal.setitimer(signal.ITIMER_REAL, 0.5)


def attempt(what: str, call, sent: bool = False) -> None:
    try:
        got = call()
    except Alarm:
        print(f"{what}: interrupted", flush=True)
    except rd.RingError as exc:
        print(f"{what}: {type(exc).__name__}: {exc}", flush=True)
    else:
        shown = None if got is None or sent else got.ravel()[:2].tolist()  # (a send gives its own array back)
        print(f"{what}: got {shown}", flush=True)


def interrupted_now() -> None:
    """The interrupted rank: its peers may come."""
    open(os.path.join(FLAGS, "interrupted"), "w").close()


def after_interruption() -> None:
    """A peer: wait (up to 60 s) until the interrupted rank has been."""
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(FLAGS, "interrupted")) and time.monotonic() < deadline:
        time.sleep(0.05)


def full(v: float, n: int = 4) -> np.ndarray:
    return np.full(n, v, np.float32)


if MODE in ("recv", "recv_any"):  # rank 1 receives; its first blocking one queues behind a tagged irecv
    if r == 1:
        tagged = rd.recv((4,), np.float32, 0, tag=7, async_op=True)
        interrupt_soon()
        if MODE == "recv":
            attempt("first", lambda: rd.recv((4,), np.float32, 0, tag=0))
            interrupted_now()
            attempt("retry", lambda: rd.recv((4,), np.float32, 0, tag=0, timeout=10))
        else:
            attempt("first", lambda: rd.recv_any((4,), np.float32, tag=0)[1])
            interrupted_now()
            attempt("retry", lambda: rd.recv_any((4,), np.float32, tag=0, timeout=10)[1])
        attempt("tagged", lambda: tagged.wait(10))
        attempt("barrier", lambda: rd.barrier(timeout=10))
    else:
        after_interruption()
        rd.send(full(7), 1, tag=7)
        rd.send(full(1), 1)
        rd.send(full(2), 1)
        attempt("barrier", lambda: rd.barrier(timeout=10))
elif MODE in ("recv_open", "recv_open_queued"):  # rank 1's receive waits on a connection already used
    # (inline, or queued behind an irecv from rank 2)
    if r == 1:
        attempt("first", lambda: rd.recv((4,), np.float32, 0))
        other = rd.recv((4,), np.float32, 2, async_op=True) if MODE == "recv_open_queued" else None
        interrupt_soon()
        attempt("second", lambda: rd.recv((4,), np.float32, 0))
        interrupted_now()
        attempt("retry", lambda: rd.recv((4,), np.float32, 0, timeout=10))
        if other is not None:
            attempt("other", lambda: other.wait(10))
    elif r == 0:
        rd.send(full(1), 1)
        after_interruption()
        attempt("send", lambda: rd.send(full(2), 1, timeout=10), sent=True)
    elif MODE == "recv_open_queued":
        after_interruption()
        rd.send(full(3), 1)
    attempt("barrier", lambda: rd.barrier(timeout=10))
    time.sleep(0.5)  # (the peers hear a failure from its rank, not that it left)
elif MODE == "send":  # rank 0's blocking send waits for its pair's turn behind a large isend
    big = np.ones(16 << 20, np.float32)  # 64 MiB: more than the socket buffers hold
    if r == 0:
        first = rd.send(big, 1, async_op=True)
        interrupt_soon()
        attempt("first", lambda: rd.send(full(1), 1), sent=True)
        interrupted_now()
        attempt("second", lambda: rd.send(full(2), 1, timeout=10), sent=True)
        attempt("big", lambda: first.wait(10), sent=True)
    elif r == 1:
        after_interruption()
        attempt("big", lambda: rd.recv(big.shape, np.float32, 0, timeout=10))
        attempt("next", lambda: rd.recv((4,), np.float32, 0, timeout=10))
    attempt("barrier", lambda: rd.barrier(timeout=10))
elif MODE in ("collective_queued", "collective_running"):
    if r == 0:
        if MODE == "collective_queued":
            earlier = rd.all_sum(full(r + 1), async_op=True)  # runs, waiting for the late peers
        else:
            earlier = rd.recv((4,), np.float32, 1, async_op=True)  # a message: the collective runs at once
        interrupt_soon()
        attempt("second", lambda: rd.all_sum(full(10 * (r + 1))))
        interrupted_now()
        attempt("earlier", lambda: earlier.wait(10))
        attempt("retry", lambda: rd.all_sum(full(100 * (r + 1)), timeout=10))
        time.sleep(2)  # (its peers hear the failure from it, not that it left)
    else:
        after_interruption()
        if MODE == "collective_running" and r == 1:
            attempt("send", lambda: rd.send(full(5), 0))
        for k in (1, 10, 100):
            if MODE == "collective_running" and k == 1:
                continue
            attempt(f"x{k}", lambda: rd.all_sum(full(k * (r + 1)), timeout=20))
else:
    raise SystemExit(f"unknown mode {MODE}")
print("end", flush=True)
