"""Non-blocking operations: `Work` handles, the job queue, and one progress thread per process.

Every collective and send/recv takes `async_op=True` (torch's name; mpi4py's `I*` calls):
the call returns a `Work` at once and the operation runs on the progress thread, started on
first use (a process that never asks starts none). Its inputs must not be changed until
`wait()` returns, as in MPI.

Order: the thread starts jobs in issue order. Collectives run one at a time, so a group's
collectives complete in issue order, and so do the messages of a pair in one direction; a
send or recv does not hold up a later collective (as in MPI: `irecv; barrier; send; wait`
would deadlock if the barrier waited for the irecv). A blocking call on a group with
operations outstanding queues behind them and waits for its own completion; with none
outstanding it runs inline as ever.

Deadlock freedom: a collective runs on the thread as it would inline (it blocks the
thread), but point-to-point jobs do not: their flows are built when they start (a recv
whose connection has not arrived yet tries again every few milliseconds) and then move in
the background, driven by the thread's own loop and, while a collective runs on the
thread, by the engine's poll loop too (`engine.set_background`). So a ring of isends
larger than the socket buffers, or an isend followed by a collective, keeps moving.

Failures: an operation's error (carried to every rank by the ABORT machinery) is raised
by its `wait()`; later operations of the group find it broken (GroupBrokenError). A failed
handle never waited is logged ("ringdist" logger) when collected, or at exit. Closing a
group, or exiting, with operations outstanding ends them with a RingError.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Protocol

from . import aborts, channel, comm as comm_module, deadlines, engine, forks
from .channel import Channel
from .comm import Comm
from .errors import GroupBrokenError, PeerLostError, RingError, RingTimeoutError
from .flows import Inflow, Outflow, Watch

log = logging.getLogger("ringdist")

HERE = object()  # route's answer: run the operation inline, here and now
CLOSE_WAIT = 5.0  # seconds a close (or exit) waits for the thread to end a group's operations
JOIN_WAIT = 2.0  # seconds exit waits for the thread itself
CONNECT_RETRY = 0.005  # seconds between tries of a recv whose connection has not arrived

active = False  # True once any operation was issued with async_op=True (read by every public call)

_lock = threading.Lock()
_queue: "deque[_Job]" = deque()  # issued, not yet started
_pending: "dict[Comm, list[_Job]]" = {}  # per group: issued, not yet done
_closing: "set[Comm]" = set()  # groups whose operations are being ended
_thread: threading.Thread | None = None
_thread_id: int | None = None
_stopping = False
_wake_r = _wake_w = -1
_woken = False  # a byte is in the wake-up pipe, unread
_works: "weakref.WeakSet[Work]" = weakref.WeakSet()  # every handle not yet reported as failed


class Plan(Protocol):
    """A point-to-point operation as the thread runs it (see `p2p`)."""

    op: str
    peer: int
    outgoing: bool
    ch: Channel | None
    inflows: list[Inflow]
    outflows: list[Outflow]

    def start(self) -> float: ...  # validate and allocate; the timeout in seconds
    def open(self, wait: bool) -> bool: ...  # the channel and the flows; False: not yet arrived
    def result(self) -> Any: ...


class Work:
    """The handle of an operation issued with `async_op=True`.

    `wait(timeout=None)` returns its result (None for barrier and send) or raises its error;
    `done()` says whether it has finished. Handles may be waited in any order, and again.
    """

    __slots__ = ("op", "gid", "rank", "_event", "_result", "_error", "_waited", "__weakref__")

    def __init__(self, op: str, g: Comm):
        self.op = op
        self.gid = g.gid
        self.rank = g.rank()
        self._event = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._waited = False

    def __repr__(self) -> str:
        state = "done" if self._event.is_set() else "outstanding"
        return f"<ringdist.Work {self.op} on group {self.gid!r} rank {self.rank} ({state})>"

    def done(self) -> bool:
        """Whether the operation has finished (with a result or an error)."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """The operation's result, or its error raised; after `timeout` seconds (None: no limit)
        a RingTimeoutError says it is still outstanding, and the handle stays valid."""
        if not self._event.is_set():
            if timeout is not None and timeout != 0:  # 0: only look
                deadlines.check_timeout(timeout)
            deadline = None if timeout is None else deadlines.after(timeout)
            while not self._event.wait(deadlines.wait_slice(60.0 if deadline is None else deadlines.left(deadline))):
                if deadline is not None and deadlines.passed(deadline):
                    raise RingTimeoutError(f"rank {self.rank}: {self.op} on group {self.gid!r} is still "
                                           f"outstanding after wait(timeout={timeout:g})")
        if not self._waited:
            self._waited = True
            with _lock:
                _works.discard(self)
        if self._error is not None:
            raise self._error
        return self._result

    def _report(self) -> None:
        if self._error is not None and not self._waited:
            self._waited = True
            log.error("rank %d: %s on group %r failed and was never waited: %s: %s", self.rank, self.op,
                      self.gid, type(self._error).__name__, self._error)

    def __del__(self) -> None:
        try:
            self._report()
        except Exception:  # noqa: BLE001 - at interpreter exit logging may be gone
            pass


class _Job:
    __slots__ = ("work", "g", "call", "plan", "finished", "result", "error", "timeout", "since", "opened")

    def __init__(self, work: Work, g: Comm, call: Callable[[Comm], Any], p2p: bool):
        self.work = work
        self.g = g
        self.call = call  # a collective: runs it; point-to-point: makes its Plan
        self.plan: Plan | None = None if not p2p else call(g)
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.timeout = 0.0
        self.since = 0.0  # start of progress, then the last progress
        self.opened = False


def _resolve(group: Any) -> Comm:
    if group is None:
        return comm_module.default_made or comm_module.default()
    if not isinstance(group, Comm):
        raise TypeError(f"group must be a ringdist Group or None, got {type(group).__name__}")
    return group


def route(op: str, group: Any, async_op: bool, call: Callable[[Comm], Any], p2p: bool = False) -> Any:
    """Where a public call runs. HERE: inline (on the progress thread, or blocking on a group
    with nothing outstanding). Otherwise the call is queued: a Work with `async_op`, else its
    result once its turn has come and gone. `call(group)` runs the operation (a collective)
    or returns its Plan (point-to-point, `p2p`); it runs on the progress thread."""
    if _thread_id is not None and _thread_id == threading.get_ident():
        return HERE
    g = _resolve(group)
    if not async_op and g not in _pending:
        return HERE
    work = Work(op, g)
    job = _Job(work, g, call, p2p)
    with _lock:
        _ensure_thread()
        _queue.append(job)
        _pending.setdefault(g, []).append(job)
        _works.add(work)
    _wake()
    return work if async_op else work.wait()


def _ensure_thread() -> None:
    """Start the progress thread and the exit hook (under _lock)."""
    global active, _thread, _thread_id, _wake_r, _wake_w, _stopping
    if _thread is not None:
        return
    if _wake_r < 0:
        _wake_r, _wake_w = os.pipe()
        atexit.register(_at_exit)  # runs before world.shutdown's (registered at import)
    _stopping = False
    flows = _Background()
    _thread = threading.Thread(target=_main, args=(flows,), name="ringdist-progress", daemon=True)
    _thread.start()
    _thread_id = _thread.ident
    flows.owner = _thread.ident
    engine.set_background(flows)
    active = True


def _wake() -> None:
    """Wake the thread (a byte down the pipe; none while one is already there unread)."""
    global _woken
    if not _woken:
        _woken = True
        os.write(_wake_w, b"x")


def _drain_wake() -> None:
    """On the thread, once a poll found the pipe readable (so the read cannot block)."""
    global _woken
    _woken = False
    os.read(_wake_r, 64)


# ---- the progress thread -----------------------------------------------------------------------


class _Background:
    """The point-to-point jobs that have started: one lane per (group, peer, direction), whose
    first job's flows move; the rest wait their turn (messages of a pair go in order)."""

    def __init__(self) -> None:
        self.owner: int | None = None
        self.lanes: dict[tuple, deque[_Job]] = {}
        self.running: _Job | None = None  # the collective running on the thread
        self.deferred: list[_Job] = []  # failed point-to-point jobs of its group: completed after it
        self.watches: dict[int, Watch] = {}  # an outgoing lane's channel, read for the receiver's ABORT

    def add(self, job: _Job) -> None:
        plan = job.plan
        assert plan is not None
        key = (job.g, plan.peer, plan.outgoing)
        lane = self.lanes.setdefault(key, deque())
        lane.append(job)
        if len(lane) == 1:
            job.since = time.monotonic()
            self._open(job)

    def heads(self) -> list[_Job]:
        return [lane[0] for lane in self.lanes.values()]

    def _open(self, job: _Job) -> None:
        plan = job.plan
        if job.g._broken or job.g._closed:  # an earlier operation failed: this one never starts
            try:
                job.g.check_usable(plan.op)  # type: ignore[union-attr]
            except RingError as exc:
                _finished(job, None, exc)
                self._retire(job)
                return
        try:
            job.opened = plan.open(False)  # type: ignore[union-attr]
            if job.opened:
                for flow in plan.inflows:  # type: ignore[union-attr]
                    flow.consume_staged()  # read ahead by the pair's previous message
                for flow in plan.outflows:  # type: ignore[union-attr]
                    flow.pump()
        except BaseException as exc:  # noqa: BLE001 - the job's error
            self._failed(job, exc)
            return
        if job.opened:
            self._check_done(job)

    def masks(self) -> dict[int, int]:
        masks = {_wake_r: engine.POLLIN}
        for job in self.heads():
            plan = job.plan
            if not job.opened:
                continue
            fd = plan.ch.fd  # type: ignore[union-attr]
            mask = 0
            for flow in plan.inflows:
                if not flow.done:
                    mask |= engine.POLLIN
            for flow in plan.outflows:
                if not flow.done:
                    mask |= engine.POLLIN if not self._watch(plan.ch).done else 0  # type: ignore[arg-type]
                    if flow.blocked:
                        mask |= engine.POLLOUT
            if mask:
                masks[fd] = mask
        return masks

    def _watch(self, ch: Channel) -> Watch:
        watch = self.watches.get(ch.fd)
        if watch is None or watch.ch is not ch:
            watch = self.watches[ch.fd] = Watch(ch, "send", None)
        return watch

    def pump(self) -> None:
        for job in self.heads():
            if job.opened:
                for flow in job.plan.outflows:  # type: ignore[union-attr]
                    if not flow.done and not flow.blocked:
                        try:
                            if flow.pump():
                                job.since = time.monotonic()
                        except BaseException as exc:  # noqa: BLE001 - the job's error
                            self._failed(job, exc)
                            break
                else:
                    self._check_done(job)

    def on_event(self, fd: int, ev: int) -> None:
        if fd == _wake_r:
            _drain_wake()
            _end_closing(self)
            return
        for job in self.heads():
            plan = job.plan
            if not job.opened or plan.ch.fd != fd:  # type: ignore[union-attr]
                continue
            try:
                if ev & (engine.POLLIN | engine.POLLERR):
                    for flow in plan.inflows:  # type: ignore[union-attr]
                        if not flow.done and flow.on_readable():
                            job.since = time.monotonic()
                    if plan.outflows:  # type: ignore[union-attr]
                        watch = self._watch(plan.ch)  # type: ignore[arg-type]
                        if not watch.done:
                            watch.on_readable()
                if ev & (engine.POLLOUT | engine.POLLERR):
                    for flow in plan.outflows:  # type: ignore[union-attr]
                        flow.blocked = False
            except BaseException as exc:  # noqa: BLE001 - the job's error
                self._failed(job, exc)
                return
            self._check_done(job)
            return

    def tick(self) -> None:
        """Try again the recvs whose connection had not arrived; time out stalled jobs."""
        now = time.monotonic()
        for job in self.heads():
            if not job.opened:
                self._open(job)
                if job.opened or job.finished:
                    continue
            if now - job.since > job.timeout:
                plan = job.plan
                if job.opened:
                    message = engine.stall_message(plan.inflows, plan.outflows, plan.op,  # type: ignore[union-attr]
                                                   job.g.rank(), job.timeout)
                else:
                    message = (f"rank {job.g.rank()}: recv in group {job.g.gid!r}: waiting for rank "
                               f"{plan.peer} to send: no connection arrived in time")  # type: ignore[union-attr]
                self._failed(job, RingTimeoutError(message))

    def max_wait(self) -> float | None:
        heads = self.heads()
        if not heads:
            return None
        now = time.monotonic()
        wait = min(job.since + job.timeout - now for job in heads)
        if any(not job.opened for job in heads):
            wait = min(wait, CONNECT_RETRY)
        return max(wait, 0.0)

    def _check_done(self, job: _Job) -> None:
        plan = job.plan
        if all(f.done for f in plan.inflows) and all(f.done for f in plan.outflows):  # type: ignore[union-attr]
            _finished(job, plan.result(), None)  # type: ignore[union-attr]
            self._retire(job)

    def _retire(self, job: _Job) -> None:
        plan = job.plan
        key = (job.g, plan.peer, plan.outgoing)  # type: ignore[union-attr]
        lane = self.lanes.get(key)
        if lane is None or job not in lane:
            return  # already retired
        was_head = lane[0] is job
        lane.remove(job)
        if not lane:
            del self.lanes[key]
        elif was_head:
            lane[0].since = time.monotonic()
            self._open(lane[0])

    def _failed(self, job: _Job, exc: BaseException) -> None:
        """A point-to-point job failed: break its group and tell the peers, as a blocking one does."""
        plan = job.plan
        g = job.g
        ch = plan.ch  # type: ignore[union-attr]
        breaks = ch is not None and not getattr(exc, "ringdist_closed", False)  # as a blocking one would
        running_here = self.running is not None and self.running.g is g
        if breaks:
            if isinstance(exc, PeerLostError):
                # Why the peer left, if it said so: on this channel, or (when no collective of
                # the group is reading them) on the group's own connections.
                look = [ch] + (g.channels if g.ring is not None and not running_here else [])
                try:
                    aborts.pending_abort(look, plan.op)  # type: ignore[union-attr]
                except RingError as reason:
                    exc = reason
            tell = [ch] + (g.channels if g.ring is not None and not running_here else [])
            g._fail(plan.op, tell, None, plan.outflows, exc)  # type: ignore[union-attr]
        if breaks and running_here:
            # The collective on the thread shares the group: it fails too and tells the peers
            # (looking first for the ABORT that says why the peer left); `_start` completes both.
            job.error = exc
            self.deferred.append(job)
            self._retire(job)  # the next message of the lane finds the group broken
            raise exc
        _finished(job, None, exc)
        self._retire(job)

    def drop(self, g: Comm, reason: Callable[[str], BaseException]) -> None:
        """End every started point-to-point job of group `g`."""
        for key in [k for k in self.lanes if k[0] is g]:
            for job in self.lanes.pop(key):
                _finished(job, None, reason(job.plan.op))  # type: ignore[union-attr]


