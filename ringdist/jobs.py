"""The operations issued with `async_op=True` (or queued behind them): each a `Job`, in a queue
until its thread starts it (the progress thread's `queue` for messages, its group's runner's for
collectives: `runners`) and in its group's pending list until done. `finished` records an
outcome and completes the job's `Work` handle."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Protocol

from . import aborts, errors, handle, wire
from .channel import Channel
from .comm import Comm
from .errors import GroupBrokenError, PeerLostError, RingError
from .flows import Inflow, Outflow
from .handle import Work

queue: "deque[Job]" = deque()  # issued, not yet started (guarded by handle.lock)
interrupted: "list[Job]" = []  # started messages whose blocking caller was interrupted, for the progress thread to end (handle.lock)
pending: "dict[Comm, list[Job]]" = {}  # per group: issued, not yet done
closing: "set[Comm]" = set()  # groups whose operations are being ended


class Plan(Protocol):
    """A point-to-point operation as the thread runs it (see `p2p`)."""

    op: str
    peer: int
    outgoing: bool
    ch: Channel | None
    inflows: list[Inflow]
    outflows: list[Outflow]
    turn: Any  # its turn at the pair's direction once `open` took it (`Comm.p2p_turn`), else None
    # An any-source receive's, until a message has chosen its `peer`: the ranks it may take one
    # from (it waits in each one's lane: `lanes`); None for every other plan.
    sources: list[int] | None

    def start(self) -> float: ...  # validate and allocate; the timeout in seconds
    def open(self, wait: bool) -> bool: ...  # the channel and the flows; False: not yet arrived
    def result(self) -> Any: ...
    def release(self) -> None: ...  # give up the pair's turn taken by `open` (idempotent)


class Job:
    __slots__ = ("work", "g", "call", "plan", "finished", "result", "error", "timeout", "since", "opened",
                 "on_runner", "issuer", "asker", "interrupted", "unsent")

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
        self.unsent: dict[int, int] = {}  # its full send buffers' unacknowledged bytes, last looked at (`engine.drained`)
        self.opened = False
        self.on_runner = False  # a collective, run by its group's runner (`runners`)
        self.issuer = threading.current_thread()  # the thread that called, named in errors (`Comm.thread_name`)
        self.asker: Any = None  # a receive waiting for its sender's connection asks it (`asking`)
        # A blocking call's caller was interrupted in its wait (Ctrl-C, a signal handler's error):
        # that error, and the call is ended as `work.interrupted` says.
        self.interrupted: BaseException | None = None


def issue(job: Job, queued: bool = True) -> None:
    """Record a job as pending and, `queued`, queue it for the progress thread (under handle.lock)."""
    if queued:
        queue.append(job)
    pending.setdefault(job.g, []).append(job)
    handle.unreported.add(job.work)


def finished(job: Job, result: Any, error: BaseException | None) -> None:
    """Record an operation's outcome and complete its handle. (A group's collectives finish in
    issue order, one after another on its runner; messages of a pair in one direction too.)"""
    job.finished, job.result, job.error = True, result, error
    if job.asker is not None:
        job.asker.close()
    with handle.lock:
        jobs = pending.get(job.g)
        if jobs is not None and job in jobs:  # (a collective interrupted between its submit and issue is not)
            jobs.remove(job)
            if not jobs:
                del pending[job.g]
        job.work.complete(result, error)


def settle(job: Job, result: Any, exc: BaseException | None, deferred: list[Job],
           tell: Callable[[Job], None] | None = None) -> None:
    """Complete a call job (a collective on its runner, or a blocking message call on the progress
    thread) and its group's sends and recvs that failed while it ran (`deferred`, each with its
    error). The call, told of them at its next wait, failed with GroupBrokenError naming the
    first; one that ended well before it heard keeps its result. `tell(first)` tells the group's
    peers where no one has yet: the call ended well, or was refused before it touched the group."""
    if deferred and tell is not None and not job.g.told_peers:
        tell(deferred[0])
    for earlier in deferred:
        cause = earlier.error
        if exc is not None:
            if isinstance(cause, PeerLostError) and getattr(exc, "ringdist_origin", None):
                cause = exc  # the ABORT found on the group's connections says why the peer left
            if getattr(cause, "ringdist_origin", None) is not None:
                # A peer's failure that came by a message's connection: the call raises it as
                # its own, as it would had it come first by the group's connections.
                exc = aborts.as_call(cause, job.g.rank(), job.work.op, job.g.world_ranks)
            else:
                exc = GroupBrokenError(f"rank {job.g.rank()}: group {job.g.gid!r} cannot run {job.work.op}: an "
                                       f"earlier operation failed ({earlier.plan.op}: "  # type: ignore[union-attr]
                                       f"{type(cause).__name__}: {cause})")
                errors.known(exc, rank=job.g.rank(), group=job.g.gid, op=job.work.op)
        finished(earlier, None, cause)  # (every one: nothing else completes it)
    finished(job, result if exc is None else None, exc)


def closed_error(g: Comm, exiting: bool) -> Callable[[str], BaseException]:
    """The error of an operation ended because its group closed (or the process exited) first."""
    def make(op: str) -> BaseException:
        exc = RingError(f"rank {g.rank()}: {wire.called_as(op)} on group {g.gid!r}: closed with the operation outstanding"
                        f"{' (the process is exiting)' if exiting else ''}")
        exc.ringdist_closed = True  # type: ignore[attr-defined]
        return errors.known(exc, rank=g.rank(), group=g.gid, op=op)
    return make


def forget_in_child(parent: int) -> None:
    """A forked child: the parent's jobs are not its own (their handles fail; the parent reports them)."""
    for lane in pending.values():
        for job in lane:
            job.work.fail_in_child(RingError(f"{job.work.op} on group {job.work.gid!r} was issued by process "
                                             f"{parent}; a forked child cannot wait for it"))
    pending.clear()
    queue.clear()
    interrupted.clear()
    closing.clear()
