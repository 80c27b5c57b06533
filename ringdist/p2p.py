"""Point-to-point messages between any two ranks of a group, over direct connections.

Each ordered pair (sender, receiver) gets its own authenticated connection, opened by the
sender on first use and kept; messages between a pair arrive in order. Like MPI's
standard mode, `send` may block until the receiver takes the message; with `async_op=True`
(MPI's isend/irecv) both return a `work.Work` at once and move on the progress thread.
Threads may share a pair: its messages take turns in each direction (`Comm.p2p_turn`), so
each arrives whole, and each thread's in its order.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import buffers, handle, own_messages, wire, work
from .channel import Channel, about, peer_name
from .tags import ANY_TAG, Message, check_status, check_tag, fill, matches, tag_of
from .algorithms.blocks import declared_empty, dtype_of, sizes_of
from .arrays import as_array, byte_view
from .calls import check_flag
from .collectives import _comm
from .errors import MismatchError, ProtocolError, RingError, RingTimeoutError
from .comm import Comm
from .flows import Inflow, Outflow, Segments, SizedInflow


class _Anyone:
    """A receive's source until a message has chosen it (`any_source`)."""

    def __repr__(self) -> str:
        return "any rank"


ANYONE = _Anyone()


def _message_header(dtag: str, shape: tuple[int, ...], number: int, tag: int) -> wire.Header:
    fields = wire.make_header("send", number, dtag, shape)
    if tag:  # (a tag of 0 is left out: `tags`)
        fields["tag"] = tag
    return wire.Header(fields)


def _dtype_tag(dtype: np.dtype, op: str, g: Comm) -> str:
    """The dtype as the message's header names it, checked before the message takes its number
    (a message refused after it would leave the pair's numbers out of step)."""
    try:
        return wire.header_dtype(op, dtype)
    except ValueError as exc:
        raise ValueError(f"rank {g.rank()}: {exc}") from None


class _Send:
    """A send as a plan: checked and framed when it starts, its channel opened (see `jobs.Plan`)."""

    op = "send"
    outgoing = True
    sources = None  # (an any-source receive's: `any_source`)

    def __init__(self, x: Any, dst: Any, g: Comm, timeout: float | None, tag: Any = 0):
        self.x, self.peer, self.g, self.timeout, self.tag = x, dst, g, timeout, tag
        self.ch: Channel | None = None
        self.inflows: list[Inflow] = []
        self.outflows: list[Outflow] = []
        self.turn: Any = None  # this message's turn on the pair's direction (`Comm.p2p_turn`)

    def start(self) -> float:
        g = self.g
        self.peer = g.check_peer(self.peer, "send", "dst")
        self.tag = check_tag(self.tag, "send", g.rank())
        self.arr = as_array(self.x, self.op, g)
        self.data = np.ascontiguousarray(self.arr)
        self.dtag = _dtype_tag(self.arr.dtype, "send", g)
        g.check_usable("send")
        return g._timeout(self.timeout)

    def open(self, wait: bool = True) -> bool:
        if self.turn is None:
            self.turn = self.g.p2p_turn(self.peer, True, "send", self.timeout, wait)
            if self.turn is None:
                return False
        ch, number = self.g.p2p_channel(self.peer, outgoing=True, timeout=self.timeout, op=self.op)  # type: ignore[misc]
        self.ch = ch
        self.outflows = [Outflow(ch, Segments([byte_view(self.data)]), "send",
                                 _message_header(self.dtag, self.arr.shape, number, self.tag))]
        return True

    def more(self, wait: bool = True) -> bool:
        return False  # (see `_Recv.more`)

    def result(self) -> np.ndarray:
        return self.arr  # (as MLX's send returns its array)

    def release(self) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            turn.release()