def _closed_error(g: Comm, exiting: bool) -> Callable[[str], BaseException]:
    """The error of an operation ended because its group closed (or the process exited) first."""
    def make(op: str) -> BaseException:
        exc = RingError(f"rank {g.rank()}: {op} on group {g.gid!r}: closed with the operation outstanding"
                        f"{' (the process is exiting)' if exiting else ''}")
        exc.ringdist_closed = True  # type: ignore[attr-defined]
        return exc
    return make


def _finished(job: _Job, result: Any, error: BaseException | None) -> None:
    """Record an operation's outcome and complete its handle. (Collectives finish in issue
    order, one after another on the thread; messages of a pair in one direction too.)"""
    job.finished, job.result, job.error = True, result, error
    work = job.work
    with _lock:
        jobs = _pending.get(job.g)
        if jobs is not None:
            jobs.remove(job)
            if not jobs:
                del _pending[job.g]
        work._result, work._error = result, error
        if error is None:
            _works.discard(work)
        work._event.set()


def _end_closing(flows: _Background) -> None:
    """End the operations of groups being closed (on the thread; raises into a collective of one)."""
    with _lock:
        closing = list(_closing)
        queued = [job for job in _queue if job.g in _closing]
        for job in queued:
            _queue.remove(job)
    for g in closing:
        why = _closed_error(g, _stopping)
        flows.drop(g, why)
        for job in queued:
            if job.g is g:
                _finished(job, None, why(job.work.op))
    running = flows.running
    if running is not None and running.g in closing:
        raise _closed_error(running.g, _stopping)(running.work.op)


