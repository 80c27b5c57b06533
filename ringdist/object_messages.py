"""send_object and recv_object: a picklable object to one rank of the group, as a message.

Each is a plan, as an array's send and recv are (`p2p`, `jobs.Plan`): the object pickled at
the call, checked when it starts, then its flows built on the pair's direct connection once its turn
at the pair's direction has come. Inline they run at once; queued behind the group's
outstanding operations they move on the progress thread with the other messages, never
blocking it (one waiting for its peer would hold up every other group's messages). The
receiver unpickles on the calling thread (with `async_op=True`, the thread that waits).

A sender that cannot pickle its object (or whose object is over RINGDIST_MAX_OBJECT_BYTES)
still sends the header, saying why in place of the parts' sizes: both ends raise ValueError
and the pair's messages stay in step.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import own_messages, wire, work
from .algorithms.blocks import sizes_of
from .arrays import NOTHING
from .calls import _comm
from .channel import Channel, about, peer_name
from .comm import Comm
from .errors import MismatchError, ProtocolError, RingError
from .flows import Inflow, Outflow, Segments, SizedInflow
from .objects import Pickled, sending_cap, unpickle
from .p2p import ANYONE, Receiving, run_inline, to_nobody
from .tags import ANY_TAG, Message, check_status, check_tag, fields_of, fill, matches, tag_of


def _message_header(number: int, fields: dict[str, Any], tag: int) -> wire.Header:
    return wire.Header(wire.make_header("send_object", number, NOTHING.dtype.str, (), **fields, **fields_of(tag)))


class _Turned:
    """What both plans share: the pair's turn, taken by `open` and given up by `release`."""

    op = ""
    outgoing = True
    sources = None  # (an any-source receive's: `any_source`)

    def __init__(self, peer: Any, g: Comm, timeout: float | None):
        self.peer, self.g, self.timeout = peer, g, timeout
        self.ch: Channel | None = None
        self.inflows: list[Inflow] = []
        self.outflows: list[Outflow] = []
        self.turn: Any = None

    def _take_turn(self, wait: bool) -> bool:
        if self.turn is None:
            self.turn = self.g.p2p_turn(self.peer, self.outgoing, self.op, self.timeout, wait)
        return self.turn is not None

    def release(self) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            turn.release()

    def more(self, wait: bool = True) -> bool:
        return False  # (see `_RecvObject.more`)


class _SendObject(_Turned):
    op = "send_object"
    outgoing = True

    def __init__(self, obj: Any, dst: Any, g: Comm, timeout: float | None, tag: Any = 0):
        super().__init__(dst, g, timeout)
        self.tag = tag
        # Pickled here, on the calling thread: the object as it is at the call, and no user
        # code (its __reduce__) on the progress thread. A failure is raised once its header went.
        known = (isinstance(dst, numbers.Integral) and not isinstance(dst, (bool, np.bool_))  # (checked at start,
                 and 0 <= dst < g.size())  # as `Comm.check_peer` takes it)
        limit, whose = sending_cap(g, [int(dst)] if known else [])  # over the receiver's limit: refused here too
        self.pickled = Pickled(obj, limit, "send_object", g.rank(), whose_cap=whose)

    def start(self) -> float:
        g = self.g
        self.peer = g.check_peer(self.peer, "send_object", "dst")
        self.tag = check_tag(self.tag, "send_object", g.rank())
        g.check_usable("send_object")
        return g._timeout(self.timeout)

    def open(self, wait: bool = True) -> bool:
        if not self._take_turn(wait):
            return False
        pickled = self.pickled
        _message_header(0, pickled.fields, self.tag)  # one that cannot be made fails before the message takes its number
        ch, number = self.g.p2p_channel(self.peer, outgoing=True, timeout=self.timeout, op=self.op)  # type: ignore[misc]
        self.outflows = [Outflow(ch, Segments(pickled.parts), "send_object",
                                 _message_header(number, pickled.fields, self.tag))]
        self.ch = ch  # the message has its number: its header goes, saying why if it could not be pickled
        return True

    def result(self) -> None:
        return None

    def own_error(self, exc: BaseException | None = None) -> None:
        """ValueError if the object could not be pickled and its header, saying so, was sent;
        from `exc` if the message failed too (the peer's error may be about it). A message that
        never took its number, or an interrupt, keeps its own error: the receiver heard nothing."""
        if self.pickled.error is not None and self.ch is not None and (exc is None or isinstance(exc, Exception)):
            raise ValueError(self.pickled.error) from exc


