"""The `Work` handle of an operation issued with `async_op=True`, and the handles not yet
reported: a failed handle never waited is logged ("ringdist" logger) when it is collected,
or at exit (`work`)."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Callable

from . import deadlines, wire
from .errors import RingTimeoutError, known

log = logging.getLogger("ringdist")

lock = threading.Lock()  # guards `unreported` and the job queue (`jobs`); a forked child makes its own
unreported: "weakref.WeakSet[Work]" = weakref.WeakSet()  # every handle not yet reported as failed
at_exit_first: "list[Callable[[], None]]" = []  # what the exit hook (`work`) runs before it ends the rest


class Work:
    """The handle of an operation issued with `async_op=True`.

    `wait(timeout=None)` returns its result (None for barrier; a send's own array) or raises its error;
    `done()` says whether it has finished. Handles may be waited in any order, and again.
    """

    __slots__ = ("op", "gid", "rank", "_event", "_result", "_error", "_waited", "_finish", "_finish_lock",
                 "_hooks", "__weakref__")

    def __init__(self, op: str, g: Any):
        self.op = op
        self.gid = g.gid
        self.rank = g.rank()
        self._event = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._waited = False
        self._finish: Callable[[Any, BaseException | None], Any] | None = None
        self._finish_lock: threading.Lock | None = None
        # Called once it completes (`joined`, `until_done`): appended and removed without a lock
        # (single list operations, atomic in CPython), read after the event is set.
        self._hooks: list[Callable[[], None]] = []

    def then(self, finish: Callable[[Any, BaseException | None], Any]) -> None:
        """Have the first `wait` turn the outcome into its result with `finish(result, error)`, on
        the waiting thread (a received object is unpickled there, not on the progress thread); it
        may raise instead, and an `error` it lets pass is raised still."""
        self._finish, self._finish_lock = finish, threading.Lock()

    def __repr__(self) -> str:
        state = "done" if self._event.is_set() else "outstanding"
        return f"<ringdist.Work {wire.called_as(self.op)} on group {self.gid!r} rank {self.rank} ({state})>"

    def done(self) -> bool:
        """Whether the operation has finished (with a result or an error)."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """The operation's result, or its error raised; after `timeout` seconds (None: no limit)
        a RingTimeoutError says it is still outstanding, and the handle stays valid."""
        timeout, deadline = deadlines.of_wait(timeout)  # checked done or not: the same call always raises
        if not self._event.is_set() and not until_done([self], deadline):
            raise known(RingTimeoutError(f"rank {self.rank}: {wire.called_as(self.op)} on group {self.gid!r} is "
                                         f"still outstanding after wait(timeout={timeout:g})"),
                        rank=self.rank, group=self.gid, op=self.op)
        # Waited: its failure is the caller's now (`report` looks at this; the handle may stay in
        # `unreported`, a weak set, taken with no lock: a signal handler that waits on a handle
        # while its thread holds `lock` would wait on itself).
        self._waited = True
        if self._finish_lock is not None:
            with self._finish_lock:  # once, whichever thread waits first; the others see its outcome
                finish, self._finish = self._finish, None
                if finish is not None:
                    try:
                        self._result = finish(self._result, self._error)
                    except BaseException as exc:  # noqa: BLE001 - the operation's error, as any other
                        self._result, self._error = None, exc
        if self._error is not None:
            raise self._error
        return self._result

    def complete(self, result: Any, error: BaseException | None) -> None:
        """Record the outcome and wake every waiter (its event set before its hooks are read: a
        waiter hooks, then looks at the event, so none is missed)."""
        self._result, self._error = result, error
        if error is None:
            unreported.discard(self)
        self._event.set()
        for hook in tuple(self._hooks):
            hook()

    def fail_in_child(self, error: BaseException) -> None:
        """In a forked child: the handle of the parent's operation, failed, and the parent's to report."""
        self._error = error
        self._event = threading.Event()
        self._event.set()
        self._waited = True
        for hook in tuple(self._hooks):  # a handle joined with it fails with it (`joined`)
            hook()
        self._hooks.clear()  # (the parent's threads' waits, which this process has not)

    def report(self) -> None:
        """Log the error of a failed handle never waited (once)."""
        if self._error is not None and not self._waited:
            self._waited = True
            log.error("rank %d: %s on group %r failed and was never waited: %s: %s", self.rank, self.op,
                      self.gid, type(self._error).__name__, self._error)

    def __del__(self) -> None:
        try:
            self.report()
        except Exception:  # noqa: BLE001 - at interpreter exit logging may be gone
            pass


def done(op: str, g: Any, result: Any = None, error: BaseException | None = None) -> Work:
    """A handle done at once with `result` or `error` (a failed one is reported if never waited)."""
    work = Work(op, g)
    if error is not None:
        with lock:
            unreported.add(work)
    work.complete(result, error)
    return work


def joined(main: Work, other: Work, op: str, g: Any) -> Work:
    """One handle for two operations (a sendrecv's receive and send): done with `main`'s result
    once both are done, or with the first error as soon as either fails (the other, if still
    outstanding, goes on unreported). The two are reported through it alone."""
    both = Work(op, g)
    once = threading.Lock()

    def settle() -> None:
        errors = [w._error for w in (main, other) if w._event.is_set() and w._error is not None]
        if not errors and not (main._event.is_set() and other._event.is_set()):
            return
        if once.acquire(False):
            both.complete(None if errors else main._result, errors[0] if errors else None)

    with lock:
        _join(both, (main, other), settle)
        settle()  # either may be done already (set before its hooks are read, as `complete` does: none is missed)
    return both


def _join(both: Work, works: "tuple[Work, Work]", settle: Callable[[], None]) -> None:
    """`works` reported through `both`, each settling it as it completes (under `lock`; a loop of
    its own: Python 3.13 looks for signals at a loop's back-edge, and an exception a signal
    handler raises at some of them (Ctrl-C) skipped the `with` block's __exit__, leaving its
    lock held (CPython issue 130279); a call inside the block is covered)."""
    unreported.add(both)
    for w in works:
        w._waited = True
        unreported.discard(w)
        w._hooks.append(settle)


def forget(work: Work) -> None:
    """Never report `work`'s failure: its caller raised another error for the same operation."""
    with lock:
        work._waited = True
        unreported.discard(work)


def wait_any(works: "list[Work]", timeout: float | None = None) -> tuple[int, Any]:
    """`(i, result)`: the first of `works` (in list order) that is done, and its result, waiting
    for one to finish (MPI's Waitany); its error is raised instead if it failed, with the
    handle's position as the error's `index`. After `timeout` seconds (None: no limit)
    RingTimeoutError says none has finished, and every handle stays valid."""
    works = list(works)
    if not works or not all(isinstance(w, Work) for w in works):
        raise TypeError("wait_any: works must be a non-empty sequence of ringdist Work handles")
    timeout, deadline = deadlines.of_wait(timeout)
    if not until_done(works, deadline, every=False):
        raise RingTimeoutError(f"rank {works[0].rank}: wait_any: none of {len(works)} operations "
                               f"finished within wait_any(timeout={timeout:g})")
    i, w = next((i, w) for i, w in enumerate(works) if w._event.is_set())
    try:
        return i, w.wait()
    except Exception as exc:
        exc.index = i  # type: ignore[attr-defined]  (which handle failed, as MPI's Waitany says)
        raise


def until_done(works: "list[Work]", deadline: float, every: bool = True) -> bool:
    """Wait until every one of `works` is done (`every=False`: any one), or `deadline` passes
    (`deadlines`); whether they are. Woken by a hook each handle calls as it completes: a bare
    lock, released there and taken here in single calls, which an exception a signal handler
    raises (Ctrl-C) leaves as it was. (threading's Event and Condition wait in a `with` of
    their own lock: one split by such an exception released it twice, a RuntimeError in place
    of the interruption, or stayed held, and every completion after it waited forever.) No
    lock is taken to hook or unhook: a handler that waits on a handle while the main thread
    is here goes on. Handles never come undone, so `every` looks at each once (linear)."""
    works = list(works)
    first = _first_outstanding(works, 0) if every else None
    if first == len(works) or (not every and any(w._event.is_set() for w in works)):
        return True
    woken = threading.Lock()
    woken.acquire()

    def wake() -> None:
        try:
            woken.release()
        except RuntimeError:  # (woken already)
            pass

    wake.ended = False  # type: ignore[attr-defined]  (set once this wait is over: `_prune`)
    try:
        for w in works:
            _prune(w)
            w._hooks.append(wake)  # (before the check below: a completion after it wakes this)
        while True:
            if every:
                first = _first_outstanding(works, first)  # type: ignore[arg-type]
                if first == len(works):
                    return True
            elif any(w._event.is_set() for w in works):
                return True
            if deadlines.passed(deadline):
                return False
            woken.acquire(timeout=deadlines.thread_wait(deadlines.left(deadline)))
    finally:
        wake.ended = True  # type: ignore[attr-defined]
        for w in works:
            _unhook(w, wake)


def _first_outstanding(works: "list[Work]", start: int) -> int:
    """The index of the first of `works` from `start` not yet done (len(works): none)."""
    while start < len(works) and works[start]._event.is_set():
        start += 1
    return start


def _unhook(work: Work, wake: Callable[[], None]) -> None:
    try:
        work._hooks.remove(wake)
    except ValueError:  # (never hooked: interrupted before)
        pass


def _prune(work: Work) -> None:
    """Drop the hooks of waits that ended without unhooking (an exception a signal handler
    raised as they did): each would hold a lock as long as the handle."""
    for hook in tuple(work._hooks):
        if getattr(hook, "ended", False):
            _unhook(work, hook)


def wait_all(works: "list[Work]", timeout: float | None = None) -> list[Any]:
    """Every handle's result, in order, once all of `works` are done (MPI's Waitall); if any
    failed, the first error in list order is raised, after all have finished, with that
    handle's position as its `index`. After `timeout`
    seconds (None: no limit) RingTimeoutError names how many are still outstanding."""
    works = list(works)
    if not all(isinstance(w, Work) for w in works):
        raise TypeError("wait_all: works must be a sequence of ringdist Work handles")
    timeout, deadline = deadlines.of_wait(timeout)
    if works and not until_done(works, deadline):
        outstanding = sum(not x.done() for x in works)
        raise RingTimeoutError(f"rank {works[0].rank}: wait_all: {outstanding} of {len(works)} operations "
                               f"still outstanding after wait_all(timeout={timeout:g})")
    results, first = [], None
    for i, w in enumerate(works):
        try:
            results.append(w.wait())
        except Exception as exc:  # raised below, once every handle is looked at (an interrupt goes at once)
            results.append(None)
            if first is None:
                first = exc
                first.index = i  # type: ignore[attr-defined]
    if first is not None:
        raise first
    return results


def after_fork_in_child() -> None:
    """A forked child's handles: a fresh lock; the parent's handles are the parent's to report."""
    global lock
    lock = threading.Lock()
    for work in list(unreported):
        work._waited = True
    unreported.clear()