def send(x: Any, dst: int, *, tag: int = 0, group: Comm | None = None, timeout: float | None = None,
         async_op: bool = False) -> "np.ndarray | work.Work":
    """Send array `x` to rank `dst` of the group (any rank but this one), with `tag` (an integer
    from 0 to rd.TAG_MAX) for the receive that asks for it. Returns `x` as an array, once sent
    (as MLX's `send` does).

    A `dst` of None (MPI's PROC_NULL: an edge of a grid) sends nothing.

    With `async_op=True`: a `Work` at once, whose `wait()` returns `x`; `x` must not change
    until then."""
    if dst is None:
        g = _comm(group, None)
        arr = as_array(x, "send", g)
        nobody = to_nobody("send", group, async_op, tag, timeout, result=arr)
        _dtype_tag(arr.dtype, "send", g)  # (as a send to a rank checks it)
        return arr if nobody is None else nobody
    g = _comm(group, timeout, call="send")
    if own_messages.is_me(dst, g):
        return own_messages.send(x, g, tag, async_op)
    if async_op is not False or work.active:
        r = work.route("send", group, async_op, lambda g: _Send(x, dst, g, timeout, tag), p2p=True)
        if r is not work.HERE:
            return r
    plan = _Send(x, dst, g, timeout, tag)
    run_inline(g, plan, timeout)
    return plan.arr


def run_inline(g: Comm, plan: Any, timeout: float | None) -> None:
    """A point-to-point plan (`jobs.Plan`) run here and now, as a blocking call with nothing
    queued before it: checked, its pair's turn and channel taken, its flows run, its turn given up."""
    plan.start()
    try:
        plan.open()
        # (A receive's message read ahead has no flows; one that reads another tag's goes on.)
        while plan.inflows or plan.outflows:
            g.run(plan.op, plan.inflows, plan.outflows, [plan.ch], timeout=timeout,
                  spare=getattr(plan, "spare", None))
            if not plan.more():
                break
    finally:
        plan.release()


class Receiving:
    """What a receive from one rank (`_Recv`, `object_messages._RecvObject`) does with tags
    (`tags`): look at the messages kept for it before the stream, keep one of another tag it
    reads, and go on to the next. A subclass has `g`, `peer`, `tag`, `op`, `timeout`, `turn`,
    `CHANNEL_OP` (its name where it waits for the sender's connection), `_arm(ch, number)`
    (the flow for the pair's next message), `_check(fields, ch)` and `_took(message)`."""

    CHANNEL_OP = "recv"
    holding: Message | None = None  # the message being read, when it is a later receive's
    taken = False  # its message was one read ahead (`take_held`)

    def open(self, wait: bool = True) -> bool:
        if self.taken or (self.g.held.by_sender and self.take_held()):
            return True
        if self.turn is None:  # held while the sender's connection is awaited: recvs keep their order
            self.turn = self.g.p2p_turn(self.peer, False, self.op, self.timeout, wait,
                                        self.take_held if wait else None)
            if self.turn is None:
                return self.taken  # busy (`wait` False), or its message was read ahead meanwhile
            if self.g.held.by_sender and self.take_held():  # read ahead by the turn's last holder
                return True
        got = self.g.p2p_channel(self.peer, outgoing=False, timeout=self.timeout, wait=wait, op=self.CHANNEL_OP)
        if got is None:
            return False
        self._arm(*got)
        return True

    def untouched(self) -> bool:
        """Whether none of the message has been read: its header not yet taken off the stream
        (looked at between reads only: see `spare`)."""
        return not self.taken and self.holding is None and bool(self.inflows) and \
            all(flow.need_header for flow in self.inflows)

    def give_back(self) -> None:
        """End this receive with none of its message read (`untouched`): the pair's stream is as
        it was, and the message is the next receive's, under its number."""
        self.g.p2p_uncount(self.peer)
        self.inflows = []

    def spare(self, exc: BaseException) -> bool:
        """Whether failure `exc` ends this receive alone, its group left usable (`give_back`): a
        timeout of its own wait, raised where the wait looks between reads, with none of the
        message read. Not an interruption (Ctrl-C, a signal handler's error) of a receive run on
        the calling thread: it may come between a read and its bookkeeping (bytes taken off the
        socket, not yet staged; a header taken, not yet accepted), so the stream is not known to
        be whole (a queued receive's is looked at between reads: `Lanes.interrupted`). Nor a
        peer's failure, or bytes gone wrong."""
        if not isinstance(exc, RingTimeoutError) or getattr(exc, "ringdist_origin", None) is not None:
            return False
        if not self.untouched():
            return False
        self.give_back()
        if self.peer is not ANYONE:
            note = self.g.held.kept_note(self.peer)
            if note and exc.args and isinstance(exc.args[0], str):
                exc.args = (exc.args[0] + note,) + exc.args[1:]
        return True

    def _hold(self, tag: int, fields: dict[str, Any], ch: Channel) -> memoryview:
        """Where a message of another tag lands: a buffer, kept (`more`) for a later receive."""
        data = hold_buffer(fields, ch, self.g.settings.max_object_bytes)
        self.holding = Message(tag, fields, data)
        return memoryview(data)

    def more(self, wait: bool = True) -> bool:
        """Once the flows are done: whether the message read was another tag's, now kept for a
        later receive; if so this receive goes on to the pair's next message (its turn still held)."""
        held, self.holding = self.holding, None
        if held is None:
            return False
        self.g.held.put(self.peer, held)
        got = self.g.p2p_channel(self.peer, outgoing=False, op=self.CHANNEL_OP)
        assert got is not None  # (its connection is there: the message just came on it)
        self._arm(*got)
        return True

    def take_held(self, src: int | None = None, reserved: frozenset[int] = frozenset()) -> bool:
        """Whether a message from its source was read ahead for it: if so it is this receive's
        (checked as one from the stream is: an error, refused on the group, if it does not fit).
        (`src`: the sender whose kept messages are offered, its own for a receive from one rank;
        `reserved`: tags a receive posted before it waits for, as `tags.Held.take`'s.)"""
        message = self.g.held.take(self.peer, self.tag, reserved)
        if message is None:
            return False
        self._take(message)
        return True

    def _take(self, message: Message) -> None:
        g = self.g
        ch = g.p2p_incoming(self.peer, self.op, take=False)
        assert ch is not None  # (the message came on it)
        try:
            self._check(message.fields, ch)
        except RingError as exc:
            g.refuse(self.op, exc)
            raise
        self._took(message, ch)
        self.taken = True
        self.inflows = []


