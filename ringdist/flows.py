"""The flows of a collective: the bytes it expects from each peer and sends to each.

A collective is a set of `Inflow`s (bytes expected from a peer, received with
`recv_into` straight into their destination) and `Outflow`s (bytes to a peer, sent
with `sendmsg` from memoryviews of the source). An outflow may relay an inflow: it
sends a byte as soon as its `source` has it, which is how a ring forwards a chunk
before its whole block has arrived. Every stream starts with the collective's
HEADER frame, checked by the receiver. A `Watch` looks at a connection with no inflow
in the call, for an ABORT or a header of another call. Inflows and watches read frames
with their channel's `wire.FrameReader`; `engine` drives them all.

Small streams can finish at once: the engine sends the header and the whole payload in
one `sendmsg` (`Outflow.rest_of` is what a partial send leaves), and `Inflow.take`
compares the header and DATA prefix with the expected bytes in one comparison and lands
the payload; what they cannot finish stays in the same flows, for the engine's poll loop.
"""

from __future__ import annotations

import select
from typing import Any, Callable

import numpy as np

from . import deadlines, wire
from .aborts import concerns, raise_remote
from .arrays import combine
from .channel import STAGE_SIZE, Channel, about, peer_name
from .errors import MismatchError, PeerLostError, ProtocolError, RingTimeoutError

MIN_FRAME = 64 * 1024  # do not cut frames smaller than this unless a segment ends
# Largest DATA frame a sender makes. Frames end where a segment ends anyway; measured with
# both alternating call by call, 64 MiB frames made 16-64 MiB collectives 2-7% faster than
# 4 MiB ones on 2 and 4 ranks. An ABORT waits for the frame in flight (within its 1 s budget).
MAX_FRAME = 64 * 1024 * 1024
DIRECT_MIN = 64 * 1024  # below this many bytes left, payload goes through the staging buffer
SMALL_REST = 64 * 1024  # with this little left to receive, read ahead freely into the stage
REDUCE_CHUNK = 64 * 1024  # a reducing inflow folds what has landed once this much is there
# ...in calls that end on a multiple of this many bytes from the segment's start (but its last,
# which folds the segment's last whole block and the rest): numpy's vector loops and their
# scalar tail may differ in a NaN's sign (float32 add of +NaN and -NaN), so folds cut where TCP
# happened to deliver varied run to run; cut on whole blocks they give a whole-array call's
# bits (a scan's promise: numpy's sequential fold, bit for bit).
REDUCE_BLOCK = 4096
POLLOUT = select.POLLOUT
STAGED_PAYLOAD_MAX = 16 * 1024  # `take` reads a payload up to this with its header, into the stage
NO_BYTES = memoryview(bytearray())  # an empty payload: a header-only message, sent or received
READ_MORE = 4096  # `take` reads up to this much past the stream it wants (an ABORT behind it, say)


def intro(header: wire.Header, length: int) -> bytes:
    """What a stream of one DATA frame of `length` bytes starts with: the header frame, then
    the DATA prefix (none for an empty stream)."""
    return header.frame + wire.encode_prefix(wire.DATA, length) if length else header.frame


