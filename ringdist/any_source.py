"""Receives from whichever rank sends first (MPI's ANY_SOURCE): recv_any and recv_object_any.

An any-source receive watches the direct connections from every other rank of the group and
takes the first message to arrive, as a recv (or recv_object) from its sender would: the result
comes with the sender's rank. Messages from one rank still arrive in their order, and receives
match messages in the order this rank posted them (MPI's rule): a receive from rank s posted
before an any-source one gets s's next message first, and one posted after it waits until the
any-source receive has its message. Messages read ahead of their receive (`tags`) are taken
first. One for a tag takes the first message of that tag: a message of another tag from the
rank it chose is kept, and it chooses again (`FromAny.more`). When messages from several ranks
are waiting, the ranks take turns (the rank after the last sender first), so none is starved.

A rank whose connection closes between messages (it closed the group, or left the job) drops
out of the wait; once every rank has, PeerLostError. Nothing within the timeout:
RingTimeoutError. A message of another shape, dtype or kind breaks the group, as for recv.
"""

from __future__ import annotations

import bisect
import select
import time
from typing import Any

import numpy as np

from . import deadlines, work
from .asking import ASK_MOST, Askers
from .calls import _comm
from .comm import Comm
from .errors import PeerLostError, RingError, RingTimeoutError, known
from .object_messages import _RecvObject
from .p2p import ANYONE, _Recv, run_inline
from .tags import ANY_TAG

CONNECT_RETRY = 0.005  # seconds between looks for connections not yet arrived (a blocking wait)
POLL_SLICE = 0.05  # seconds a blocking wait polls before it looks at the group and the clock again


