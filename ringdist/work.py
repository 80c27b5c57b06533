"""Non-blocking operations: `Work` handles, the job queue, and the threads that run them.

Every collective and send/recv takes `async_op=True` (torch's name; mpi4py's `I*` calls):
the call returns a `Work` at once and the operation runs on another thread, started on
first use (a process that never asks starts none). Its inputs must not be changed until
`wait()` returns, as in MPI.

Where: a collective on its group's runner (`runners`: a thread per group, so groups never
wait for each other, whatever order ranks issue them in); a send or recv on the one
progress thread, whose loop moves every started message in the background.

Order: a runner runs its group's collectives one at a time, in issue order; the progress
thread starts messages in issue order, and the messages of a pair in one direction complete
in issue order. A send or recv does not hold up a later collective (as in MPI: `irecv;
barrier; send; wait` would deadlock if the barrier waited for the irecv). A blocking call
on a group with operations outstanding queues behind them and waits for its own completion;
with none outstanding it runs inline as ever.

Deadlock freedom: a collective runs on its runner as it would inline (it blocks that
thread), but point-to-point jobs never block the progress thread: their flows are built when
they start (a recv whose connection has not arrived yet tries again every few milliseconds)
and then move in the background. So a ring of isends larger than the socket buffers, or an
isend followed by a collective, keeps moving.

Modules: `handle` (the Work handle), `jobs` (the queue of issued operations), `lanes`
(background send/recv), `runners` (each group's collectives), this one (where a call runs,
the progress thread's loop, exit and fork).

Failures: an operation's error (carried to every rank by the ABORT machinery) is raised
by its `wait()`; later operations of the group find it broken (GroupBrokenError). A failed
handle never waited is logged ("ringdist" logger) when collected, or at exit. Closing a
group, or exiting, with operations outstanding ends them with a RingError.
"""

from __future__ import annotations

import atexit
import os
import select
import threading
import time
from typing import Any, Callable

from . import channel, comm as comm_module, deadlines, engine, forks, handle, jobs, runners, wire
from .calls import check_flag
from .comm import Comm
from .handle import Work, log
from .jobs import Job
from .lanes import Lanes

__all__ = ["HERE", "Work", "active", "before_close", "route"]

HERE = object()  # route's answer: run the operation inline, here and now
CLOSE_WAIT = 5.0  # seconds a close (or exit) waits for the thread to end a group's operations
JOIN_WAIT = 2.0  # seconds exit waits for the thread itself

active = False  # True once any operation was issued with async_op=True (read by every public call)

_thread: threading.Thread | None = None
_stopping = False
_wake_r = _wake_w = -1
_woken = False  # a byte is in the wake-up pipe, unread


def _resolve(group: Any, op: str | None = None) -> Comm:
    if group is None:
        return comm_module.default_made or comm_module.default()
    if not isinstance(group, Comm):
        raise comm_module.not_a_group(group, op)
    return group


def route(op: str, group: Any, async_op: bool, call: Callable[[Comm], Any], p2p: bool = False,
          finish: Callable[[Any, BaseException | None], Any] | None = None) -> Any:
    """Where a public call runs. HERE: inline (on a thread of non-blocking operations, or
    blocking on a group with nothing outstanding). Otherwise the call is queued: a Work with
    `async_op`, else its result once its turn has come and gone. `call(group)` runs the
    operation or returns its Plan (point-to-point, `p2p`). A collective runs on its group's
    runner (`runners`); a Plan on the progress thread. `finish`: see `Work.then`."""
    global active
    if engine.on_progress_thread():
        return HERE
    g = _resolve(group, op)
    if async_op is not True and async_op is not False:
        call, async_op = _checked_async_op(g, op, async_op, p2p, call)
    if not async_op and g not in jobs.pending:
        return HERE
    work = Work(op, g)
    if finish is not None:
        work.then(finish)
    job = Job(work, g, call, p2p)
    try:
        with handle.lock:
            _ensure_exit_hook(g, op)
            active = True
            if p2p:
                _ensure_thread()
                jobs.issue(job)
            else:
                job.on_runner = True
                runners.submit(job)  # first: if no runner can start (no file, no thread), nothing is left pending
                jobs.issue(job, queued=False)
        if p2p:
            _wake()
        if async_op:
            return work
        return work.wait()
    except BaseException as exc:  # (an interruption from its issue on: the issued job must not go on unseen)
        if not work.done() and (job.on_runner or job in jobs.pending.get(g, ())):
            interrupted(job, exc)
        raise


