"""A thread per group for its non-blocking collectives: the group's runner.

A group's collectives issued with `async_op=True` (or queued behind them) run on its
runner, one at a time, in issue order; each group has its own. So collectives on two
groups never wait for each other: ranks may issue them in different orders, as MPI allows
for non-blocking collectives on different communicators, and two threads may each drive a
group of their own with `async_op=True`, as they may with blocking calls. Point-to-point
messages stay on the progress thread (`work`), whatever runs here.

A runner starts on its group's first such collective and ends after IDLE seconds with
nothing to run (or when the group closes, or at exit), so it holds no group for long.

While a collective runs, its waits (`engine.run`, the shared-memory signals) also watch the
runner's wake-up pipe (`engine.set_background`): `interrupt` raises an error into the running
collective from another thread, there, where its connections are owned. A group closing
with the collective outstanding ends it so; a send or recv of the group that failed on the
progress thread ends it so too (`defer`), and is completed with it.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Callable

from . import aborts, channel, engine, handle, jobs
from .channel import Channel
from .comm import Comm
from .errors import PeerLostError, RingError
from .flows import Outflow
from .jobs import Job

IDLE = 1.0  # seconds a runner with nothing to run waits for more before it ends

_runners: dict[Comm, "Runner"] = {}  # (under handle.lock)


class Runner:
    """Group `g`'s collective jobs, run in issue order on a thread of its own."""

    def __init__(self, g: Comm):
        self.g = g
        # Issued, not yet started; put under handle.lock, and None to wake the thread to look
        # whether to end. A SimpleQueue wakes its getter with no lock of Python's to take again.
        self.queue: "queue.SimpleQueue[Job | None]" = queue.SimpleQueue()
        self.running: Job | None = None  # (under `lock`)
        self.deferred: list[Job] = []  # failed point-to-point jobs of the group, completed with `running`
        self.lock = threading.Lock()  # `running`, `deferred`, `_why`; held by the progress thread telling peers
        self._why: Callable[[], BaseException] | None = None  # what `interrupt` raises into `running`
        self._wake_r, self._wake_w = channel.make_pipe(f"rank {g.rank()}: the thread of group {g.gid!r}'s "
                                                       f"collectives")
        self._masks = {self._wake_r: engine.POLLIN}
        self._closed = False  # the pipe is closed (under `lock`)
        self.thread = threading.Thread(target=self._main, name=f"ringdist-runner-{g.gid}", daemon=True)

    # ---- the background its collectives' waits drive (`engine.set_background`) --------------------

    def masks(self) -> dict[int, int]:
        return self._masks

    def pump(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def max_wait(self) -> float | None:
        return None

    def stopped(self, lost: float) -> None:
        pass

    def on_event(self, fd: int, ev: int) -> None:
        os.read(self._wake_r, 64)  # readable: this cannot block
        with self.lock:
            why, self._why = self._why, None
        if why is not None:
            raise why()

    def interrupt(self, why: Callable[[], BaseException]) -> bool:
        """Raise `why()` into the running collective at its next wait; False if none runs."""
        with self.lock:  # held for the write: the thread closes the pipe under it when it ends
            return self.raise_locked(why)

    def raise_locked(self, why: Callable[[], BaseException]) -> bool:
        """`interrupt`, with `lock` held."""
        if self.running is None or self._closed:
            return False
        self._why = why
        os.write(self._wake_w, b"x")
        return True

    # ---- the thread ----------------------------------------------------------------------------

    def _main(self) -> None:
        me = threading.get_ident()
        engine.set_background(self, me)
        try:
            while True:
                try:
                    job = self.queue.get(timeout=IDLE)
                except queue.Empty:
                    job = None
                if job is None:  # idle for IDLE seconds, or told to look (`end`, exit)
                    with handle.lock:
                        if self.queue.empty():
                            if _runners.get(self.g) is self:
                                del _runners[self.g]  # a job issued from now on starts a new runner
                            break
                    continue
                self._run(job)
                # Dropped before the next wait: the job holds its call (the input, in its closure) and
                # its result, which the caller's handle alone should keep alive once it is complete.
                job = None
        except BaseException as exc:  # noqa: BLE001 - a defect here must not leave waits hanging
            handle.log.exception("ringdist: the runner of group %r failed", self.g.gid)
            with handle.lock:
                if _runners.get(self.g) is self:
                    del _runners[self.g]
                left = ([self.running] if self.running is not None else []) + _drain(self.queue) + self.deferred
                self.deferred = []
            fail_all(left, exc, "its runner failed")
        finally:
            engine.set_background(None, me)
            with self.lock:
                self.running = None
                self._closed = True
                for fd in (self._wake_r, self._wake_w):
                    os.close(fd)

    def _run(self, job: Job) -> None:
        g = job.g
        with self.lock:  # `end` adds to jobs.closing, then interrupts under this lock: one of the two sees the other
            closing = g in jobs.closing
            stopped = job.interrupted  # (`interrupted` looks under this lock too)
            if not closing and stopped is None:
                self.running = job
                self._why = None
        if closing:
            jobs.finished(job, None, jobs.closed_error(g, stopping)(job.work.op))
            return
        result = exc = None
        self.thread.ringdist_issuer = job.issuer  # type: ignore[attr-defined] - named in errors for it
        try:
            if stopped is not None:  # its caller was interrupted while it was queued
                exc = stopped
                g.refuse(job.work.op, stopped)
            else:
                result = job.call(g)
                if job.interrupted is not None:  # interrupted as it ran, and ended before a wait saw it
                    result, exc = None, job.interrupted
                    g.refuse(job.work.op, exc)
        except BaseException as error:  # noqa: BLE001 - the job's error
            exc = error
        self.thread.ringdist_issuer = None  # type: ignore[attr-defined]
        with self.lock:
            self.running = None
            deferred, self.deferred = self.deferred, []
        # This thread owns the group's connections: it tells the peers of a failure it did not hear.
        jobs.settle(job, result, exc, deferred,
                    lambda first: g._fail(first.plan.op, g.channels, None, [], first.error))  # type: ignore[union-attr]


stopping = False  # the process is exiting (`exiting`)


def exiting() -> None:
    """The process is exiting (under handle.lock): a job ended from now on says so, and every
    runner ends once it has nothing to run, without waiting out IDLE."""
    global stopping
    stopping = True
    for runner in _runners.values():
        runner.queue.put(None)


def submit(job: Job) -> None:
    """Queue a collective job on its group's runner, starting one if it has none (under handle.lock;
    the runner takes it once the lock is released). Raises, queueing nothing, if none can start."""
    runner = _runners.get(job.g)
    if runner is not None:
        runner.queue.put(job)
        return
    runner = Runner(job.g)
    runner.queue.put(job)
    try:
        runner.thread.start()
    except BaseException:
        for fd in (runner._wake_r, runner._wake_w):
            channel.close_quietly(fd)
        raise
    _runners[job.g] = runner


def _drain(jobs_queue: "queue.SimpleQueue[Job | None]") -> list[Job]:
    """What a runner's queue holds, taken out (wake-ups dropped)."""
    taken = []
    while True:
        try:
            job = jobs_queue.get_nowait()
        except queue.Empty:
            return taken
        if job is not None:
            taken.append(job)


def of(g: Comm) -> Runner | None:
    return _runners.get(g)


def end(g: Comm, why: Callable[[str], BaseException]) -> None:
    """End group `g`'s collective jobs: those queued at once, the running one at its next wait."""
    with handle.lock:
        runner = _runners.get(g)
        if runner is None:
            return
        queued = _drain(runner.queue)
        runner.queue.put(None)  # ends once it has nothing to run
    for job in queued:
        jobs.finished(job, None, why(job.work.op))
    with runner.lock:
        running = runner.running
        if running is not None:
            runner.raise_locked(lambda: why(running.work.op))


def interrupted(job: Job) -> bool:
    """A blocking collective's caller was interrupted in its wait (`work.interrupted`, which set
    `job.interrupted` first): running, it fails at its next wait, breaking the group and telling
    the peers as an inline call interrupted does; queued, its runner refuses it at its turn so.
    Returns whether it was running (its caller then waits for it to end: `work.interrupted`)."""
    runner = _runners.get(job.g)
    if runner is None:
        return False
    why = job.interrupted
    assert why is not None
    with runner.lock:
        if runner.running is job:
            return runner.raise_locked(lambda: why)
    return False


def threads() -> list[threading.Thread]:
    with handle.lock:
        return [runner.thread for runner in _runners.values()]


def break_group(g: Comm, op: str, own: list[Channel], outflows: list[Outflow], exc: BaseException,
                job: Job | None = None) -> tuple[bool, BaseException]:
    """Break group `g` for a failure outside its collectives (a send or recv that failed on the
    progress thread, a failed thread) and tell its peers: an ABORT on `own` (the failed
    message's connection) and on the group's connections. Where a collective of the group runs
    on its runner, that collective owns those connections: `own` alone is told here, and the
    collective fails with `exc` at its next wait and tells the rest (or, done first, tells them
    as it ends; `job`, given, is completed with it: `jobs.settle`).

    Returns whether it was handed over so, and the error to report: a lost peer's own ABORT
    (why it left), where one is found on the connections this thread may read."""
    exc = _why_lost(exc, own, op)  # (the cause a refused send passes on: `Comm._abort_frame`)
    g.mark_broken(op, exc)  # a collective the runner starts from now on refuses before it touches them
    runner = _runners.get(g)
    if runner is not None:
        with runner.lock:
            if runner.running is not None:
                exc = tell_own(g, op, own, outflows, exc)
                if job is not None:
                    job.error = exc
                    runner.deferred.append(job)
                failure = exc
                runner.raise_locked(lambda: failure)
                return True, exc
    everyone = own + list(g.channels)
    exc = _why_lost(exc, everyone, op)
    g._fail(op, everyone, None, outflows, exc)
    return False, exc


def tell_own(g: Comm, op: str, own: list[Channel], outflows: list[Outflow], exc: BaseException) -> BaseException:
    """A failed message's group is broken and its own connection told (an ABORT), by a thread that
    leaves the group's other connections to the call using them; returns the error to report."""
    exc = _why_lost(exc, own, op)
    g.mark_broken(op, exc)
    if own:
        aborts.abort(outflows, own, exc, g.rank(), None)
    return exc


def _why_lost(exc: BaseException, look: list[Channel], op: str) -> BaseException:
    """A PeerLostError's peer may have said why it left (an ABORT on `look`): that, else `exc`."""
    if isinstance(exc, PeerLostError):
        try:
            aborts.pending_abort(look, op)
        except RingError as reason:
            return reason
    return exc


def fail_all(left: list[Job], exc: BaseException, what: str) -> None:
    """Complete the jobs a failed thread leaves, breaking their groups and telling their peers:
    this rank can no longer keep step with them."""
    broken: set[Comm] = set()
    for job in left:
        if job.plan is not None:
            job.plan.release()  # its pair's turn, if it held one
        if job.finished:
            continue
        error = RingError(f"rank {job.g.rank()}: {job.work.op} on group {job.g.gid!r}: {what}: "
                          f"{type(exc).__name__}: {exc}")
        if job.g not in broken and not (job.g._broken or job.g._closed):
            broken.add(job.g)
            own = [job.plan.ch] if job.plan is not None and job.plan.ch is not None else []
            outflows = list(job.plan.outflows) if job.plan is not None else []  # (a frame left part-way is cut)
            try:
                break_group(job.g, job.work.op, own, outflows, error)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - the handles below must complete whatever happens
                handle.log.exception("ringdist: telling the peers of group %r failed", job.g.gid)
        jobs.finished(job, None, error)


def forget_in_child() -> None:
    """A forked child has none of the parent's runners (their jobs fail with `jobs.forget_in_child`)."""
    global stopping
    for runner in _runners.values():
        runner.lock = threading.Lock()  # the parent's may have been held by a thread the child lacks
        runner._closed = True
        for fd in (runner._wake_r, runner._wake_w):
            channel.close_quietly(fd)
    _runners.clear()
    stopping = False