class _Recv(Receiving):
    """A recv as a plan: checked and allocated when it starts (or, with a `shape` or `dtype` of
    None, once the sender's header says them); its message taken from those read ahead of it
    (`tags`), or its channel taken once the sender's connection has arrived (see `jobs.Plan`).
    A message of another tag read on the way is kept for a later receive (`more`)."""

    op = "recv"
    outgoing = False
    sources = None

    def __init__(self, shape: Any, dtype: Any, src: Any, g: Comm, timeout: float | None, tag: Any = ANY_TAG,
                 status: Any = None):
        self.shape, self.dtype, self.peer, self.g, self.timeout = shape, dtype, src, g, timeout
        self.tag, self.status = tag, status
        self.ch: Channel | None = None
        self.inflows: list[Inflow] = []
        self.outflows: list[Outflow] = []
        self.turn: Any = None  # as a send's
        self.out: np.ndarray | None = None
        self.want: tuple[int, ...] | None = None  # the whole shape fixed, once started
        self.trailing: tuple[int, ...] = ()  # a subarray dtype's dims, with no shape given
        self.dtag: str | None = None  # the dtype as a header names it, if fixed

    got: int | None = None  # the tag of the message it took, once it has one (else its own, or 0)

    def start(self) -> float:
        g = self.g
        if self.peer is not ANYONE:  # (an any-source receive's source is its first message's)
            self.peer = g.check_peer(self.peer, "recv", "src")
        self.tag = check_tag(self.tag, self.op, g.rank(), receiving=True)
        if self.status is not None:
            check_status(self.status, self.op, g.rank())
        dt = receivable_dtype(self.dtype, self.op, g.rank())
        shape = None if self.shape is None else _shape(self.shape, g.rank(), self.op)
        # As an allocated array has them: numpy sizes an unsized dtype ('S') and moves a subarray
        # dtype's shape into the array's, as the sender's trailing dims.
        probe = None if dt is None else np.empty(0, dt)
        self.dtag = None if probe is None else _dtype_tag(probe.dtype, self.op, g)
        dims = () if probe is None else probe.shape[1:]
        self.want = None if shape is None else shape + dims
        self.trailing = dims if shape is None else ()
        if shape is not None and dt is not None:  # else the sender's header says the rest (`_accept`)
            self.out = _allocate(shape, dt, g.rank(), self.op)
        g.check_usable(self.op)
        return g._timeout(self.timeout)

    def _arm(self, ch: Channel, number: int) -> None:
        """The flow for the pair's next message, number `number` on `ch`."""
        self.ch, self.number = ch, number
        out = self.out
        if out is None:
            self.inflows = [SizedInflow(ch, self.op, self._accept)]  # (op: recv_any's, for an any-source receive)
        else:  # a header byte for byte this one's (its tag, or 0 for any) lands with nothing decoded
            header = _message_header(self.dtag, out.shape, number, self.tag if self.tag > 0 else 0)
            self.inflows = [SizedInflow(ch, self.op, self._accept, 0, header, byte_view(out))]

    def _accept(self, fields: dict[str, Any], ch: Channel) -> memoryview:
        """Where the message whose header is `fields` lands: for another tag, a buffer it is kept
        in (`more`); else this receive's array, allocated for the shape and dtype the sender
        declares once they are checked against what this receive fixed."""
        number = self.number
        if fields.get("seq") != number:
            raise about(ch, MismatchError(
                f"rank {ch.me} expected message #{number} from {peer_name(ch)} but rank {ch.peer} "
                f"sent {wire.describe_header(dict(fields))} (group {ch.group!r})"))
        tag = tag_of(fields, ch.me, ch.peer)
        if not matches(self.tag, tag):
            return self._hold(tag, fields, ch)
        self._check(fields, ch)
        if self.out is None:
            self.out = declared_empty(tuple(fields["shape"]), dtype_of(fields.get("dtype"), ch),
                                      f"rank {ch.me}: {self.op}: {peer_name(ch)}")
        self.got = tag
        return byte_view(self.out)

    def _check(self, fields: dict[str, Any], ch: Channel) -> None:
        """MismatchError unless the message whose header is `fields` is what this receive fixed."""
        shape = fields.get("shape")
        if not (fields.get("op") == "send" and isinstance(shape, list) and self.fits(tuple(shape), fields.get("dtype"))):
            tag = "" if self.tag == ANY_TAG else f", tag={self.tag}"
            raise about(ch, MismatchError(
                f"rank {ch.me} expected {self.op}({self.wanted()}{tag}) from {peer_name(ch)} but rank "
                f"{ch.peer} sent {wire.describe_header(dict(fields))} (group {ch.group!r})"))

    def _took(self, message: Message, ch: Channel) -> None:
        self.out = message.data.view(dtype_of(message.fields.get("dtype"), ch)).reshape(tuple(message.fields["shape"]))
        self.got = message.tag

    def fits(self, shape: tuple[int, ...], tag: Any) -> bool:
        """Whether a message of `shape` and dtype `tag` is what this receive fixed (once started)."""
        if self.dtag is not None and tag != self.dtag:
            return False
        if self.want is not None:
            return shape == self.want
        n = len(self.trailing)
        return len(shape) >= n and shape[len(shape) - n:] == self.trailing

    def wanted(self) -> str:
        """What this receive fixed, as its mismatch error says it: 'shape=(any, 2), dtype=int32'."""
        any_shape = "any" if not self.trailing else "(any, " + ", ".join(map(str, self.trailing)) + ")"
        return (f"shape={any_shape if self.want is None else self.want}, "
                f"dtype={'any' if self.dtag is None else wire.describe_dtype(self.dtag)}")

    def result(self) -> np.ndarray:
        if self.status is not None:  # (a header byte for byte the one it expects carries its tag, or 0)
            fill(self.status, self.peer, self.got if self.got is not None else max(self.tag, 0))
        return self.out

    release = _Send.release


