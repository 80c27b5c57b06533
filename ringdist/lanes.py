"""Background point-to-point: the messages the progress thread has started (sends and recvs
of arrays and objects), one lane per (group, peer, direction). A lane's first job's flows
move, driven by the thread's own poll loop; the rest of the lane wait their turn (messages
of a pair go in order). A recv whose connection has not arrived tries again every CONNECT_RETRY seconds,
and asks its sender whether the group failed there (`asking`), as a blocking one does.
An any-source receive (`any_source`) waits in the lane of every rank it may take a message from,
and looks for one where it leads; once a message has chosen its source, it leaves the others."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from . import engine, jobs, runners
from .channel import Channel
from .comm import Comm, busy_pair, nothing_sent
from .errors import RingError, RingTimeoutError, known
from .flows import Watch
from .jobs import Job
from .tags import ANY_TAG

CONNECT_RETRY = 0.005  # seconds between tries of a recv whose connection has not arrived


class Lanes:
    """The point-to-point jobs that have started: one lane per (group, peer, direction), whose
    first job's flows move; the rest wait their turn (messages of a pair go in order)."""

    def __init__(self, wake_fd: int, on_wake: Callable[["Lanes"], None]):
        self.wake_fd = wake_fd  # the progress thread's wake-up pipe, in every poll set
        self.on_wake = on_wake  # called when it is readable
        self.lanes: dict[tuple, deque[Job]] = {}
        self.watches: dict[int, Watch] = {}  # an outgoing lane's channel, read for the receiver's ABORT
        self._to_open: deque[Job] = deque()  # lanes' new heads to open (`_open_next`)
        self._opening = False

    def add(self, job: Job) -> None:
        leads = False
        for key in _keys(job):
            lane = self.lanes.setdefault(key, deque())
            lane.append(job)
            leads = leads or len(lane) == 1
        if leads:
            job.since = time.monotonic()
            self._open(job)
        if job.g.held and not job.finished:  # a message read ahead may be this receive's (one it does not lead)
            self._offer_held(job.g)

    def heads(self) -> list[Job]:
        heads, seen = [], set()
        for lane in self.lanes.values():
            job = lane[0]
            if id(job) not in seen:  # (an any-source job may lead several lanes)
                seen.add(id(job))
                heads.append(job)
        return heads

    def _open(self, job: Job) -> None:
        if job.finished:  # an any-source job ended from another of its lanes since the caller looked
            return
        if job.interrupted is not None:  # its blocking caller was interrupted before it began: dropped
            jobs.finished(job, None, job.interrupted)
            self._retire(job)
            return
        plan = job.plan
        if job.g._broken or job.g._closed:  # an earlier operation failed: this one never starts
            try:
                if plan.outgoing and not job.g._closed:  # type: ignore[union-attr]
                    job.g.refuse_queued_send(plan.peer, plan.op)  # type: ignore[union-attr]
                job.g.check_usable(plan.op)  # type: ignore[union-attr]
            except RingError as exc:
                jobs.finished(job, None, exc)
                self._retire(job)
                return
        before = _keys(job)
        if plan.sources is not None:  # type: ignore[union-attr]
            plan.heads = [key[1] for key in before if self.lanes[key][0] is job]  # type: ignore[union-attr]
        try:
            job.opened = plan.open(False)  # type: ignore[union-attr]
            if job.opened:
                for flow in plan.inflows:  # type: ignore[union-attr]
                    flow.consume_staged()  # read ahead by the pair's previous message
                for flow in plan.outflows:  # type: ignore[union-attr]
                    flow.pump()
        except BaseException as exc:  # noqa: BLE001 - the job's error
            self._leave(job, before)
            self._failed(job, exc)
            return
        self._leave(job, before)
        if job.opened:
            self._check_done(job)

    def _leads(self, job: Job, but: tuple) -> bool:
        """Whether `job` leads a lane other than `but`."""
        return any(key != but and key in self.lanes and self.lanes[key][0] is job for key in _keys(job))

    def _leave(self, job: Job, before: list[tuple]) -> None:
        """An any-source job whose source a message chose leaves the other lanes it waited in."""
        now = _keys(job)
        for key in before:
            if key not in now:
                self._remove(job, key)

    def masks(self) -> dict[int, int]:
        masks = {self.wake_fd: engine.POLLIN}
        for job in self.heads():
            plan = job.plan
            if not job.opened:
                if plan.sources is not None:  # type: ignore[union-attr]
                    for fd in plan.watched():  # type: ignore[union-attr]
                        masks[fd] = engine.POLLIN
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
        if fd == self.wake_fd:
            self.on_wake(self)
            return
        for job in self.heads():
            plan = job.plan
            if not job.opened:
                if plan.sources is not None and fd in plan.watched():  # type: ignore[union-attr]
                    self._open(job)  # a first message for an any-source receive
                    return
                continue
            if plan.ch.fd != fd:  # type: ignore[union-attr]
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
        for g in {key[0] for key in self.lanes if key[0].held}:
            self._offer_held(g)  # read ahead by another thread's receive since, say
        for job in self.heads():
            if job.finished:
                continue  # ended by an earlier one's opening (an any-source job, from another of its lanes)
            if not job.opened:
                self._open(job)
                if job.opened or job.finished or self._asked(job):
                    continue
            if job.opened:
                blocked = [f for f in job.plan.outflows if f.blocked and not f.done]  # type: ignore[union-attr]
                if blocked and engine.drained(blocked, job.unsent):
                    job.since = now  # the peer took bytes: a slow link, not a stall (as `engine.run`)
            if now - job.since > job.timeout:
                plan = job.plan
                if job.opened:
                    streams = plan.inflows, plan.outflows  # type: ignore[union-attr]
                    self._failed(job, engine.stall_error(*streams, plan.op, job.g.rank(), job.timeout))
                    continue
                if plan.sources is not None:  # type: ignore[union-attr]
                    message = plan.waiting(job.timeout)  # type: ignore[union-attr]
                elif plan.turn is None:  # type: ignore[union-attr]
                    message = busy_pair(job.g.rank(), plan.op, plan.peer, plan.outgoing,  # type: ignore[union-attr]
                                        job.g.gid, job.timeout)
                else:
                    message = (f"rank {job.g.rank()}: {plan.op} in group {job.g.gid!r}: waiting for rank "
                               f"{plan.peer} to send: {nothing_sent(plan.peer, job.timeout)}")  # type: ignore[union-attr]
                self._failed(job, RingTimeoutError(message))

    def _asked(self, job: Job) -> bool:
        """A receive from one rank, waiting for its sender's connection (its pair's turn held),
        asks the sender whether the group failed there (`asking`), and an any-source receive
        each sender whose connection has not come; once told so, it fails with that cause and
        breaks its group, as a blocking receive does. Whether it has failed."""
        plan = job.plan
        if plan.sources is not None:  # type: ignore[union-attr]
            job.asker = plan.askers  # (closed with the job)  # type: ignore[union-attr]
            exc = plan.ask_missing()  # type: ignore[union-attr]
        elif plan.outgoing or plan.turn is None:  # type: ignore[union-attr]
            return False
        elif job.asker is None:
            job.asker = job.g.asker(plan.peer)  # type: ignore[union-attr]
            return False
        else:
            exc = job.g.heard_by_asking(plan.peer, plan.op, job.asker.look())  # type: ignore[union-attr]
        if exc is None:
            return False
        self._failed(job, exc, tell=True)
        return True

    def stopped(self, lost: float) -> None:
        """This process was stopped for `lost` seconds (`deadlines.stopped_for`) while its jobs
        waited: not counted against their timeouts, which count progress."""
        if lost:
            for job in self.heads():
                job.since += lost

    def max_wait(self) -> float | None:
        heads = self.heads()
        if not heads:
            return None
        now = time.monotonic()
        wait = min(job.since + job.timeout - now for job in heads)
        if any(not job.opened for job in heads):
            wait = min(wait, CONNECT_RETRY)
        for job in heads:  # a full send buffer may drain slowly: looked at 4 times a timeout (`tick`)
            if job.opened and any(f.blocked and not f.done for f in job.plan.outflows):  # type: ignore[union-attr]
                wait = min(wait, job.timeout / 4)
        return max(wait, 0.0)

    def _check_done(self, job: Job) -> None:
        plan = job.plan
        while all(f.done for f in plan.inflows) and all(f.done for f in plan.outflows):  # type: ignore[union-attr]
            try:
                more = plan.more(False)  # type: ignore[union-attr]
                if more is None:  # an any-source receive for one tag gave its sender back: it looks again
                    job.opened = False
                    self._offer_held(job.g)
                    return
                if more:
                    # It read a message of another tag, kept for a later receive, and goes on to the next.
                    job.since = time.monotonic()
                    for flow in plan.inflows:  # type: ignore[union-attr]
                        flow.consume_staged()
                    self._offer_held(job.g)
                    continue
            except BaseException as exc:  # noqa: BLE001 - the job's error
                self._failed(job, exc)
                return
            if job.interrupted is not None:  # its caller was interrupted as it moved: as a failure of it
                self._failed(job, job.interrupted)
                return
            jobs.finished(job, plan.result(), None)  # type: ignore[union-attr]
            self._retire(job)
            return

    def _offer_held(self, g: Comm) -> None:
        """Complete the receives of group `g` not yet opened whose message was read ahead (`tags`):
        in each sender's lane, its kept messages to its receives in the order they were posted
        (a lane's opened head has looked already, and kept what it read because it is not its own)."""
        if not g.held:
            return
        for key in [k for k in self.lanes if k[0] is g and not k[2]]:
            if not g.held.by_sender.get(key[1]):
                continue  # nothing kept from this sender
            lane = self.lanes.get(key)
            reserved: set[int] = set()  # tags of kept messages a receive earlier in the lane is owed
            for job in list(lane) if lane else ():
                if not g.held.by_sender.get(key[1]):
                    break  # every message kept from this sender has its receive: the rest need not look
                if job.finished or job.interrupted is not None:  # (one interrupted is dropped: `interrupted`)
                    continue
                plan = job.plan
                if (not job.opened and plan.sources is None  # type: ignore[union-attr]
                        and not g.held.has_tag(key[1], getattr(plan, "tag", ANY_TAG))):
                    continue  # a receive from this sender for a tag none of its kept messages has
                if job.opened:
                    if plan.sources is not None and plan.peer != key[1]:  # type: ignore[union-attr]
                        # An any-source receive for one tag, reading another sender's message: a
                        # kept message of its tag from this sender is its own, once it gives that
                        # sender back (`FromAny.more`); not a later receive's.
                        if plan.inner.tag == ANY_TAG:  # type: ignore[union-attr]
                            break
                        reserved.add(plan.inner.tag)  # type: ignore[union-attr]
                    continue  # (a head reading this sender has looked, and kept only what is not its own)
                before = _keys(job)  # (an any-source receive's, before a message chooses its source)
                try:
                    took = job.plan.take_held(key[1], frozenset(reserved))  # type: ignore[union-attr]
                    result = job.plan.result() if took else None  # type: ignore[union-attr]
                except BaseException as exc:  # noqa: BLE001 - the job's error
                    took, result = True, None
                    jobs.finished(job, None, exc)
                else:
                    if took:
                        jobs.finished(job, result, None)
                if took:
                    job.plan.release()  # type: ignore[union-attr]
                    for k in before:
                        self._remove(job, k)

    def _retire(self, job: Job) -> None:
        job.plan.release()  # type: ignore[union-attr]
        for key in _keys(job):
            self._remove(job, key)
        if job.g.held and job.plan.sources is not None:  # type: ignore[union-attr]
            # An any-source receive for one tag that was owed kept messages (`_offer_held`'s
            # reserved) is gone: the receives behind it in other senders' lanes may take them now.
            self._offer_held(job.g)

    def _remove(self, job: Job, key: tuple) -> None:
        """Take `job` out of lane `key`; open the lane's next job if it led."""
        lane = self.lanes.get(key)
        if lane is None or job not in lane:
            return  # already retired
        was_head = lane[0] is job
        lane.remove(job)
        if not lane:
            del self.lanes[key]
        elif was_head:
            head = lane[0]
            if not self._leads(head, key):  # (an any-source job leading another lane has been waiting since)
                head.since = time.monotonic()
            self._open_next(head)

    def _open_next(self, head: Job) -> None:
        """Open a lane's new head. One that completes at once (its bytes read ahead) retires in
        turn and opens the next: those are opened here in a loop, not by recursion, however many
        messages wait. A head left unopened by a failure that raised is opened by `tick`."""
        self._to_open.append(head)
        if self._opening:
            return  # a loop further up the stack opens it
        self._opening = True
        try:
            while self._to_open:
                job = self._to_open.popleft()
                if not job.opened and not job.finished:
                    self._open(job)
        finally:
            self._opening = False
            self._to_open.clear()

    def _failed(self, job: Job, exc: BaseException, tell: bool = False) -> None:
        """A point-to-point job failed: break its group and tell the peers, as a blocking one does
        (`tell`: one that never had its connection, told of a failure at its sender by asking);
        but a receive whose wait timed out before any of its message came ends alone, as a
        blocking one does (`p2p.Receiving.spare`; an interrupted one: `interrupted`)."""
        g, plan = job.g, job.plan
        ch = plan.ch  # type: ignore[union-attr]
        known(exc, rank=g.rank(), group=g.gid, op=plan.op, peer=getattr(plan, "peer", None))  # type: ignore[union-attr]
        spare = getattr(plan, "spare", None)  # a receive timed out with nothing of its message read ends alone
        if (ch is None and not tell) or getattr(exc, "ringdist_closed", False) or \
                (job.opened and not tell and spare is not None and spare(exc)):
            jobs.finished(job, None, exc)  # never sent a byte, or ended by a close: nothing to tell
            self._retire(job)
            return
        own = [ch] if ch is not None else []
        handed, exc = runners.break_group(g, plan.op, own, plan.outflows, exc, job)  # type: ignore[union-attr]
        if not handed:
            jobs.finished(job, None, exc)
        self._retire(job)

    def interrupted(self, job: Job) -> None:
        """A blocking message call's caller was interrupted in its wait (`work.interrupted`): one
        that has not begun (waiting for its pair's turn, for its sender's connection, or for the
        first message of an any-source receive; a receive from one rank with none of its message
        read) is dropped, as if never called; one under way fails and breaks its group, as a
        failure of its flows does."""
        if job.finished:
            return
        exc = job.interrupted
        assert exc is not None
        plan = job.plan
        untouched = getattr(plan, "untouched", None)
        if job.opened and untouched is not None and untouched():  # (this thread is between reads)
            plan.give_back()  # type: ignore[union-attr]
        elif job.opened or plan.ch is not None:  # type: ignore[union-attr]
            self._failed(job, exc)
            return
        jobs.finished(job, None, exc)
        self._retire(job)

    def drop(self, g: Comm, reason: Callable[[str], BaseException]) -> None:
        """End every started point-to-point job of group `g`."""
        ended: set[int] = set()
        for key in [k for k in self.lanes if k[0] is g]:
            for job in self.lanes.pop(key):
                if id(job) not in ended:  # (an any-source job waits in several lanes)
                    ended.add(id(job))
                    job.plan.release()  # type: ignore[union-attr]
                    jobs.finished(job, None, reason(job.plan.op))  # type: ignore[union-attr]


def _keys(job: Job) -> list[tuple]:
    """The lanes `job` waits in: its pair's direction; an any-source receive's, every rank's it may hear from."""
    plan = job.plan
    if plan.sources is not None:  # type: ignore[union-attr]
        return [(job.g, s, False) for s in plan.sources]  # type: ignore[union-attr]
    return [(job.g, plan.peer, plan.outgoing)]  # type: ignore[union-attr]