class Segments:
    """A stream's byte layout: a list of byte memoryviews, walked in order."""

    __slots__ = ("views", "total", "index", "pos")

    def __init__(self, views: list[memoryview]):
        if len(views) == 1:  # the common case, without a comprehension (small collectives count µs)
            total = len(views[0])
            self.views = views if total else []
        else:
            self.views = views = [v for v in views if len(v)]
            total = sum(map(len, views))
        self.total = total
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

    __slots__ = ("ch", "reader", "seg", "total", "op", "expect", "check", "need_header", "received", "done")

    def __init__(self, ch: Channel, segments: Segments, op: str, expect: wire.Header | None = None,
                 check: Callable[[dict[str, Any], dict[str, Any], Channel], None] | None = None):
        self.ch = ch
        self.reader = ch.reader
        self.seg = segments
        self.total = segments.total
        self.op = op
        self.expect = expect
        self.check = check
        self.need_header = expect is not None
        self.received = 0
        self.done = self.total == 0 and not self.need_header

    @property
    def ready(self) -> int:
        """Bytes of the stream that are in place (what a relaying outflow may forward)."""
        return self.received

    def take(self, intro: bytes) -> bool | None:
        """Finish now if possible: take a stream that begins with `intro` (see `intro()`) and
        carries its payload in that one DATA frame, from what has arrived. True: done;
        False: more to come; None: the bytes are not those (nothing of them is taken).
        For a plain inflow (no `on_data`) of one segment; `on_readable` goes on from where it stops."""
        ch = self.ch
        reader = self.reader
        total = self.total
        got = self.received
        if self.need_header:
            have = reader.end - reader.start
            want = len(intro) + (total if total <= STAGED_PAYLOAD_MAX else 0)
            if have < want:
                try:  # room for a frame more: a short read says the socket is drained (see Comm.finish)
                    ch.fill_stage(want - have + READ_MORE)
                except PeerLostError:
                    return None  # the engine reports it, after any ABORT the peer sent first
            got = reader.take_stream(intro, self.seg.views[0] if total else NO_BYTES)
            if got is None:
                return None
            if got < 0:
                return False
            self.need_header = False
        if got < total:
            dest = self.seg.views[0]
            staged = got
            while got < total:
                k = ch.recv_into(dest[got:], self.op)
                if not k:
                    break
                got += k
            if got > staged:
                reader.payload_landed(got - staged)
            if got < total:
                if got > self.received:
                    self._advance(got - self.received)
                return False
        self.received = total  # a plain inflow has nothing to do as bytes land (see on_data)
        self.done = True
        return True

    def on_readable(self) -> int:
        """Receive what the socket has; return bytes read (progress): none while the header is
        not yet whole, for a header comes at once (a peer trickling one is stalled)."""
        ch = self.ch
        reader = self.reader
        left = reader.payload_left
        staged = reader.end - reader.start
        if left >= DIRECT_MIN and not staged:
            return self._direct()
        if self.need_header or self.total - self.received <= SMALL_REST:
            limit = STAGE_SIZE  # small: one recv takes header and payload
        elif left:
            limit = left + wire.PREFIX_SIZE  # the end of this frame and the next prefix
        elif staged < wire.PREFIX_SIZE:
            limit = wire.PREFIX_SIZE - staged  # the prefix alone: the payload goes direct
        else:
            limit = STAGE_SIZE  # a control frame (an ABORT) is arriving: take its body
        k = ch.fill_stage(limit, self.op)
        self._consume_stage()
        return 0 if self.need_header else k

    def consume_staged(self) -> None:
        """Take bytes read ahead (during the previous collective) before polling the socket."""
        if self.reader.end != self.reader.start:
            self._consume_stage()

    def _direct(self) -> int:
        k = self.ch.recv_into(self.seg.current(self.reader.payload_left), self.op)
        if k:
            self.reader.payload_landed(k)
            self._advance(k)
        return k

    def _advance(self, n: int) -> None:
        self.seg.advance(n)
        self.received += n
        self.on_data()
        if self.received == self.total and not self.need_header:
            self.done = True

    def on_data(self) -> None:
        """Hook: bytes up to `self.received` have landed (subclasses reduce them)."""

    def _consume_stage(self) -> None:
        ch = self.ch
        reader = self.reader
        while not self.done:
            event = reader.next_event()
            if event is wire.PAYLOAD:
                n = reader.take_payload(self.seg.current(reader.payload_left))
                if not n:
                    return
                self._advance(n)
            elif event is wire.NEED_DATA:
                return
            elif isinstance(event, wire.DataFrame):
                if self.need_header:
                    raise about(ch, ProtocolError(f"rank {ch.me}: DATA before HEADER from {ch.describe()}"))
                rest = self.total - self.received
                if event.length == 0 or event.length > rest:
                    raise about(ch, ProtocolError(
                        f"rank {ch.me}: {ch.describe()} sent a DATA frame of {event.length} bytes "
                        f"where {rest} remain in {self.op}"))
            else:
                self._control(event)

    def _control(self, event: wire.ControlFrame) -> None:
        ch = self.ch
        kind = event.kind
        if kind == wire.HEADER and self.need_header and event.body == self.expect.body:
            self.need_header = False  # byte-identical to ours: the common case, nothing to decode
        else:
            fields = decoded(event, ch)
            if kind == wire.ABORT:
                raise_remote(fields, ch, self.op)
            if kind != wire.HEADER or not self.need_header:
                raise about(ch, ProtocolError(
                    f"rank {ch.me}: unexpected {wire.KIND_NAMES[kind]} frame from {ch.describe()}"))
            (self.check or check_same)(self.expect.fields, decoded(event, ch, fields), ch)
            self.need_header = False
        if self.received == self.total:
            self.done = True