def hold_buffer(fields: dict[str, Any], ch: Channel, cap: int) -> np.ndarray:
    """A buffer for a message read ahead of its receive (`tags`), as its header declares it: a
    flat byte array (an array's message is viewed as its dtype and shape when taken)."""
    if fields.get("op") == "send":
        dt = dtype_of(fields.get("dtype"), ch)
        shape = tuple(fields["shape"])
        return declared_empty(shape, dt, f"rank {ch.me}: a message kept for a later receive: {peer_name(ch)}"
                              ).reshape(-1).view(np.uint8)
    if fields.get("op") == "send_object":
        sizes = sizes_of(fields, ch)
        if sum(sizes) > cap:
            raise about(ch, RingError(f"rank {ch.me}: rank {ch.peer} declares a {sum(sizes)}-byte object, over "
                                     f"RINGDIST_MAX_OBJECT_BYTES={cap} here"))
        return np.empty(sum(sizes), dtype=np.uint8)
    raise about(ch, ProtocolError(
        f"rank {ch.me}: {peer_name(ch)} sent {wire.describe_header(dict(fields))} on the connection for its messages"))


def _allocate(shape: tuple[int, ...], dt: np.dtype, rank: int, op: str) -> np.ndarray:
    """A receive's array, of the shape and dtype it was given; MemoryError or ValueError naming it
    when it cannot be made."""
    try:
        return buffers.cache.empty(shape, dt)
    except MemoryError:
        raise MemoryError(f"rank {rank}: {op}: no memory for shape={shape}, dtype={dt} "
                          f"({math.prod(shape) * dt.itemsize} bytes)") from None
    except (ValueError, OverflowError) as exc:  # numpy's own limits: more than 32 dimensions, or past its sizes
        raise ValueError(f"rank {rank}: {op}: shape={shape}, dtype={dt} cannot be allocated: {exc}") from None


