"""Deadlines and kernel waits: any timeout, `inf` included, without overflowing a system call.

Timeouts are seconds (float); `math.inf` means no limit. A deadline is an absolute
`time.monotonic()` value, `math.inf` for none. The kernel's waits take bounded
arguments (`poll` an int of milliseconds, socket timeouts a `time_t`), so every wait
here is cut into slices of at most `MAX_WAIT` seconds: a caller loops until its
deadline really passes, and a long timeout is never an `OverflowError`.
"""

from __future__ import annotations

import math
import numbers
import socket
import threading
import time

MAX_WAIT = 3600.0  # the longest single kernel wait, in seconds; longer waits take several
# The longest `threading` or `poll` wait on the main thread. A signal the kernel hands another
# thread has its Python handler run on the main thread only once that thread runs again (a
# wait is cut short only by a signal to its own thread): Ctrl-C during a wait on a Work handle
# waited for the operation to end.
MAIN_THREAD_WAIT = 0.1


def after(seconds: float) -> float:
    """The deadline `seconds` from now (`inf` for no limit)."""
    return math.inf if seconds == math.inf else time.monotonic() + seconds


def left(deadline: float) -> float:
    """Seconds until `deadline` (`inf` for none; <= 0 once it has passed)."""
    return math.inf if deadline == math.inf else deadline - time.monotonic()


def _cut(seconds: float) -> float:
    """`seconds`, at most `MAX_WAIT`, and on the main thread at most MAIN_THREAD_WAIT (looked at
    only for a longer wait: a short one, a collective's, pays nothing)."""
    if seconds > MAIN_THREAD_WAIT and threading.current_thread() is threading.main_thread():
        return MAIN_THREAD_WAIT
    return min(seconds, MAX_WAIT)


def poll_ms(seconds: float) -> int:
    """A `poll()` argument for a wait of `seconds`: rounded up, at least 0, at most `MAX_WAIT`,
    and on the main thread at most MAIN_THREAD_WAIT (the caller loops; see it)."""
    if not seconds > 0:
        return 0
    return math.ceil(_cut(seconds) * 1000)


def wait_slice(seconds: float) -> float:
    """A `threading` or `select` wait of `seconds`, at most `MAX_WAIT` (the caller loops)."""
    return max(0.0, min(seconds, MAX_WAIT))


def thread_wait(seconds: float) -> float:
    """A `threading` wait of `seconds` (the caller loops): `wait_slice`, and on the main thread
    at most MAIN_THREAD_WAIT."""
    return max(0.0, _cut(seconds))


def socket_wait(deadline: float) -> float | None:
    """A socket timeout for one blocking call before `deadline`: None (block) without a deadline.

    Raises `socket.timeout` once the deadline has passed. A slice shorter than what is
    left ends in `socket.timeout` too: callers check `passed(deadline)` and retry. On the main
    thread at most MAIN_THREAD_WAIT, without a deadline too.
    """
    if deadline == math.inf:
        return MAIN_THREAD_WAIT if threading.current_thread() is threading.main_thread() else None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("deadline passed")
    return _cut(remaining)


# A wait that comes back this many seconds later than it asked (a spin, a poll) was stopped: the
# process was suspended (Ctrl-Z, SIGSTOP: `ringdist-launch` suspends every rank) or not run at
# all meanwhile. A timeout counts progress, so that time is not counted against a peer: after a
# stop longer than the timeout every waiting rank timed out at once when continued. Waits that
# count so are cut into slices of at most SLICE: none of a slice that was stopped counts (no
# clock tells when in it the stop came), which postpones a timeout by at most SLICE a stop.
SUSPENDED = 1.0
SLICE = 1.0


def stopped_for(began: float, asked: float) -> float:
    """The seconds a wait that began at `began` (`time.monotonic()`) and asked for `asked` seconds
    (at most SLICE) took, where it ran over SUSPENDED past them: the process was stopped at some
    moment of it, and none of it counts; else 0."""
    took = time.monotonic() - began
    return took if took - asked > SUSPENDED else 0.0


def passed(deadline: float) -> bool:
    return deadline != math.inf and time.monotonic() >= deadline


def of_wait(timeout: object) -> tuple[float | None, float]:
    """A wait's `timeout` argument (None: no limit; 0: look once; else `check_timeout`'s) and
    its deadline (`inf` for none)."""
    if timeout is None:
        return None, math.inf
    seconds = 0.0 if timeout == 0 else check_timeout(timeout)  # 0: checked, done or not, alike
    return seconds, after(seconds)


def check_timeout(value: object, what: str = "timeout") -> float:
    """A timeout argument as float seconds: a positive number or `inf`; ValueError naming `what` otherwise."""
    try:
        seconds = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int past float's range: no limit, as inf, if it is positive
        seconds = math.inf if value > 0 else math.nan  # type: ignore[operator]
    if not seconds > 0:  # NaN too
        raise ValueError(f"{what} must be a positive number of seconds (inf: no limit), got {_shown(value)}")
    return seconds


def _shown(value: object) -> str:
    """`value` as an error message shows it: its repr, cut short (an int past 4300 digits has none)."""
    try:
        text = repr(value)
    except ValueError:
        return f"an integer of {value.bit_length()} bits" if isinstance(value, int) else type(value).__name__
    return text if len(text) <= 60 else f"{text[:60]}..."