def _main(flows: _Background) -> None:
    global _thread, _thread_id
    try:
        _loop(flows)
    except BaseException as exc:  # noqa: BLE001 - a defect here must not leave waits hanging
        log.exception("ringdist: the progress thread failed")
        with _lock:
            jobs = [job for lane in _pending.values() for job in lane]
            _queue.clear()
            _thread = _thread_id = None  # the next async call starts a new one
        for job in jobs:
            if not job.finished:
                _finished(job, None, RingError(f"rank {job.g.rank()}: {job.work.op} on group {job.g.gid!r}: "
                                               f"the progress thread failed: {type(exc).__name__}: {exc}"))


def _loop(flows: _Background) -> None:
    poller = select.poll()
    registered: dict[int, int] = {}
    while True:
        if _closing:
            _end_closing(flows)
        with _lock:
            job = _queue.popleft() if _queue else None
            if job is None and _stopping:
                break
        if job is not None:
            _start(flows, job)
            continue
        registered = engine.sync_fds(poller, registered, flows.masks())
        wait = flows.max_wait()
        events = poller.poll(None if wait is None else deadlines.poll_ms(wait))
        for fd, ev in events:
            flows.on_event(fd, ev)
        flows.tick()
        flows.pump()


def _start(flows: _Background, job: _Job) -> None:
    if job.g in _closing:
        _finished(job, None, _closed_error(job.g, _stopping)(job.work.op))
        return
    if job.plan is not None:
        try:
            job.timeout = job.plan.start()
        except BaseException as exc:  # noqa: BLE001 - the job's error
            _finished(job, None, exc)
            return
        flows.add(job)
        return
    flows.running = job
    try:
        result = job.call(job.g)
    except BaseException as exc:  # noqa: BLE001 - the job's error
        flows.running = None
        deferred, flows.deferred = flows.deferred, []
        for earlier in deferred:  # a send or recv of the group failed while this collective ran
            cause = earlier.error
            if isinstance(cause, PeerLostError) and getattr(exc, "ringdist_origin", None):
                cause = exc  # the ABORT found on the group's connections says why the peer left
            _finished(earlier, None, cause)
            exc = GroupBrokenError(f"rank {job.g.rank()}: group {job.g.gid!r} cannot run {job.work.op}: an "
                                   f"earlier operation failed ({earlier.plan.op}: "  # type: ignore[union-attr]
                                   f"{type(cause).__name__}: {cause})")
        _finished(job, None, exc)
        return
    flows.running = None
    deferred, flows.deferred = flows.deferred, []
    for earlier in deferred:  # (a collective that swallowed the raise: none do, but never lose one)
        _finished(earlier, None, earlier.error)
    _finished(job, result, None)