def _shape(shape: Any, rank: int, op: str = "recv") -> tuple[int, ...]:
    """recv's `shape` as a tuple: an integer or a sequence of them, none negative."""
    dims = (shape,) if isinstance(shape, numbers.Integral) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(f"rank {rank}: {op}: shape must be an integer or a sequence of integers, got "
                        f"{type(shape).__name__}") from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"rank {rank}: {op}: shape={shape!r}: each dimension must be an integer, got "
                            f"{type(d).__name__}")
        if d < 0:
            raise ValueError(f"rank {rank}: {op}: shape={shape!r}: dimensions cannot be negative")
    return tuple(int(d) for d in dims)


def recv(shape: Any, dtype: Any, src: int, *, tag: int = ANY_TAG, status: Any = None,
         group: Comm | None = None, timeout: float | None = None, async_op: bool = False) -> "np.ndarray | work.Work":
    """Receive an array of `shape` and `dtype` from rank `src`; MismatchError if the sender's differs.
    A `shape` or `dtype` of None takes the sender's (MPI's Probe and Get_count, without the probe).
    `tag`: the next message from `src` with this tag (default rd.ANY_TAG: the next message);
    `status`: a `rd.Status` given the message's source and tag. A `src` of None (MPI's
    PROC_NULL) receives nothing and returns None (`status`: source None, tag rd.ANY_TAG).

    With `async_op=True`: a `Work` at once, whose `wait()` returns the array."""
    if src is None:
        return to_nobody("recv", group, async_op, tag, timeout, status, shape, dtype)
    g = _comm(group, timeout, call="recv")
    if own_messages.is_me(src, g):
        return own_messages.recv(_Recv(shape, dtype, ANYONE, g, timeout, tag, status), g, async_op)
    if async_op is not False or work.active:
        r = work.route("recv", group, async_op, lambda g: _Recv(shape, dtype, src, g, timeout, tag, status),
                       p2p=True)
        if r is not work.HERE:
            return r
    plan = _Recv(shape, dtype, src, g, timeout, tag, status)
    run_inline(g, plan, timeout)
    return plan.result()