def interrupted(job: Job, exc: BaseException) -> None:
    """A call queued behind its group's non-blocking operations was interrupted (`exc`:
    KeyboardInterrupt, a signal handler's error) in its wait, or as it was issued, as a call run
    inline may be. It ends as that one would, never going on unseen (a receive would take a
    message the caller never gets, a collective pair with the peers' call the caller thinks it
    skipped):
    - a message that has not begun (queued, waiting for its pair's turn, or a receive waiting
      for its sender's connection or an any-source one for its first message) is dropped, as if
      never called: a later receive gets the message this one would have;
    - a message under way, or any collective, breaks the group and tells its peers (the
      collective's own thread tells them: at its turn, or at its next wait if it runs).
    A call that finished meanwhile keeps its outcome: the interruption came after it. Only the
    threads running jobs end them (`Lanes.interrupted`, the runner), so a second interruption
    here leaves no job half-ended."""
    job.work._waited = True  # (its error is the interruption, raised by the call)
    with handle.lock:
        handle.unreported.discard(job.work)
        if job.finished:
            return
        job.interrupted = exc
        if not job.on_runner:
            jobs.interrupted.append(job)
    if job.on_runner:
        if runners.interrupted(job):
            _until_ended(job)
    else:
        _wake()


def _until_ended(job: Job) -> None:
    """Wait (up to CLOSE_WAIT) for an interrupted collective running on its runner to end there.

    It may have given its part already (a shared-memory signal, its frames sent): peers that
    come later then need nothing more from this rank, and see its failure only by the ABORT
    its runner sends as it ends. An inline call interrupted has sent that ABORT before its
    error reaches the caller; so must this one, or what the caller does next (tell its peers
    by other means that it gave up, exit) could come first, and a peer's same call return a
    result where this rank's raised. A second interruption ends the wait, not the job."""
    handle.until_done([job.work], deadlines.after(CLOSE_WAIT))


def _checked_async_op(g: Comm, op: str, async_op: Any, p2p: bool,
                      call: Callable[[Comm], Any]) -> tuple[Callable[[Comm], Any], bool]:
    """(call, flag) for an `async_op` that is not True or False: a numpy bool as a bool; anything
    else (a string "False", None) would choose a Work on this rank and an array on its peers, and
    raises TypeError. A message's sends nothing. A collective's is refused on every rank
    (`Comm.refuse`), as its other arguments are, in its turn: behind the group's operations
    issued before it, as a blocking call whose run raises (the peers' calls pair as issued)."""
    try:
        check_flag(async_op, "async_op", g, op)
    except TypeError as exc:
        if p2p:
            raise
        if g not in jobs.pending:
            g.refuse(op, exc)
            raise
        refused = exc
        return (lambda g: _refuse(g, op, refused)), False
    return call, bool(async_op)


def _refuse(g: Comm, op: str, exc: BaseException) -> None:
    g.refuse(op, exc)
    raise exc


def _ensure_exit_hook(g: Comm, op: str) -> None:
    """The exit hook, and the progress thread's wake-up pipe (under handle.lock)."""
    global _wake_r, _wake_w
    if _wake_r < 0:
        _wake_r, _wake_w = channel.make_pipe(f"rank {g.rank()}: {op}")
        atexit.register(_at_exit)  # runs before world.shutdown (`ringdist._at_exit`, registered at import)


def _ensure_thread() -> None:
    """Start the progress thread (under handle.lock)."""
    global _thread, _stopping
    if _thread is not None:
        return
    _stopping = False
    flows = Lanes(_wake_r, _on_wake)
    _thread = threading.Thread(target=_main, args=(flows,), name="ringdist-progress", daemon=True)
    _thread.start()


def _wake() -> None:
    """Wake the thread (a byte down the pipe; none while one is already there unread).
    Callers change what the thread is to see (the queue, `jobs.closing`) before this."""
    global _woken
    if not _woken:
        _woken = True
        os.write(_wake_w, b"x")


def _on_wake(flows: Lanes) -> None:
    """On the thread, once a poll found the pipe readable (so the read cannot block).

    The pipe is emptied before the flag is cleared: cleared first, a `_wake` landing between
    the two would write a byte this read takes, and leave the flag set with the pipe empty,
    so that every later `_wake` wrote nothing and the thread slept through queued work."""
    global _woken
    os.read(_wake_r, 64)
    _woken = False
    _end_closing(flows)
    with handle.lock:
        ended = list(jobs.interrupted)
        jobs.interrupted.clear()
        queued = [job for job in ended if job in jobs.queue]
        for job in queued:
            jobs.queue.remove(job)
    for job in ended:
        if job in queued:  # not started: dropped
            jobs.finished(job, None, job.interrupted)
        else:
            flows.interrupted(job)


# ---- the progress thread -----------------------------------------------------------------------


def _end_closing(flows: Lanes) -> None:
    """End the operations of groups being closed (on the thread; raises into a collective of one)."""
    with handle.lock:
        closing = list(jobs.closing)
        queued = [job for job in jobs.queue if job.g in jobs.closing]
        for job in queued:
            jobs.queue.remove(job)
    for g in closing:
        why = jobs.closed_error(g, _stopping)
        flows.drop(g, why)
        for job in queued:
            if job.g is g:
                jobs.finished(job, None, why(job.work.op))


