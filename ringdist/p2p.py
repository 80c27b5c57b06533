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

from . import buffers, handle, wire, work
from .channel import Channel, peer_name
from .algorithms.blocks import dtype_of
from .arrays import as_array, byte_view
from .collectives import _comm
from .errors import MismatchError
from .comm import Comm
from .flows import Inflow, Outflow, Segments, SizedInflow


class _Anyone:
    """A receive's source until a message has chosen it (`any_source`)."""

    def __repr__(self) -> str:
        return "any rank"


ANYONE = _Anyone()


def _message_header(tag: str, shape: tuple[int, ...], number: int) -> wire.Header:
    return wire.Header(wire.make_header("send", number, tag, shape))


def _tag(dtype: np.dtype, op: str, g: Comm) -> str:
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

    def __init__(self, x: Any, dst: Any, g: Comm, timeout: float | None):
        self.x, self.peer, self.g, self.timeout = x, dst, g, timeout
        self.ch: Channel | None = None
        self.inflows: list[Inflow] = []
        self.outflows: list[Outflow] = []
        self.turn: Any = None  # this message's turn on the pair's direction (`Comm.p2p_turn`)

    def start(self) -> float:
        g = self.g
        self.peer = g.check_peer(self.peer, "send", "dst")
        self.arr = as_array(self.x, self.op)
        self.data = np.ascontiguousarray(self.arr)
        self.tag = _tag(self.arr.dtype, "send", g)
        g.check_usable("send")
        return g._timeout(self.timeout)

    def open(self, wait: bool = True) -> bool:
        if self.turn is None:
            self.turn = self.g.p2p_turn(self.peer, True, "send", self.timeout, wait)
            if self.turn is None:
                return False
        ch, number = self.g.p2p_channel(self.peer, outgoing=True)  # type: ignore[misc]
        self.ch = ch
        self.outflows = [Outflow(ch, Segments([byte_view(self.data)]), "send",
                                 _message_header(self.tag, self.arr.shape, number))]
        return True

    def result(self) -> None:
        return None

    def release(self) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            turn.release()


def send(x: Any, dst: int, *, group: Comm | None = None, timeout: float | None = None,
         async_op: bool = False) -> "None | work.Work":
    """Send array `x` to rank `dst` of the group (any rank but this one).

    With `async_op=True`: a `Work` at once; `x` must not change until its `wait()` returns."""
    if async_op or work.active:
        r = work.route("send", group, async_op, lambda g: _Send(x, dst, g, timeout), p2p=True)
        if r is not work.HERE:
            return r
    g = _comm(group, timeout)
    run_inline(g, _Send(x, dst, g, timeout), timeout)
    return None


def run_inline(g: Comm, plan: Any, timeout: float | None) -> None:
    """A point-to-point plan (`jobs.Plan`) run here and now, as a blocking call with nothing
    queued before it: checked, its pair's turn and channel taken, its flows run, its turn given up."""
    plan.start()
    try:
        plan.open()
        g.run(plan.op, plan.inflows, plan.outflows, [plan.ch], timeout=timeout)
    finally:
        plan.release()


def _expect_message(mine: dict[str, Any], theirs: dict[str, Any], ch: Channel, op: str = "recv") -> None:
    if mine != theirs:
        got = dict(theirs)
        raise MismatchError(
            f"rank {ch.me} expected {op}(shape={tuple(mine['shape'])}, dtype={wire.describe_dtype(mine['dtype'])}) "
            f"from {peer_name(ch)} but rank {ch.peer} sent {wire.describe_header(got)} (group {ch.group!r})")