def decoded(event: wire.ControlFrame, ch: Channel, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """A control frame's fields (given `fields`, a header's, checked): a ProtocolError naming
    this rank and the peer where they are not ringdist's."""
    try:
        return event.fields() if fields is None else wire.check_header(fields)
    except ProtocolError as exc:
        raise about(ch, ProtocolError(f"rank {ch.me}: {ch.describe()} sent a {wire.KIND_NAMES[event.kind]} frame "
                                      f"that is not ringdist's: {exc}")) from None


class ReducingInflow(Inflow):
    """An inflow that folds each landed chunk into an accumulator: `acc = op(acc, own)`.

    `pairs[j]` is (acc, own) for the j-th non-empty segment: typed views where acc is the
    segment's destination; `own=None` makes a plain segment (bytes land, nothing to fold).
    A third item, `dest`, takes the fold instead (dest = acc, then dest = op(dest, own) in
    place), leaving what landed in acc as it came (an exclusive scan keeps it, and passes on
    the fold).
    With `own_first` the fold is `acc = op(own, acc)`: two ranks folding each other's
    operands in the same order get the same bits. `ready` counts reduced (or landed plain)
    bytes, so a relaying outflow only forwards partial results that are complete.
    """

    def __init__(self, ch: Channel, pairs: list[tuple[Any, ...]], ufunc: Any, op: str,
                 expect: wire.Header | None = None, own_first: bool = False):
        pairs = [(pair[0], pair[1], pair[2] if len(pair) > 2 else pair[0]) for pair in pairs if pair[0].size]
        super().__init__(ch, Segments([memoryview(acc.reshape(-1).view("u1")) for acc, _, _ in pairs]), op, expect)
        self.pairs = pairs
        self.ufunc = ufunc
        self.itemsize = pairs[0][0].itemsize if pairs else 1
        self.block = max(1, REDUCE_BLOCK // self.itemsize)  # elements
        self.own_first = own_first
        self.reduced = 0  # stream bytes reduced
        self.red_seg = 0  # segment being reduced
        self.red_seg_start = 0  # its first stream byte

    @property
    def ready(self) -> int:
        return self.reduced

    def _fold(self, acc: np.ndarray, own: np.ndarray, dest: np.ndarray, a: int, b: int) -> None:
        if dest is not acc:  # what landed stays; the fold goes on in place in dest, as `fold_in_place`
            np.copyto(dest[a:b], acc[a:b])
            self.ufunc(dest[a:b], own[a:b], out=dest[a:b])
        elif self.own_first:  # `combine`: the bits of the peer's fold of the same pair
            combine(self.ufunc, own[a:b], acc[a:b], acc[a:b])
        else:
            combine(self.ufunc, acc[a:b], own[a:b], acc[a:b])

    def on_data(self) -> None:
        while self.reduced < self.received:
            acc, own, dest = self.pairs[self.red_seg]
            seg_bytes = acc.nbytes
            end = min(self.received, self.red_seg_start + seg_bytes)
            if own is None:  # a plain segment: landed is ready
                self.reduced = end
            else:
                if end < self.red_seg_start + seg_bytes and end - self.reduced < REDUCE_CHUNK:
                    return  # wait for a chunk worth a ufunc call
                a = (self.reduced - self.red_seg_start) // self.itemsize
                b = (end - self.red_seg_start) // self.itemsize
                if end < self.red_seg_start + seg_bytes:
                    # Whole blocks, short of the segment's last whole one: the last call folds
                    # that block and the rest, however the bytes came (a rest alone, under 8
                    # elements, is numpy's scalar loop, which keeps another NaN than a longer
                    # call's last elements: one rank's fold would differ from its peer's).
                    elements = seg_bytes // self.itemsize
                    b = min(b - b % self.block, max(0, elements - elements % self.block - self.block))
                if b > a:
                    self._fold(acc, own, dest, a, b)
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
            if mine.get("path") == theirs.get("path") and mine.get("ways") == theirs.get("ways"):
                differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise about(ch, ProtocolError(
                    f"rank {ch.me}: {peer_name(ch)} sent a header for {wire.describe_header(mine)} whose "
                    f"{', '.join(differ)} differ from this rank's ({', '.join(repr(mine.get(k)) for k in differ)} "
                    f"here, {', '.join(repr(theirs.get(k))[:100] for k in differ)} there; ranks with different "
                    f"versions of ringdist?) (group {ch.group!r})"))
            here, there = _paths(mine, theirs)
            settings = ("RINGDIST_DIRECTIONS" if mine.get("path") == theirs.get("path")  # what chooses them
                        else "RINGDIST_ALGO, RINGDIST_DIRECT_MAX and RINGDIST_DIRECTIONS")
            raise about(ch, MismatchError(
                f"{peer_name(ch, ch.me)} and {peer_name(ch)} chose different paths for {wire.describe_header(mine)}: "
                f"{here} here, {there} there; set {settings} the same on every rank (group {ch.group!r})"))
        raise about(ch, MismatchError(
            f"{peer_name(ch, ch.me)} called {wire.describe_header(mine)} but {peer_name(ch)} called "
            f"{wire.describe_header(theirs)} (group {ch.group!r})"))




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

    @classmethod
    def rest_of(cls, ch: Channel, payload: memoryview, op: str, intro: bytes, sent: int) -> "Outflow":
        """The outflow of what is left once `sent` bytes of `intro` (see `intro()`) and
        `payload` after it, the whole payload in that one DATA frame, went in one sendmsg."""
        flow = cls(ch, Segments([payload]), op)
        flow.pending = [intro, payload] if len(payload) else [intro]
        flow.framed = flow.total
        flow.data_pending = True
        flow._consume(sent)
        flow.done = False
        return flow

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
                pending[0] = memoryview(first)[sent:]
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
            sent = self.ch.sendmsg(self.pending, self.op)
            if not sent:
                self.blocked = True
                return moved
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
            self._consume(self.ch.sendmsg(self.pending, self.op))
            left = deadlines.left(deadline)
            if self.pending and (left <= 0 or (not poller.poll(deadlines.poll_ms(left))
                                               and deadlines.passed(deadline))):
                raise about(self.ch, RingTimeoutError(
                    f"{peer_name(self.ch, self.ch.me)}: could not finish a frame to {self.ch.describe()}"))


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
        if k == 0 and not ch.reader.room():  # what is staged waits for the channel's next reader
            self.done = True
            return 0
        self.scan()
        return 0  # bytes of a later collective are not progress of this one

    def scan(self) -> None:
        """Check the whole frames staged on the channel."""
        ch = self.ch
        for frame in ch.reader.staged_control_frames():
            if frame.kind == wire.ABORT:
                fields = decoded(frame, ch)
                if concerns(fields, self.seq):
                    raise_remote(fields, ch, self.op)
            elif frame.kind == wire.HEADER and self.header is not None and frame.body != self.header.body:
                fields = decoded(frame, ch, decoded(frame, ch))
                if fields["seq"] == self.seq:
                    check_same(_role_free(self.header.fields), _role_free(fields), ch)


def _role_free(fields: dict[str, Any]) -> dict[str, Any]:
    """A header's fields without `step` (a frame's part in the call, which differs by rank),
    those that differ by sender or relay (`wire.PER_SENDER_FIELDS`: a neighbour ahead by a hop
    of the ring's relay sends the next hop's header, the same call), and those that differ by
    role (`wire.ROLE_FIELDS`: a scatter's root sends its array's dtype and shape, the others an
    empty one's). The receiver of each header checks those fields itself."""
    drop = wire.ROLE_FIELDS.get(fields.get("op"), ())
    return {k: v for k, v in fields.items() if k != "step" and k not in wire.PER_SENDER_FIELDS and k not in drop}


class SizedInflow(Inflow):
    """An inflow whose size the peer's header declares: `accept(fields, ch)` checks the peer's
    header (raising MismatchError or ProtocolError) and returns where its payload lands (a
    buffer, or a list of them filled in turn). Given `expect` and `into`, a header equal to
    `expect` lands its payload in `into` without `accept` (`fields` stays None).

    For collectives whose receivers cannot know what comes (uneven blocks, objects, a
    scatter's shape): the bytes are bounded by what `accept` allows, and no extra round
    trip is needed to learn them. `fields` is the peer's header once it has arrived.
    """

    def __init__(self, ch: Channel, op: str,
                 accept: Callable[[dict[str, Any], Channel], "memoryview | list[memoryview]"], hint: int = 0,
                 expect: wire.Header | None = None, into: memoryview | None = None):
        # (Inflow's fields, set here: a message's receive makes one per message.)
        self.ch, self.reader, self.op, self.expect, self.check = ch, ch.reader, op, expect, None
        self.seg = seg = Segments([] if into is None else [into])
        # Until the header comes: about what is expected (whether a wait may spin).
        self.total = hint if into is None else seg.total
        self.need_header, self.received, self.done = True, 0, False
        self.accept = accept
        self.fields: dict[str, Any] | None = None
        self.dest: "memoryview | list[memoryview] | None" = into

    def _control(self, event: wire.ControlFrame) -> None:
        if event.kind != wire.HEADER or not self.need_header:
            super()._control(event)  # an ABORT, or a frame out of place
            return
        expect = self.expect
        if expect is not None and event.body == expect.body:  # the common case: nothing to decode or accept
            self.need_header = False
            if self.received == self.total:
                self.done = True
            return
        ch = self.ch
        fields = decoded(event, ch, decoded(event, ch))
        try:
            dest = self.accept(fields, ch)  # one buffer, or a list the payload fills in turn
        except MemoryError as exc:  # the memory the peer's header declares
            if getattr(exc, "ringdist_named", False):
                raise
            raise MemoryError(f"rank {ch.me}: {self.op}: no memory for what {ch.describe()} declares: {exc}") from None
        except (ValueError, OverflowError) as exc:  # numpy's own limits: no array can be so large
            raise about(ch, ProtocolError(f"rank {ch.me}: {self.op}: {ch.describe()} declares what no array can hold: "
                                          f"{exc}")) from None
        self.fields, self.dest = fields, dest
        self.seg = Segments(dest if isinstance(dest, list) else [dest])
        self.total = self.seg.total
        self.need_header = False
        if self.received == self.total:
            self.done = True