def _main(flows: Lanes) -> None:
    global _thread
    me = threading.get_ident()
    engine.set_background(flows, me)
    try:
        _loop(flows)
    except BaseException as exc:  # noqa: BLE001 - a defect here must not leave waits hanging
        log.exception("ringdist: the progress thread failed")
        with handle.lock:
            left = [job for lane in jobs.pending.values() for job in lane if not job.on_runner]
            jobs.queue.clear()
            _thread = None  # the next async call starts a new one
        runners.fail_all(left, exc, "the progress thread failed")
    finally:
        engine.set_background(None, me)


def _loop(flows: Lanes) -> None:
    poller = select.poll()
    registered: dict[int, int] = {}
    while True:
        if jobs.closing:
            _end_closing(flows)
        with handle.lock:
            job = jobs.queue.popleft() if jobs.queue else None
            stop = job is None and _stopping
        if stop:
            # Exit set `_stopping` and `jobs.closing` together, under the lock, possibly after
            # the look at `jobs.closing` above: end the started jobs before leaving, or their
            # handles would wait out CLOSE_WAIT.
            _end_closing(flows)
            break
        if job is not None:
            _start(flows, job)
            continue
        # Moved before every poll: a lane's new head (opened as the one before it ended) may
        # have a send ready whose socket would otherwise be polled for reading only.
        flows.tick()
        flows.pump()
        registered = engine.sync_fds(poller, registered, flows.masks())
        wait = flows.max_wait()
        began, ms = time.monotonic(), None if wait is None else deadlines.poll_ms(min(wait, deadlines.SLICE))
        events = poller.poll(ms)
        if ms is not None:  # (what woke it may have come as the process was continued)
            flows.stopped(deadlines.stopped_for(began, ms / 1000))
        for fd, ev in events:
            flows.on_event(fd, ev)


def _start(flows: Lanes, job: Job) -> None:
    if job.g in jobs.closing:
        jobs.finished(job, None, jobs.closed_error(job.g, _stopping)(job.work.op))
        return
    if job.interrupted is not None:  # its blocking caller was interrupted as it was taken from the queue
        jobs.finished(job, None, job.interrupted)
        return
    assert job.plan is not None  # only point-to-point plans come here; collectives go to runners
    try:
        job.timeout = job.plan.start()
    except BaseException as exc:  # noqa: BLE001 - the job's error
        jobs.finished(job, None, exc)
        return
    flows.add(job)


# ---- closing, exit and fork ---------------------------------------------------------------------


def before_close(g: Comm, why: str = "closed") -> None:
    """End group `g`'s outstanding operations (a RingError at their wait) before it closes."""
    mine = list(jobs.pending.get(g, ()))
    if not mine:
        runners.end(g, jobs.closed_error(g, False))  # an idle runner: it holds the group until it ends
        return
    if engine.on_progress_thread():
        return  # closed from an operation on a thread of them: its own jobs end as they fail
    with handle.lock:
        jobs.closing.add(g)
    runners.end(g, jobs.closed_error(g, False))
    if _thread is not None:
        _wake()
    handle.until_done([job.work for job in mine], deadlines.after(CLOSE_WAIT))
    with handle.lock:
        jobs.closing.discard(g)


def _pending_works() -> list:
    return [job.work for lane in jobs.pending.values() for job in lane]


def _at_exit() -> None:
    """End every outstanding operation, stop the thread (bounded), log failures never waited."""
    global _stopping, _thread, active
    for first in handle.at_exit_first:  # (`own_messages`: receives from itself, reported once)
        first()
    thread = _thread
    with handle.lock:
        _stopping = True
        runners.exiting()
        jobs.closing.update(jobs.pending)
        lasts = _pending_works()  # (a loop of its own: `handle._join`)
        groups = list(jobs.pending)
    for g in groups:
        runners.end(g, jobs.closed_error(g, True))
    if thread is not None:
        _wake()
    deadline = deadlines.after(CLOSE_WAIT)
    handle.until_done(lasts, deadline)
    for waited in ([thread] if thread is not None else []) + runners.threads():
        waited.join(max(0.0, deadlines.left(deadline)) + JOIN_WAIT)
        if waited.is_alive():
            log.error("ringdist: thread %s did not stop within %g s", waited.name, CLOSE_WAIT + JOIN_WAIT)
    for work in list(handle.unreported):
        if work.done():
            work.report()
        else:
            log.error("rank %d: %s on group %r was still outstanding at exit", work.rank, wire.called_as(work.op),
                      work.gid)
    _thread = None
    active = False


def _after_fork_in_child() -> None:
    """A forked child has no progress thread: forget its jobs (their handles fail) and start afresh."""
    global _thread, active, _wake_r, _wake_w, _stopping, _woken
    handle.after_fork_in_child()  # first: failing the jobs takes its locks, which a parent's thread may hold
    jobs.forget_in_child(forks.parent())
    runners.forget_in_child()
    _thread = None
    _stopping = False
    active = False
    for fd in (_wake_r, _wake_w):
        if fd >= 0:
            channel.close_quietly(fd)
    _wake_r = _wake_w = -1
    _woken = False


forks.in_child(_after_fork_in_child)