class _RecvObject(Receiving, _Turned):
    op = "recv_object"
    CHANNEL_OP = "recv_object"
    outgoing = False

    def __init__(self, src: Any, g: Comm, timeout: float | None, tag: Any = ANY_TAG, status: Any = None):
        super().__init__(src, g, timeout)
        self.tag, self.status = tag, status
        self.fields: dict[str, Any] | None = None  # the message's header and bytes, once it has come
        self.data: Any = None
        self.inflow: SizedInflow | None = None

    def start(self) -> float:
        g = self.g
        if self.peer is not ANYONE:  # (an any-source receive's source is its first message's)
            self.peer = g.check_peer(self.peer, self.op, "src")
        self.tag = check_tag(self.tag, self.op, g.rank(), receiving=True)
        check_status(self.status, self.op, g.rank())
        self.cap = g.settings.max_object_bytes
        g.check_usable(self.op)
        return g._timeout(self.timeout)

    def _arm(self, ch: Channel, number: int) -> None:
        self.ch = ch
        cap, op = self.cap, self.op

        def accept(fields: dict[str, Any], ch: Channel) -> memoryview:
            if fields.get("seq") != number:
                raise about(ch, MismatchError(
                    f"rank {ch.me} expected send_object from {peer_name(ch)} (message #{number}) "
                    f"but rank {ch.peer} sent {wire.describe_header(fields)} (group {ch.group!r})"))
            tag = tag_of(fields, ch.me, ch.peer)
            if not matches(self.tag, tag):  # another receive's: kept for it (`more`)
                return self._hold(tag, fields, ch)
            self._check(fields, ch)
            if isinstance(fields.get("failed"), str):  # raised once the message is read whole: the pair stays in step
                return memoryview(NOTHING)
            sizes = sizes_of(fields, ch)
            if sum(sizes) > cap:
                raise about(ch, RingError(f"rank {ch.me}: {op}: rank {ch.peer} declares a {sum(sizes)}-byte object, "
                                         f"over RINGDIST_MAX_OBJECT_BYTES={cap} here"))
            return memoryview(np.empty(sum(sizes), dtype=np.uint8))

        self.inflow = SizedInflow(ch, op, accept)
        self.inflows = [self.inflow]

    def _check(self, fields: dict[str, Any], ch: Channel) -> None:
        """MismatchError unless `fields` is an object's message (ProtocolError if it is not one)."""
        if fields.get("op") != "send_object":
            tag = "" if self.tag == ANY_TAG else f" tag={self.tag}"
            raise about(ch, MismatchError(
                f"rank {ch.me} expected send_object{tag} from {peer_name(ch)} but rank {ch.peer} "
                f"sent {wire.describe_header(fields)} (group {ch.group!r})"))
        sizes = sizes_of(fields, ch)
        if isinstance(fields.get("failed"), str):
            if sizes:
                raise about(ch, ProtocolError(f"rank {ch.me}: {self.op}: rank {ch.peer} says it could not send its "
                                             f"object yet declares parts of {sizes!r}"))
        elif not sizes:
            raise about(ch, RingError(f"rank {ch.me}: {self.op}: rank {ch.peer} declares an object of no parts"))

    def _took(self, message: Message, ch: Channel) -> None:
        self.fields, self.data = message.fields, memoryview(message.data)

    def result(self) -> "_RecvObject":
        if not self.taken:
            assert self.inflow is not None
            self.fields, self.data = self.inflow.fields, self.inflow.dest
        fill(self.status, self.peer, tag_of(self.fields, self.g.rank(), self.peer))
        return self  # unpickled by the caller, on its own thread (`unpickled`)

    def unpickled(self) -> Any:
        fields, data = self.fields, self.data
        assert fields is not None and data is not None
        r, src = self.g.rank(), self.peer
        failed = fields.get("failed")
        if isinstance(failed, str):
            raise ValueError(f"rank {r}: {self.op}: rank {src} could not send its object: {failed}")
        return unpickle(data, fields["sizes"], f"rank {r}: {self.op}: the object from rank {src}")


def send_object(obj: Any, dst: int, *, tag: int = 0, group: Comm | None = None, timeout: float | None = None,
                async_op: bool = False) -> "None | work.Work":
    """Send picklable `obj` to rank `dst` of the group, for its recv_object (`tag` as send's).

    A `dst` of None (MPI's PROC_NULL) sends nothing. With `async_op=True` (mpi4py's `isend`): a
    `Work` at once; `obj` is pickled before it returns."""
    if dst is None:
        return to_nobody("send_object", group, async_op, tag, timeout)
    g = _comm(group, timeout, call="send_object")
    if own_messages.is_me(dst, g):
        return own_messages.send_object(obj, g, tag, async_op)
    if async_op is not False or work.active:  # queued behind the group's outstanding operations, if it has any
        made: list[_SendObject] = []

        def plan(g: Comm) -> _SendObject:
            made.append(_SendObject(obj, dst, g, timeout, tag))
            return made[0]

        r = work.route("send_object", group, async_op, plan, p2p=True,
                       finish=lambda result, error: made[0].own_error(error))
        if r is not work.HERE:
            return r
    sending = _SendObject(obj, dst, g, timeout, tag)
    try:
        run_inline(g, sending, timeout)
    except BaseException as exc:
        sending.own_error(exc)
        raise
    sending.own_error()  # after its header went: the receiver raises too, and the pair stays in step
    return None


def recv_object(src: int, *, tag: int = ANY_TAG, status: Any = None, group: Comm | None = None,
                timeout: float | None = None, async_op: bool = False) -> Any:
    """The next object rank `src` sends with send_object (`tag` and `status` as recv's; a `src`
    of None, MPI's PROC_NULL: None at once).

    With `async_op=True` (mpi4py's `irecv`): a `Work` at once, whose `wait()` returns the object
    (unpickled there, on the waiting thread)."""
    if src is None:
        return to_nobody("recv_object", group, async_op, tag, timeout, status)
    g = _comm(group, timeout, call="recv_object")
    if own_messages.is_me(src, g):
        return own_messages.recv_object(g, tag, status, timeout, async_op)
    if async_op is not False or work.active:  # queued behind the group's outstanding operations, if it has any
        r = work.route("recv_object", group, async_op, lambda g: _RecvObject(src, g, timeout, tag, status), p2p=True,
                       finish=lambda received, error: received.unpickled() if error is None else None)
        if r is not work.HERE:
            return r
    receiving = _RecvObject(src, g, timeout, tag, status)
    run_inline(g, receiving, timeout)
    return receiving.result().unpickled()