def receivable_dtype(dtype: Any, op: str, me: int) -> np.dtype | None:
    """A receive's `dtype` (None: the sender's, as it comes), or TypeError naming the rank, the
    call and the problem: not a dtype, object, or no fixed item size (as a send refuses it)."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"rank {me}: {op}: dtype={dtype!r} is not a numpy dtype ({exc})") from None
    if dt.hasobject:
        raise TypeError(f"rank {me}: {op}: ringdist receives raw array bytes; object dtypes are not supported")
    if np.empty(0, dt).dtype.itemsize == 0:  # (numpy sizes 'S' and 'U' as one character; not 'V0')
        raise TypeError(f"rank {me}: {op}: dtype {dt} has no fixed item size")
    return dt


def recv_like(x: Any, src: int, *, tag: int = ANY_TAG, status: Any = None, group: Comm | None = None,
              timeout: float | None = None, async_op: bool = False) -> "np.ndarray | work.Work":
    """Receive an array shaped and typed like `x` from rank `src` (the rest as for `recv`)."""
    arr = np.asarray(x)
    if arr.dtype.hasobject or arr.dtype.itemsize == 0:
        as_array(x, "recv_like", _comm(group, timeout, call="recv_like"))  # (raises, naming the rank: None is no array)
    return recv(arr.shape, arr.dtype, src, tag=tag, status=status, group=group, timeout=timeout,
                async_op=async_op)


def sendrecv(x: Any, dst: "int | None", src: "int | None", *, shape: Any = None, dtype: Any = None,
             sendtag: int = 0, recvtag: int = ANY_TAG, status: Any = None, group: Comm | None = None,
             timeout: float | None = None, async_op: bool = False) -> Any:
    """Send `x` to rank `dst` and receive from rank `src` at once (MPI's Sendrecv): the array
    received (of `shape` and `dtype`; None: the sender's), after `x` has gone. A `dst` or `src`
    of None skips that half (MPI's PROC_NULL: an edge of a grid); then None is returned.
    `sendtag`, `recvtag` and `status` are send's `tag` and recv's `tag` and `status`.

    The send goes without blocking while the receive waits, so a ring of sendrecvs of any size
    completes. If the receive fails, its error is raised at once (the send, if still under way,
    goes on unreported). With `async_op=True`: a `Work` at once, done once both halves are,
    whose `wait()` returns the array."""
    g = _comm(group, timeout, call="sendrecv")
    me = g.rank()
    # Every argument checked before the send starts: a receive refused after it would wait for
    # the send to be taken first, and a send refused on the progress thread would leave the
    # receive waiting for its timeout.
    check_tag(sendtag, "sendrecv", me)
    check_tag(recvtag, "sendrecv", me, receiving=True)
    check_status(status, "sendrecv", me)
    check_flag(async_op, "async_op", g, "sendrecv")
    if shape is not None:
        _shape(shape, me, "sendrecv")
    receivable_dtype(dtype, "sendrecv", me)
    if dst is not None:
        _dtype_tag(as_array(x, "sendrecv", g).dtype, "sendrecv", g)
    for peer, role in ((dst, "dst"), (src, "src")):
        if peer is not None and not own_messages.is_me(peer, g):  # (this rank: a message to itself)
            g.check_peer(peer, "sendrecv", role)
    if dst is not None and src is not None and own_messages.is_me(dst, g) and own_messages.is_me(src, g):
        own_messages.check_sendrecv(g, int(sendtag), int(recvtag))
    if src is None:
        fill(status, None, ANY_TAG)  # (as a receive from None)
    if dst is None and src is None:
        return done_work(g) if async_op else None
    if dst is None:
        return recv(shape, dtype, src, tag=recvtag, status=status, group=group, timeout=timeout,  # type: ignore[arg-type]
                    async_op=async_op)
    if not async_op:
        g.check_usable("sendrecv")  # (a broken group's error names this call, not its halves)
    sending = send(x, dst, tag=sendtag, group=group, timeout=timeout, async_op=True)
    if src is None:
        if async_op:  # (done with None, as the blocking call returns: the receive from None's)
            return handle.joined(done_work(g), sending, "sendrecv", g)  # type: ignore[arg-type]
        sending.wait()  # type: ignore[union-attr]
        return None
    try:
        receiving = recv(shape, dtype, src, tag=recvtag, status=status, group=group, timeout=timeout,
                         async_op=async_op)
    except Exception:  # (an interrupt leaves the send reported)
        handle.forget(sending)  # type: ignore[arg-type]
        raise
    if async_op:
        return handle.joined(receiving, sending, "sendrecv", g)  # type: ignore[arg-type]
    sending.wait()  # type: ignore[union-attr]
    return receiving


def to_nobody(op: str, group: Comm | None, async_op: Any, tag: Any, timeout: Any, status: Any = None,
              shape: Any = None, dtype: Any = None, result: Any = None) -> "work.Work | None":
    """A message to or from None (MPI's PROC_NULL): its arguments checked as a message to a rank's
    are (an edge rank fails as an inner one does), nothing moved; None, or with `async_op=True` a
    Work done with `result`. A receive's `status`: source None, rd.ANY_TAG."""
    g = _comm(group, timeout, call=op)
    me = g.rank()
    receiving = op.startswith("recv")
    check_tag(tag, op, me, receiving=receiving)
    check_flag(async_op, "async_op", g, op)
    if receiving:
        check_status(status, op, me)
        if shape is not None:
            _shape(shape, me, op)
        receivable_dtype(dtype, op, me)
        fill(status, None, ANY_TAG)
    return done_work(g, result, op=op) if async_op else None


def done_work(group: Comm | None, result: Any = None, error: BaseException | None = None,
              op: str = "sendrecv") -> "work.Work":
    """A Work that is done at once with `result` or `error` (a sendrecv with neither half, or only
    this rank; a message to or from None)."""
    return handle.done(op, _comm(group, None), result, error)