# ---- closing, exit and fork ---------------------------------------------------------------------


def before_close(g: Comm, why: str = "closed") -> None:
    """End group `g`'s outstanding operations (a RingError at their wait) before it closes."""
    jobs = list(_pending.get(g, ()))
    if not jobs or _thread is None:
        return
    if _thread_id == threading.get_ident():
        return  # closed from an operation on the thread: its own jobs end as they fail
    with _lock:
        _closing.add(g)
    _wake()
    deadline = deadlines.after(CLOSE_WAIT)
    for job in jobs:
        job.work._event.wait(max(0.0, deadlines.left(deadline)))
    with _lock:
        _closing.discard(g)


def _at_exit() -> None:
    """End every outstanding operation, stop the thread (bounded), log failures never waited."""
    global _stopping, _thread, _thread_id, active
    thread = _thread
    if thread is None:
        for work in list(_works):  # the thread failed: what it left is reported all the same
            work._report()
        return
    with _lock:
        _stopping = True
        _closing.update(_pending)
        lasts = [job.work for jobs in _pending.values() for job in jobs]
    _wake()
    deadline = deadlines.after(CLOSE_WAIT)
    for work in lasts:
        work._event.wait(max(0.0, deadlines.left(deadline)))
    thread.join(JOIN_WAIT)
    if thread.is_alive():
        log.error("ringdist: the progress thread did not stop within %g s", CLOSE_WAIT + JOIN_WAIT)
    for work in list(_works):
        if work.done():
            work._report()
        else:
            log.error("rank %d: %s on group %r was still outstanding at exit", work.rank, work.op, work.gid)
    engine.set_background(None)
    _thread = None
    _thread_id = None
    active = False


def _after_fork_in_child() -> None:
    """A forked child has no progress thread: forget its jobs (their handles fail) and start afresh."""
    global _thread, _thread_id, active, _lock, _wake_r, _wake_w, _stopping, _woken
    _lock = threading.Lock()
    for lane in _pending.values():
        for job in lane:
            job.work._error = RingError(f"{job.work.op} on group {job.work.gid!r} was issued by process "
                                        f"{forks.parent()}; a forked child cannot wait for it")
            job.work._event = threading.Event()
            job.work._event.set()
    for work in list(_works):
        work._waited = True  # the parent's to report, not the child's
    _works.clear()
    _pending.clear()
    _queue.clear()
    _closing.clear()
    _thread = None
    _thread_id = None
    _stopping = False
    active = False
    engine.set_background(None)
    for fd in (_wake_r, _wake_w):
        if fd >= 0:
            channel.close_quietly(fd)
    _wake_r = _wake_w = -1
    _woken = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
