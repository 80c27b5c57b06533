"""The data path: streams of frames over non-blocking channels, driven by one poll loop.

A collective is a set of `Inflow`s (bytes expected from a peer, received with
`recv_into` straight into their destination) and `Outflow`s (bytes to a peer, sent
with `sendmsg` from memoryviews of the source). An outflow may relay an inflow: it
sends a byte as soon as its `source` has it, which is how a ring forwards a chunk
before its whole block has arrived. Every stream starts with the collective's
HEADER frame, checked by the receiver. The loop blocks in `poll` (no spinning) and
its timeout is progress-based: it resets whenever a byte moves.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any, Callable

from . import deadlines, errors, wire
from .channel import STAGE_SIZE, Channel, socket_error
from .errors import MismatchError, PeerLostError, ProtocolError, RingError, RingTimeoutError

MIN_FRAME = 64 * 1024  # do not cut frames smaller than this unless a segment ends
# Largest DATA frame a sender makes. Frames end where a segment ends anyway; measured with
# both alternating call by call, 64 MiB frames made 16-64 MiB collectives 2-7% faster than
# 4 MiB ones on 2 and 4 ranks. An ABORT waits for the frame in flight (within its 1 s budget).
MAX_FRAME = 64 * 1024 * 1024
DIRECT_MIN = 64 * 1024  # below this many bytes left, payload goes through the staging buffer
SMALL_REST = 64 * 1024  # with this little left to receive, read ahead freely into the stage
REDUCE_CHUNK = 64 * 1024  # a reducing inflow folds what has landed once this much is there

POLLIN = select.POLLIN | select.POLLPRI
POLLOUT = select.POLLOUT
POLLERR = select.POLLERR | select.POLLHUP | select.POLLNVAL


def raise_remote(fields: dict[str, Any], ch: Channel, op: str) -> None:
    """Turn a received ABORT frame into the exception it carries (passed on, it stays the same)."""
    name = fields.get("error")
    cls = getattr(errors, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, RingError)):
        cls = RingError
    message = fields.get("message")
    if not isinstance(message, str):
        message = "(no message)"
    origin = fields.get("origin")
    if not isinstance(origin, int) or isinstance(origin, bool):
        origin = ch.peer
    exc = cls(f"rank {ch.me}: {op} aborted by rank {origin}: {message}")
    exc.ringdist_origin = (origin, message)  # what an ABORT passed on carries, unchanged
    raise exc


def abort_fields(exc: BaseException, me: int, seq: int | None) -> dict[str, Any]:
    """The body of the ABORT this rank sends for `exc`: the original cause, not a chain of hops."""
    origin, message = getattr(exc, "ringdist_origin", (me, str(exc) or type(exc).__name__))
    return {"error": type(exc).__name__, "message": message[:4000], "origin": origin, "seq": seq}


def pending_abort(channels: list[Channel], op: str) -> None:
    """Raise the ABORT a peer sent before it went away, if one already arrived on `channels`.

    A peer that aborts and exits makes our next send fail with a broken pipe; the reason
    it left is usually waiting, unread, in our receive buffer.
    """
    for ch in channels:
        try:
            while ch.fill_stage():
                pass
        except (PeerLostError, OSError):
            pass
        stage, pos, end = ch.stage_view, ch.stage_start, ch.stage_end
        while end - pos >= wire.PREFIX_SIZE:
            try:
                kind, length = wire.decode_prefix(stage[pos:pos + wire.PREFIX_SIZE])
            except ProtocolError:
                break
            if end - pos - wire.PREFIX_SIZE < length:
                break
            if kind == wire.ABORT:
                raise_remote(wire.decode_map(stage[pos + wire.PREFIX_SIZE:pos + wire.PREFIX_SIZE + length]), ch, op)
            pos += wire.PREFIX_SIZE + length


def abort_waiting(channels: list[Channel], ready: list[tuple[int, int]], seq: int, op: str) -> None:
    """Raise the ABORT a peer sent for collective `seq` (or an earlier one) if it has arrived.

    Called once a collective has gone well here: a peer that gave up on it (a timeout while
    this rank was late, a failure further round the ring) sent an ABORT after its last
    frame of the call, so it is the next frame on that peer's channel. `ready` is a poll's
    answer for `channels` (fds with bytes to read).
    """
    readable = {fd for fd, _ in ready}
    for ch in channels:
        if ch.fd in readable or ch.stage_end > ch.stage_start:
            _raise_next_abort(ch, seq, op)


def _raise_next_abort(ch: Channel, seq: int, op: str) -> None:
    """Raise the channel's next frame if it is an ABORT for collective `seq` or earlier.

    Anything else (the next collective's header from a peer ahead) is left staged for its
    reader, as is a closed connection: a peer may leave once a call has gone well.
    """
    try:
        if ch.staged() < wire.PREFIX_SIZE:
            ch.fill_stage(wire.PREFIX_SIZE - ch.staged())
            if ch.staged() < wire.PREFIX_SIZE:
                return
        start = ch.stage_start
        kind, length = wire.decode_prefix(ch.stage_view[start:start + wire.PREFIX_SIZE])
        if kind != wire.ABORT:
            return
        end = wire.PREFIX_SIZE + length
        waiter = None
        deadline = time.monotonic() + 1.0  # an ABORT is sent whole: the rest is on its way
        while ch.staged() < end:
            if ch.fill_stage(end - ch.staged()):
                continue
            if waiter is None:
                waiter = select.poll()
                waiter.register(ch.fd, POLLIN)
            left = deadline - time.monotonic()
            if left <= 0 or not waiter.poll(left * 1000):
                return
        start = ch.stage_start
        fields = wire.decode_map(ch.stage_view[start + wire.PREFIX_SIZE:start + end])
    except (PeerLostError, ProtocolError):
        return  # the next operation on this channel reports it
    theirs = fields.get("seq")
    if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs > seq:
        return
    raise_remote(fields, ch, op)


class Segments:
    """A stream's byte layout: a list of byte memoryviews, walked in order."""

    __slots__ = ("views", "total", "index", "pos")

    def __init__(self, views: list[memoryview]):
        self.views = [v for v in views if len(v)]
        self.total = sum(len(v) for v in self.views)
        self.index = 0
        self.pos = 0

    def current(self, limit: int) -> memoryview:
        view = self.views[self.index]
        return view[self.pos:self.pos + limit]

    def advance(self, n: int) -> None:
        self.pos += n
        if self.pos == len(self.views[self.index]):
            self.index += 1
            self.pos = 0

    def left_in_segment(self) -> int:
        return len(self.views[self.index]) - self.pos


class Inflow:
    """Bytes from `ch` into `segments`, after a HEADER equal to `expect` (or passing `check`).

    With `expect=None` the stream continues an earlier one of the same operation: no header.
    """

    def __init__(self, ch: Channel, segments: Segments, op: str, expect: wire.Header | None = None,
                 check: Callable[[dict[str, Any], dict[str, Any], Channel], None] | None = None):
        self.ch = ch
        self.seg = segments
        self.total = segments.total
        self.op = op
        self.expect = expect
        self.check = check or check_same
        self.need_header = expect is not None
        self.received = 0
        self.frame_left = 0
        self.done = self.total == 0 and not self.need_header

    @property
    def ready(self) -> int:
        """Bytes of the stream that are in place (what a relaying outflow may forward)."""
        return self.received

    def on_readable(self) -> int:
        """Receive what the socket has; return bytes read (progress)."""
        ch = self.ch
        if self.frame_left >= DIRECT_MIN and not ch.staged():
            return self._direct()
        if self.need_header or self.total - self.received <= SMALL_REST:
            limit = STAGE_SIZE  # small: one recv takes header and payload
        elif self.frame_left:
            limit = self.frame_left + wire.PREFIX_SIZE  # the end of this frame and the next prefix
        elif ch.staged() < wire.PREFIX_SIZE:
            limit = wire.PREFIX_SIZE - ch.staged()  # the prefix alone: the payload goes direct
        else:
            limit = STAGE_SIZE  # a control frame (an ABORT) is arriving: take its body
        k = ch.fill_stage(limit)
        self._consume_stage()
        return k

    def resume(self, received: int) -> None:
        """Continue a stream whose header and DATA prefix were taken elsewhere, `received`
        payload bytes already in place (a single DATA frame carries the whole payload)."""
        self.need_header = False
        self.frame_left = self.total - received
        self.received = received
        if received:
            self.seg.advance(received)
        self.done = received == self.total

    def consume_staged(self) -> None:
        """Take bytes read ahead (during the previous collective) before polling the socket."""
        if self.ch.staged():
            self._consume_stage()

    def _direct(self) -> int:
        k = self.ch.recv_into(self.seg.current(self.frame_left), self.op)
        if k:
            self._advance(k)
        return k

    def _advance(self, n: int) -> None:
        self.seg.advance(n)
        self.frame_left -= n
        self.received += n
        self.on_data()
        if self.received == self.total and not self.need_header:
            self.done = True

    def on_data(self) -> None:
        """Hook: bytes up to `self.received` have landed (subclasses reduce them)."""

    def _consume_stage(self) -> None:
        ch = self.ch
        stage = ch.stage_view
        while not self.done and ch.stage_end > ch.stage_start:
            start = ch.stage_start
            staged = ch.stage_end - start
            if self.frame_left:
                n = min(staged, self.frame_left, self.seg.left_in_segment())
                self.seg.current(n)[:] = stage[start:start + n]
                ch.stage_start = start + n
                self._advance(n)
                continue
            if staged < wire.PREFIX_SIZE:
                return
            kind, length = wire.decode_prefix(stage[start:start + wire.PREFIX_SIZE])
            if kind == wire.DATA:
                if self.need_header:
                    raise ProtocolError(f"rank {ch.me}: DATA before HEADER from {ch.describe()}")
                rest = self.total - self.received
                if length == 0 or length > rest:
                    raise ProtocolError(
                        f"rank {ch.me}: {ch.describe()} sent a DATA frame of {length} bytes "
                        f"where {rest} remain in {self.op}")
                ch.stage_start += wire.PREFIX_SIZE
                self.frame_left = length
                continue
            if staged < wire.PREFIX_SIZE + length:
                return
            body = stage[start + wire.PREFIX_SIZE:start + wire.PREFIX_SIZE + length]
            ch.stage_start = start + wire.PREFIX_SIZE + length
            if kind == wire.HEADER and self.need_header and body == self.expect.body:
                self.need_header = False  # byte-identical to ours: the common case, nothing to decode
            else:
                fields = wire.decode_map(body)
                if kind == wire.ABORT:
                    raise_remote(fields, ch, self.op)
                if kind != wire.HEADER or not self.need_header:
                    raise ProtocolError(f"rank {ch.me}: unexpected {wire.KIND_NAMES[kind]} frame from {ch.describe()}")
                self.check(self.expect.fields, wire.check_header(fields), ch)
                self.need_header = False
            if self.received == self.total:
                self.done = True


class ReducingInflow(Inflow):
    """An inflow that folds each landed chunk into an accumulator: `acc = op(acc, own)`.

    `pairs[j]` is (acc, own) for the j-th non-empty segment: typed views where acc is the
    segment's destination; `own=None` makes a plain segment (bytes land, nothing to fold).
    With `own_first` the fold is `acc = op(own, acc)`: two ranks folding each other's
    operands in the same order get the same bits. `ready` counts reduced (or landed plain)
    bytes, so a relaying outflow only forwards partial results that are complete.
    """

    def __init__(self, ch: Channel, pairs: list[tuple[Any, Any]], ufunc: Any, op: str,
                 expect: wire.Header | None = None, own_first: bool = False):
        pairs = [(acc, own) for acc, own in pairs if acc.size]
        super().__init__(ch, Segments([memoryview(acc.reshape(-1).view("u1")) for acc, _ in pairs]), op, expect)
        self.pairs = pairs
        self.ufunc = ufunc
        self.itemsize = pairs[0][0].itemsize if pairs else 1
        self.own_first = own_first
        self.reduced = 0  # stream bytes reduced
        self.red_seg = 0  # segment being reduced
        self.red_seg_start = 0  # its first stream byte

    @property
    def ready(self) -> int:
        return self.reduced

    def on_data(self) -> None:
        while self.reduced < self.received:
            acc, own = self.pairs[self.red_seg]
            seg_bytes = acc.nbytes
            end = min(self.received, self.red_seg_start + seg_bytes)
            if own is None:  # a plain segment: landed is ready
                self.reduced = end
            else:
                if end < self.red_seg_start + seg_bytes and end - self.reduced < REDUCE_CHUNK:
                    return  # wait for a chunk worth a ufunc call
                a = (self.reduced - self.red_seg_start) // self.itemsize
                b = (end - self.red_seg_start) // self.itemsize
                if b > a:
                    if self.own_first:
                        self.ufunc(own[a:b], acc[a:b], out=acc[a:b])
                    else:
                        self.ufunc(acc[a:b], own[a:b], out=acc[a:b])
                    self.reduced = self.red_seg_start + b * self.itemsize
                elif end < self.red_seg_start + seg_bytes:
                    return  # a partial element: wait for the rest
            if self.reduced == self.red_seg_start + seg_bytes:
                self.red_seg += 1
                self.red_seg_start = self.reduced
            elif own is None:
                return


def _call(fields: dict[str, Any]) -> dict[str, Any]:
    """A header's fields that come from the call's arguments (not from settings or roles)."""
    return {k: v for k, v in fields.items() if k not in wire.INTERNAL_FIELDS}


def _paths(mine: dict[str, Any], theirs: dict[str, Any]) -> tuple[str, str]:
    if mine.get("path") == theirs.get("path"):  # the same path: only the ring directions differ
        return _ways(mine), _ways(theirs)
    return mine.get("path", "ring"), theirs.get("path", "ring")


def _ways(fields: dict[str, Any]) -> str:
    return ("one way" if fields.get("ways") == 1 else "both ways") + " round the ring"


def check_same(mine: dict[str, Any], theirs: dict[str, Any], ch: Channel) -> None:
    """The default header check: both sides called the same op with the same arguments."""
    if mine != theirs:
        if _call(mine) == _call(theirs):
            here, there = _paths(mine, theirs)
            raise MismatchError(
                f"rank {ch.me} and rank {ch.peer} chose different paths for {wire.describe_header(mine)}: "
                f"{here} here, {there} there; set RINGDIST_DIRECT_MAX and RINGDIST_DIRECTIONS "
                f"the same on every rank (group {ch.group!r})")
        raise MismatchError(
            f"rank {ch.me} called {wire.describe_header(mine)} but rank {ch.peer} called "
            f"{wire.describe_header(theirs)} (group {ch.group!r})")


class Outflow:
    """HEADER then bytes of `segments` to `ch`; with a `source`, only what the source has ready.

    `head` bytes at the front of the stream are available from the start (this rank's
    own block); byte `head + k` becomes available when `source.ready > k`. With
    `header=None` the stream continues an earlier one: no header frame.
    """

    def __init__(self, ch: Channel, segments: Segments, op: str, header: wire.Header | None = None,
                 source: Inflow | None = None, head: int | None = None):
        self.ch = ch
        self.op = op
        self.seg = segments
        self.total = segments.total
        self.source = source
        self.head = self.total if head is None else head
        self.framed = 0  # payload bytes already cut into frames
        self.prefix = bytearray(wire.PREFIX_SIZE)
        self.pending: list[Any] = [] if header is None else [header.frame]
        self.data_pending = False  # a DATA frame (using self.prefix) is in pending
        self.blocked = False
        self.done = not self.pending and self.total == 0

    def skip(self, sent: int) -> None:
        """Continue a stream whose first `sent` bytes were sent elsewhere, framed as the
        header frame then the whole payload in one DATA frame (of any size)."""
        if self.total:
            wire.pack_prefix_into(self.prefix, wire.DATA, self.total)
            self.pending += [memoryview(self.prefix), self.seg.current(self.total)]
            self.seg.advance(self.total)
            self.framed = self.total
            self.data_pending = True
        self._consume(sent)
        self.done = not self.pending and self.framed == self.total

    def _available(self) -> int:
        if self.source is None:
            return self.total
        return min(self.total, self.head + self.source.ready)

    def _next_frame(self) -> None:
        avail = self._available() - self.framed
        if avail <= 0:
            return
        n = min(avail, self.seg.left_in_segment(), MAX_FRAME)
        if n < MIN_FRAME and n < self.seg.left_in_segment():
            return  # wait for a worthwhile chunk
        wire.pack_prefix_into(self.prefix, wire.DATA, n)
        self.pending.append(memoryview(self.prefix))
        self.pending.append(self.seg.current(n))
        self.seg.advance(n)
        self.framed += n
        self.data_pending = True

    def _consume(self, sent: int) -> None:
        pending = self.pending
        while sent:
            first = pending[0]
            if sent >= len(first):
                sent -= len(first)
                pending.pop(0)
            else:
                pending[0] = first[sent:]
                sent = 0
        if not pending:
            self.data_pending = False

    def pump(self) -> int:
        """Send as much as the socket takes without blocking; return bytes sent."""
        moved = 0
        while True:
            if not self.data_pending and self.framed < self.total:
                self._next_frame()  # a pending header rides along with the first chunk
            if not self.pending:
                self.done = self.framed == self.total
                return moved
            try:
                sent = self.ch.sock.sendmsg(self.pending)
            except BlockingIOError:
                self.blocked = True
                return moved
            except OSError as exc:
                raise self.ch.lost(socket_error(exc), self.op) from None
            moved += sent
            self._consume(sent)
            if self.pending:
                self.blocked = True
                return moved

    def finish_frame(self, timeout: float) -> None:
        """Complete a partly sent frame (so an ABORT can follow at a frame boundary)."""
        deadline = deadlines.after(timeout)
        poller = select.poll()
        poller.register(self.ch.fd, POLLOUT)
        while self.pending:
            try:
                self._consume(self.ch.sock.sendmsg(self.pending))
            except BlockingIOError:
                pass
            left = deadlines.left(deadline)
            if self.pending and (left <= 0 or (not poller.poll(deadlines.poll_ms(left))
                                               and deadlines.passed(deadline))):
                raise RingTimeoutError("could not finish frame")


class Watch:
    """Watches a channel that has no inflow in this collective, for an ABORT or a closed peer,
    and for a HEADER of this very call (`header`'s call number) that describes another call.

    The second is how ranks that chose different algorithms find out: each sends its header
    on connections the other does not read in this call, and would otherwise wait for bytes
    that never come. It only peeks: bytes it reads stay staged for the channel's next reader.
    """

    def __init__(self, ch: Channel, op: str, seq: int | None, header: wire.Header | None = None):
        self.ch = ch
        self.op = op
        self.seq = seq  # ABORTs of later collectives (a peer ahead of us) are not ours
        self.header = header
        self.done = False  # nothing more to learn: stop polling this channel

    def on_readable(self) -> int:
        ch = self.ch
        try:
            k = ch.fill_stage()
        except PeerLostError:
            # The peer closed: not an error by itself (it may have finished this collective);
            # a flow that still needs it fails on its own.
            self.done = True
            return 0
        if k == 0 and not ch.stage_room():
            self.done = True
            return 0
        self.scan()
        return 0  # bytes of a later collective are not progress of this one

    def scan(self) -> None:
        """Check the whole frames staged on the channel."""
        ch = self.ch
        stage, pos, end = ch.stage_view, ch.stage_start, ch.stage_end
        while end - pos >= wire.PREFIX_SIZE:
            kind, length = wire.decode_prefix(stage[pos:pos + wire.PREFIX_SIZE])
            if end - pos - wire.PREFIX_SIZE < length:
                break
            body = stage[pos + wire.PREFIX_SIZE:pos + wire.PREFIX_SIZE + length]
            if kind == wire.ABORT:
                fields = wire.decode_map(body)
                theirs = fields.get("seq")
                if self.seq is None or not isinstance(theirs, int) or theirs <= self.seq:
                    raise_remote(fields, ch, self.op)
            elif kind == wire.HEADER and self.header is not None and body != self.header.body:
                fields = wire.check_header(wire.decode_map(body))
                if fields["seq"] == self.seq:
                    check_same(_role_free(self.header.fields), _role_free(fields), ch)
            pos += wire.PREFIX_SIZE + length


def _role_free(fields: dict[str, Any]) -> dict[str, Any]:
    """A header's fields without `step` (a frame's part in the call, which differs by rank)."""
    return {k: v for k, v in fields.items() if k != "step"}


def run(inflows: list[Inflow], outflows: list[Outflow], watched: list[Channel], *,
        timeout: float, op: str, me: int, seq: int | None = None, spin: float = 0.0,
        yield_core: bool = False, idle: Callable[[], bool] | None = None,
        header: wire.Header | None = None) -> None:
    """Drive every flow to completion, or raise (RingTimeoutError after `timeout` s without progress).

    Channels in `watched` without a pending inflow are watched for an ABORT, and for a
    HEADER of call `seq` other than `header` (MismatchError). Waits block
    in poll; with `spin` > 0 each wait first polls without blocking for up to `spin`
    seconds (tens of microseconds), which small messages finish within. With `yield_core`
    the spin gives the core away between polls (sched_yield): on a host with more ranks
    than cores, the peer being waited for may need this very core. `idle` is work to do
    instead of waiting, a piece per call; it returns False once there is none left.
    """
    # fd -> [inflow or None, outflow or None, Watch or None]
    slots: dict[int, list[Any]] = {ch.fd: [None, None, Watch(ch, op, seq, header)] for ch in watched}
    for flow in inflows:
        slots.setdefault(flow.ch.fd, [None, None, None])[0] = flow
        flow.consume_staged()
    for reader, _, watch in slots.values():
        if watch is not None and reader is None and watch.ch.stage_end > watch.ch.stage_start:
            watch.scan()  # frames read ahead earlier wake no poll
    for flow in outflows:
        slots.setdefault(flow.ch.fd, [None, None, None])[1] = flow
    poller = select.poll()
    masks: dict[int, int] = {}
    last_progress = time.monotonic()
    while True:
        for flow in outflows:
            if not flow.done and not flow.blocked and flow.pump():
                last_progress = time.monotonic()
        busy = False
        for fd, (reader, writer, watch) in slots.items():
            mask = 0
            if reader is not None and not reader.done:
                mask = POLLIN
                busy = True
            elif watch is not None and not watch.done:
                mask = POLLIN  # the inflow is done (or there is none): listen for an ABORT
            if writer is not None and not writer.done:
                busy = True
                if writer.blocked:
                    mask |= POLLOUT
            if masks.get(fd, 0) != mask:
                if mask:
                    poller.register(fd, mask)
                else:
                    poller.unregister(fd)
                masks[fd] = mask
        if not busy:
            return
        events = poller.poll(0) if spin else None
        if not events and spin:  # never spinning past the timeout
            spin_until = time.perf_counter() + min(spin, max(0.0, last_progress + timeout - time.monotonic()))
            while not events and time.perf_counter() < spin_until:
                if yield_core:
                    os.sched_yield()
                events = poller.poll(0)  # a short spin beats the kernel's wake-up latency
        while idle is not None and not events:
            if not idle():
                idle = None
            events = poller.poll(0)
        if not events:
            wait = last_progress + timeout - time.monotonic()
            events = poller.poll(deadlines.poll_ms(wait)) if wait > 0 else []
            if not events:
                if time.monotonic() - last_progress < timeout:
                    continue  # one slice of a long wait ended
                raise RingTimeoutError(_stall_message(inflows, outflows, op, me, timeout))
        moved = 0
        for fd, ev in events:
            reader, writer, watch = slots[fd]
            if ev & (POLLIN | POLLERR):
                if reader is not None and not reader.done:
                    moved += reader.on_readable()
                elif watch is not None and not watch.done:
                    try:
                        watch.on_readable()
                    except RingError:
                        for flow in inflows:  # what this rank can see for itself wins over a relayed ABORT
                            if not flow.done:
                                flow.on_readable()
                        raise
            if ev & (POLLOUT | POLLERR) and writer is not None:
                writer.blocked = False
        if moved:
            last_progress = time.monotonic()


def _stall_message(inflows: list[Inflow], outflows: list[Outflow], op: str, me: int, timeout: float) -> str:
    waits = [f"receiving from {f.ch.describe()} ({f.received} of {f.total} bytes"
             f"{', header not yet received' if f.need_header else ''})" for f in inflows if not f.done]
    waits += [f"sending to {f.ch.describe()} ({f.framed} of {f.total} bytes framed)"
              for f in outflows if not f.done and f.blocked]
    detail = "; ".join(waits) or "waiting"
    return f"rank {me}: {op} made no progress for {timeout:g} s: {detail}"


def abort(outflows: list[Outflow], channels: list[Channel], exc: BaseException, me: int, seq: int | None,
          timeout: float = 1.0) -> None:
    """Tell every peer on `channels` that collective `seq` failed (best effort, bounded)."""
    frame = wire.encode_map(wire.ABORT, abort_fields(exc, me, seq))
    deadline = time.monotonic() + timeout  # one budget for the whole abort, not one per peer
    finished = set()
    for flow in outflows:
        try:
            flow.finish_frame(max(0.0, deadline - time.monotonic()))
            finished.add(flow.ch.fd)
        except (OSError, RingError):
            continue
    for ch in channels:
        if ch.closed:
            continue
        owned = any(flow.ch is ch for flow in outflows)
        if owned and ch.fd not in finished:
            continue  # mid-frame: an ABORT now would corrupt the stream
        try:
            ch.send_control_blocking(frame, max(0.05, deadline - time.monotonic()))
        except (OSError, RingError):
            pass