class FromAny:
    """An any-source receive as a plan (`jobs.Plan`): `inner`, a recv or recv_object, gets the
    source of the first message that arrives. Until then `sources` lists the ranks it may take
    one from; the progress thread sets `heads` to those whose lane it leads (`lanes`)."""

    outgoing = False

    def __init__(self, inner: Any, op: str, g: Comm, timeout: float | None):
        self.inner, self.op, self.g, self.timeout = inner, op, g, timeout
        inner.op = op  # named in its errors: recv_any, recv_object_any
        self.peer: int | None = None
        self.sources: list[int] | None = None
        self.heads: list[int] | None = None
        self.left: dict[int, str] = {}  # ranks whose connection closed between messages, and why
        self.known: dict[int, Any] = {}  # the ranks whose connection has arrived: its channel
        self._poller = select.poll()  # a blocking receive's, over the channels whose turns it holds
        self._polled: set[int] = set()
        self.limit = 0.0
        self.askers = Askers(lambda s: g.asker(s, first=ASK_MOST))  # to the senders not connected yet (`ask_missing`)

    # The plan's channel, flows and turn are its inner receive's, once it has a source.
    ch = property(lambda self: self.inner.ch)
    inflows = property(lambda self: self.inner.inflows)
    outflows = property(lambda self: self.inner.outflows)
    turn = property(lambda self: self.inner.turn)

    def start(self) -> float:
        g = self.g
        if g.size() == 1:
            raise ValueError(f"rank {g.rank()}: {self.op}: a group of size 1 has no other rank to receive from")
        self.limit = self.inner.start()
        me = g.rank()
        self.sources = [s for s in range(g.size()) if s != me]
        return self.limit

    def open(self, wait: bool = True) -> bool:
        if self.peer is None and not self.take_held() and not self._choose(wait):
            return False
        return self.inner.open(wait)

    def more(self, wait: bool = True) -> bool | None:
        """As a recv's `more`; but a receive for one tag whose chosen sender's message was another
        tag's gives that sender back (the message kept) and chooses again: True once it has a
        source; None with `wait` False (the lanes offer it what is kept, then open it again)."""
        inner = self.inner
        if self.sources is None or inner.holding is None:
            return inner.more(wait)
        self.g.held.put(self.peer, inner.holding)  # type: ignore[arg-type]
        inner.holding = None
        inner.release()
        inner.inflows, inner.ch = [], None
        self.peer, inner.peer = None, ANYONE
        if not wait:  # on the progress thread: the lanes offer it kept messages first, in posted order
            return None
        self.open(True)
        return True

    def take_held(self, src: int | None = None, reserved: frozenset[int] = frozenset()) -> bool:
        """Whether a message was read ahead for it (`tags`), from the first sender in turn that
        has one (`src`: from that sender only): if so it is this receive's, as a message from the
        stream is. On the progress thread only senders whose lane it leads are looked at: a
        receive posted before it in another sender's lane is offered that sender's first."""
        if self.peer is not None:
            return self.inner.take_held(None, reserved)
        assert self.sources is not None
        g = self.g
        if not g.held:
            return False
        ranks = self.sources if src is None else [src]
        if src is None and self.heads is not None:
            ranks = self.heads
        found = g.held.take_first(self._rotated(sorted(ranks)), self.inner.tag, reserved)  # (a sender since left too)
        if found is None:
            return False
        s, message = found
        self._take(s, None)
        self.inner._take(message)
        return True

    def result(self) -> tuple[int, Any]:
        assert self.peer is not None
        return self.peer, self.inner.result()

    def release(self) -> None:
        self.inner.release()

    def watched(self) -> list[int]:
        """The sockets to poll for a first message: the arrived connections of the ranks it may take
        one from whose turn is free (one another thread holds would wake the poll for nothing)."""
        g = self.g
        found = []
        for s in self.heads or ():
            ch = g.p2p_incoming(s, self.op, take=False)
            if ch is not None and s not in self.left and not g.p2p_busy(s, False):
                found.append(ch.fd)
        return found

    def waiting(self, limit: float) -> str:
        """Why it failed to get a message in `limit` seconds."""
        g = self.g
        kept = g.held.kept_note(None)  # (messages of other tags: a tag mistake?)
        return (f"rank {g.rank()}: {self.op} in group {g.gid!r}: no rank sent a message it takes within {limit:g} s"
                f"{kept}")

    def _choose(self, wait: bool) -> bool:
        """Take the first message's source (and its turn); False if none has come (`wait` False).

        On the progress thread the lanes keep its place in each sender's queue, and a look holds
        no turn. A blocking one keeps each turn it takes until its message has come: a receive
        from that rank posted later (another thread's) waits for it."""
        assert self.sources is not None
        if not wait:  # on the progress thread: a look that does not wait, at the lanes it leads
            return self._look(self.heads if self.heads is not None else self.sources, 0.0, None)
        g = self.g
        if self._quick():
            return True
        deadline = deadlines.after(self.limit)
        held: dict[int, Any] = {}
        try:
            while True:
                g.check_usable(self.op)
                left = deadlines.left(deadline)
                if left <= 0:
                    raise known(RingTimeoutError(self.waiting(self.limit)), rank=g.rank(), group=g.gid, op=self.op)
                began = time.monotonic()
                if self._look(self.sources, min(left, POLL_SLICE), held):
                    return True
                deadline += deadlines.stopped_for(began, min(left, POLL_SLICE))  # (stopped: not counted)
                if self.take_held():  # read ahead by another thread's receive meanwhile
                    return True
                exc = self.ask_missing()
                if exc is not None:
                    g._fail(self.op, [], None, [], exc)
                    raise exc
        finally:
            self.askers.close()
            for turn in held.values():
                turn.release()

    def ask_missing(self) -> RingError | None:
        """The error to raise if a sender whose connection has not come says, asked, that the group
        failed there (`asking`; the caller breaks the group here too, as a receive from one rank
        does): a failure there went to the connections it had, not to one it never made."""
        if self.sources is None:
            return None
        missing = [s for s in self.sources if s not in self.known and s not in self.left]
        found = self.askers.look(missing)
        if found is not None and found[1].get("closed") is True:
            # That sender closed the group without sending here: one fewer that could send, not
            # the group's failure (a worker done with its part, while the others still send).
            message = found[1].get("message")
            self.left[found[0]] = message if isinstance(message, str) else "it closed the group"
            try:
                self._check_left()
            except PeerLostError as exc:  # every sender has left, or closed the group
                return exc
            return None
        return None if found is None else self.g.heard_by_asking(found[0], self.op, found[1])

    def _quick(self) -> bool:
        """Whether a message has come already from a sender whose turn is free, found by one poll
        of every arrived connection (`Comm.p2p_arrivals`) rather than a look at each sender in
        turn; if so it is this receive's. (Where none has, `_look` waits, holding the turns.)"""
        g = self.g
        found = g.p2p_arrivals()
        if not found:
            return False
        for s in self._rotated(sorted(set(found))):
            turn = g.p2p_turn(s, False, self.op, self.timeout, wait=False)
            if turn is None:
                continue  # another receive from s has its turn: it came first
            ch = g.p2p_incoming(s, self.op, take=False)
            why = "" if ch.staged() else ch.gone()
            if why == "":
                self._take(s, turn)
                return True
            turn.release()
            if why is not None:  # closed between messages: out of this wait, and of the group's poll
                self.left[s] = f"lost {ch.describe()}: {why}"
                g.p2p_unpoll(s)
        return False

    def _rotated(self, ranks: list[int]) -> list[int]:
        """`ranks` (ascending) from the one after the last sender, then round: senders take turns."""
        at = bisect.bisect_left(ranks, self.g.any_source_next)
        return ranks[at:] + ranks[:at]

    def _take(self, s: int, turn: Any) -> None:
        """Rank s's message is this receive's: its source, and the pair's turn, the inner receive's.
        (A receive for one tag keeps its `sources`, and its place in every lane, until the message
        is one of its tag: see `more`.)"""
        self.inner.turn = turn
        self.peer = self.inner.peer = s
        if self.inner.tag == ANY_TAG:
            self.sources = None
        self.g.any_source_next = s + 1

    def _look(self, ranks: list[int], wait: float, held: dict[int, Any] | None) -> bool:
        """Whether a message from one of `ranks` has come, waiting up to `wait` seconds for one
        (less while a connection has yet to arrive); if so its sender is this receive's source,
        and its turn the inner receive's. `held`: the turns a blocking receive keeps between
        looks (taken out as they are given up or handed on); None on the progress thread."""
        g, left, known = self.g, self.left, self.known
        order = self._rotated(ranks)
        turns: dict[int, Any] = held if held is not None else {}
        wanted = [s for s in order if s not in turns and s not in left]
        if wanted:  # a busy one belongs to a receive that came first
            turns.update(g.p2p_take_turns(wanted, self.op))
        channels: list[tuple[int, Any]] = []
        missing = staged = False
        try:
            for s in order:
                if s not in turns:
                    continue
                ch = known.get(s)
                if ch is None:
                    try:
                        ch = g.p2p_incoming(s, self.op)
                    except PeerLostError as exc:  # s left the job without a word to this rank
                        left[s] = g.departure(s) or str(exc)
                        turns.pop(s).release()
                        continue
                    if ch is None:
                        missing = True
                        if held is None:
                            turns.pop(s).release()
                        continue
                    known[s] = ch
                channels.append((s, ch))
                staged = staged or ch.staged() > 0
            # Bytes already read ahead are a message: then the poll only says which ranks before it have one too.
            chosen = self._first_ready(channels, 0.0 if staged else min(wait, CONNECT_RETRY) if missing else wait,
                                       held is not None)
            for s, _ in channels:
                if s in left:
                    turns.pop(s).release()  # closed between messages: out of the wait
            if chosen is None:
                self._check_left()
                return False
            self._take(chosen, turns.pop(chosen))
            return True
        finally:
            if held is None:
                for turn in turns.values():
                    turn.release()
                turns.clear()

    def _first_ready(self, channels: list[tuple[int, Any]], wait: float, keep: bool) -> int | None:
        """The first of `channels` (in their order) with bytes read ahead or to read, after a poll
        of up to `wait` seconds; one found closed between messages is left out of the wait from
        then on. `keep`: poll with this receive's own poller (a blocking one's channels only grow)."""
        if keep:
            poller, polled = self._poller, self._polled
            for s, ch in channels:
                if ch.fd not in polled:
                    poller.register(ch.fd, select.POLLIN)
                    polled.add(ch.fd)
        else:
            poller = select.poll()
            for s, ch in channels:
                poller.register(ch.fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(deadlines.poll_ms(wait))}
        for s, ch in channels:
            if ch.staged():
                return s
            if ch.fd not in ready:
                continue
            why = ch.gone()
            if why == "":
                return s
            if why is not None:
                self.left[s] = f"lost {ch.describe()}: {why}"
                if keep:
                    poller.unregister(ch.fd)  # (it would wake every poll from now on)
                    self._polled.discard(ch.fd)
        return None

    def _check_left(self) -> None:
        """PeerLostError once no rank is left that could send."""
        assert self.sources is not None
        if len(self.left) < len(self.sources):
            return
        g = self.g
        whys = "; ".join(f"rank {s}: {why}" for s, why in sorted(self.left.items()))
        raise PeerLostError(f"rank {g.rank()}: {self.op} in group {g.gid!r}: no rank is left to send ({whys})")