class _Recv:
    """A recv as a plan: checked and allocated when it starts (or, with a `shape` or `dtype` of
    None, once the sender's header says them); its channel taken once the sender's connection
    has arrived (see `jobs.Plan`)."""

    op = "recv"
    outgoing = False
    sources = None

    def __init__(self, shape: Any, dtype: Any, src: Any, g: Comm, timeout: float | None):
        self.shape, self.dtype, self.peer, self.g, self.timeout = shape, dtype, src, g, timeout
        self.ch: Channel | None = None
        self.inflows: list[Inflow] = []
        self.outflows: list[Outflow] = []
        self.turn: Any = None  # as a send's
        self.out: np.ndarray | None = None
        self.want: tuple[int, ...] | None = None  # the whole shape fixed, once started
        self.trailing: tuple[int, ...] = ()  # a subarray dtype's dims, with no shape given

    def start(self) -> float:
        g = self.g
        if self.peer is not ANYONE:  # (an any-source receive's source is its first message's)
            self.peer = g.check_peer(self.peer, "recv", "src")
        dt = None if self.dtype is None else np.dtype(self.dtype)
        if dt is not None and dt.hasobject:
            raise TypeError(f"rank {g.rank()}: {self.op}: ringdist receives raw array bytes; object dtypes are not supported")
        shape = None if self.shape is None else _shape(self.shape, g.rank(), self.op)
        # As an allocated array has them: numpy sizes an unsized dtype ('S') and moves a subarray
        # dtype's shape into the array's, as the sender's trailing dims.
        probe = None if dt is None else np.empty(0, dt)
        self.tag = None if probe is None else _tag(probe.dtype, self.op, g)
        dims = () if probe is None else probe.shape[1:]
        self.want = None if shape is None else shape + dims
        self.trailing = dims if shape is None else ()
        if shape is not None and dt is not None:  # else the sender's header says the rest (`_accept`)
            self.out = _allocate(shape, dt, g.rank(), self.op)
        g.check_usable(self.op)
        return g._timeout(self.timeout)

    def open(self, wait: bool = True) -> bool:
        if self.turn is None:  # held while the sender's connection is awaited: recvs keep their order
            self.turn = self.g.p2p_turn(self.peer, False, self.op, self.timeout, wait)
            if self.turn is None:
                return False
        got = self.g.p2p_channel(self.peer, outgoing=False, timeout=self.timeout, wait=wait)
        if got is None:
            return False
        ch, number = got
        self.ch = ch
        op = self.op  # (recv_any's, for an any-source receive)
        if self.out is None:
            self.inflows = [SizedInflow(ch, op, lambda fields, ch: self._accept(fields, ch, number))]
            return True
        header = _message_header(self.tag, self.out.shape, number)
        self.inflows = [Inflow(ch, Segments([byte_view(self.out)]), op, header,
                               check=lambda mine, theirs, ch: _expect_message(mine, theirs, ch, op))]
        return True

    def _accept(self, fields: dict[str, Any], ch: Channel, number: int) -> memoryview:
        """Where the message whose header is `fields` lands, allocated for the shape and dtype the
        sender declares, once they are checked against what this receive fixed."""
        shape = fields.get("shape")
        ok = (fields.get("op") == "send" and fields.get("seq") == number and isinstance(shape, list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
              and self.fits(tuple(shape), fields.get("dtype")))
        if not ok:
            raise MismatchError(f"rank {ch.me} expected {self.op}({self.wanted()}) from {peer_name(ch)} but rank "
                                f"{ch.peer} sent {wire.describe_header(dict(fields))} (group {ch.group!r})")
        dt = dtype_of(fields.get("dtype"), ch)
        self.out = _allocate(tuple(shape), dt, ch.me, f"{self.op} from rank {ch.peer}")
        return byte_view(self.out)

    def fits(self, shape: tuple[int, ...], tag: Any) -> bool:
        """Whether a message of `shape` and dtype `tag` is what this receive fixed (once started)."""
        if self.tag is not None and tag != self.tag:
            return False
        if self.want is not None:
            return shape == self.want
        n = len(self.trailing)
        return len(shape) >= n and shape[len(shape) - n:] == self.trailing

    def wanted(self) -> str:
        """What this receive fixed, as its mismatch error says it: 'shape=(any, 2), dtype=int32'."""
        any_shape = "any" if not self.trailing else "(any, " + ", ".join(map(str, self.trailing)) + ")"
        return (f"shape={any_shape if self.want is None else self.want}, "
                f"dtype={'any' if self.tag is None else wire.describe_dtype(self.tag)}")

    def result(self) -> np.ndarray:
        return self.out

    release = _Send.release


def _allocate(shape: tuple[int, ...], dt: np.dtype, rank: int, op: str) -> np.ndarray:
    """A received message's array; MemoryError or ValueError naming it when it cannot be made."""
    try:
        return buffers.cache.empty(shape, dt)
    except MemoryError:
        raise MemoryError(f"rank {rank}: {op}: no memory for shape={shape}, dtype={dt} "
                          f"({math.prod(shape) * dt.itemsize} bytes)") from None
    except ValueError as exc:  # numpy's own limits: more than 32 dimensions, or past its sizes
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


def recv(shape: Any, dtype: Any, src: int, *, group: Comm | None = None,
         timeout: float | None = None, async_op: bool = False) -> "np.ndarray | work.Work":
    """Receive an array of `shape` and `dtype` from rank `src`; MismatchError if the sender's differs.
    A `shape` or `dtype` of None takes the sender's (MPI's Probe and Get_count, without the probe).

    With `async_op=True`: a `Work` at once, whose `wait()` returns the array."""
    if async_op or work.active:
        r = work.route("recv", group, async_op, lambda g: _Recv(shape, dtype, src, g, timeout), p2p=True)
        if r is not work.HERE:
            return r
    g = _comm(group, timeout)
    plan = _Recv(shape, dtype, src, g, timeout)
    run_inline(g, plan, timeout)
    return plan.out


def recv_like(x: Any, src: int, *, group: Comm | None = None, timeout: float | None = None,
              async_op: bool = False) -> "np.ndarray | work.Work":
    """Receive an array shaped and typed like `x` from rank `src` (`async_op` as for `recv`)."""
    arr = np.asarray(x)
    return recv(arr.shape, arr.dtype, src, group=group, timeout=timeout, async_op=async_op)


def sendrecv(x: Any, dst: "int | None", src: "int | None", *, shape: Any = None, dtype: Any = None,
             group: Comm | None = None, timeout: float | None = None, async_op: bool = False) -> Any:
    """Send `x` to rank `dst` and receive from rank `src` at once (MPI's Sendrecv): the array
    received (of `shape` and `dtype`; None: the sender's), after `x` has gone. A `dst` or `src`
    of None skips that half (MPI's PROC_NULL: an edge of a grid); then None is returned.

    The send goes without blocking while the receive waits, so a ring of sendrecvs of any size
    completes. If the receive fails, its error is raised at once (the send, if still under way,
    goes on unreported). With `async_op=True`: a `Work` at once, done once both halves are,
    whose `wait()` returns the array."""
    g = _comm(group, timeout)
    me = g.rank()
    # Every argument checked before the send starts: a receive refused after it would wait for
    # the send to be taken first, and a send refused on the progress thread would leave the
    # receive waiting for its timeout.
    if shape is not None:
        _shape(shape, me, "sendrecv")
    if dtype is not None and np.dtype(dtype).hasobject:
        raise TypeError(f"rank {me}: sendrecv: ringdist receives raw array bytes; object dtypes are not "
                        f"supported")
    if dst is not None:
        _tag(as_array(x, "sendrecv").dtype, "sendrecv", g)
    if _is_rank(dst, me) and _is_rank(src, me):  # a periodic dimension of size 1: this rank's own x
        return _to_self(x, shape, dtype, g, async_op)
    for peer, role in ((dst, "dst"), (src, "src")):
        if peer is not None:
            g.check_peer(peer, "sendrecv", role)
    if dst is None and src is None:
        return done_work(g) if async_op else None
    if dst is None:
        return recv(shape, dtype, src, group=group, timeout=timeout, async_op=async_op)  # type: ignore[arg-type]
    sending = send(x, dst, group=group, timeout=timeout, async_op=True)
    if src is None:
        if async_op:
            return sending
        sending.wait()  # type: ignore[union-attr]
        return None
    try:
        receiving = recv(shape, dtype, src, group=group, timeout=timeout, async_op=async_op)
    except Exception:  # (an interrupt leaves the send reported)
        handle.forget(sending)  # type: ignore[arg-type]
        raise
    if async_op:
        return handle.joined(receiving, sending, "sendrecv", g)  # type: ignore[arg-type]
    sending.wait()  # type: ignore[union-attr]
    return receiving


def _is_rank(peer: Any, me: int) -> bool:
    return isinstance(peer, numbers.Integral) and not isinstance(peer, bool) and int(peer) == me


def _to_self(x: Any, shape: Any, dtype: Any, g: Comm, async_op: bool) -> Any:
    """A sendrecv from this rank to itself (MPI's Sendrecv allows it): a copy of `x`, checked
    against `shape` and `dtype` as a message from another rank would be."""
    arr = as_array(x, "sendrecv")
    receiving = _Recv(shape, dtype, ANYONE, g, None)
    receiving.op = "sendrecv"
    receiving.start()  # checked as a receive from another rank is
    want = "any" if dtype is None else np.empty(0, dtype).dtype
    error = None if receiving.fits(arr.shape, _tag(arr.dtype, "sendrecv", g)) else MismatchError(
        f"rank {g.rank()} expected sendrecv(shape={receiving.want or 'any'}, dtype={want}) from itself but sends "
        f"shape={arr.shape}, dtype={arr.dtype}")
    out = None
    if error is None:
        out = receiving.out if receiving.out is not None else buffers.cache.empty(arr.shape, arr.dtype)
        np.copyto(out, arr)  # (of the shape it fits)
    if async_op:
        return done_work(g, out, error)  # (its error at wait, as another rank's message's would be)
    if error is not None:
        raise error
    return out


def done_work(group: Comm | None, result: Any = None, error: BaseException | None = None) -> "work.Work":
    """A sendrecv's Work that is done at once with `result` or `error` (neither half, or only this rank)."""
    g = _comm(group, None)
    done = work.Work("sendrecv", g)
    if error is not None:
        with handle.lock:
            handle.unreported.add(done)
    done.complete(result, error)
    return done