def recv_any(shape: Any, dtype: Any, *, tag: int = ANY_TAG, status: Any = None, group: Comm | None = None,
             timeout: float | None = None, async_op: bool = False) -> "tuple[int, np.ndarray] | work.Work":
    """`(src, x)`: the first array any other rank of the group sends (with `tag`), of `shape` and
    `dtype`, and its sender's rank (MPI's Recv from ANY_SOURCE); MismatchError if the sender's
    differs. A `shape` or `dtype` of None takes the sender's; `tag` and `status` as recv's.

    With `async_op=True`: a `Work` at once, whose `wait()` returns `(src, x)`."""
    if async_op is not False or work.active:
        r = work.route("recv_any", group, async_op,
                       lambda g: FromAny(_Recv(shape, dtype, ANYONE, g, timeout, tag, status), "recv_any", g, timeout),
                       p2p=True)
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, call="recv_any")
    plan = FromAny(_Recv(shape, dtype, ANYONE, g, timeout, tag, status), "recv_any", g, timeout)
    run_inline(g, plan, timeout)
    return plan.result()


def recv_object_any(*, tag: int = ANY_TAG, status: Any = None, group: Comm | None = None,
                    timeout: float | None = None, async_op: bool = False) -> "tuple[int, Any] | work.Work":
    """`(src, obj)`: the first object any other rank of the group sends with send_object (with
    `tag`), and its sender's rank (mpi4py's `recv(source=ANY_SOURCE)`); `status` as recv's.

    With `async_op=True`: a `Work` at once, whose `wait()` returns `(src, obj)` (unpickled there)."""
    if async_op is not False or work.active:
        r = work.route("recv_object_any", group, async_op,
                       lambda g: FromAny(_RecvObject(ANYONE, g, timeout, tag, status), "recv_object_any", g, timeout),
                       p2p=True,
                       finish=lambda got, error: (got[0], got[1].unpickled()) if error is None else None)
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, call="recv_object_any")
    plan = FromAny(_RecvObject(ANYONE, g, timeout, tag, status), "recv_object_any", g, timeout)
    run_inline(g, plan, timeout)
    src, received = plan.result()
    return src, received.unpickled()
