"""ABORT frames: a failed collective told to every peer, and found again on the receiving side.

A rank whose collective fails sends an ABORT (the error's class, message and origin rank,
and the call number) on each of its connections, at a frame boundary. Receivers raise it
as the same error class, naming the rank where it started: from an inflow or watch that
meets it (`flows`), from what a peer sent before it went away (`pending_abort`), or once
a call has gone well here (`abort_waiting`). Staged bytes are read with a lookahead of the
channel's `wire.FrameReader`, so they stay where they are for the channel's next reader.
"""

from __future__ import annotations

import select
import threading
import time
from types import SimpleNamespace
from typing import Any, Protocol

from . import errors, wire
from .channel import Channel, peer_name, world_rank
from .errors import PeerLostError, ProtocolError, RingError


class Finishing(Protocol):
    """An outflow that can complete a partly sent frame (see `flows.Outflow`)."""

    ch: Channel

    def finish_frame(self, timeout: float) -> None: ...


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
    ranks = getattr(ch, "world_ranks", None)
    if not isinstance(origin, int) or isinstance(origin, bool) or origin < 0 or (ranks and origin >= len(ranks)):
        origin = ch.peer  # (no rank of the group: the one that sent it)
    world = world_rank(ch, origin)
    exc = cls(f"{peer_name(ch, ch.me)}: {wire.called_as(op)} aborted by rank {origin}{f' ({world})' if world else ''}: {message}")
    exc.ringdist_origin = (origin, message)  # what an ABORT passed on carries, unchanged
    peer, address = fields.get("peer"), fields.get("address")
    if not isinstance(peer, int) or isinstance(peer, bool) or peer < 0 or (ranks and peer >= len(ranks)):
        peer = None
    errors.known(exc, rank=ch.me, group=getattr(ch, "group", None), op=op or None, origin=origin, peer=peer,
                 address=address[:300] if isinstance(address, str) else None)
    raise exc


def as_call(exc: BaseException, me: int, op: str, world_ranks: list[int] | None = None) -> BaseException:
    """A peer's failure relayed to this rank (`exc`, carrying `ringdist_origin`), as call `op`
    raises it: of its type, aborted by the rank it started on, the cause unchanged (both ranks
    named by their world ranks too, where `world_ranks` says they differ)."""
    origin, message = exc.ringdist_origin  # type: ignore[attr-defined]
    cls = type(exc) if isinstance(exc, RingError) else RingError
    ranks = SimpleNamespace(world_ranks=world_ranks)
    relayed = cls(f"{peer_name(ranks, me)}: {wire.called_as(op)} aborted by {peer_name(ranks, origin)}: {message}")
    relayed.ringdist_origin = (origin, message)  # type: ignore[attr-defined]
    return errors.known(relayed, rank=me, group=getattr(exc, "group", None), op=op, origin=origin,
                        peer=getattr(exc, "peer", None), address=getattr(exc, "address", None))


def concerns(fields: dict[str, Any], seq: int | None) -> bool:
    """Whether an ABORT ends collective `seq` (None: whatever runs): one for it or an earlier
    call does; a message's failure (no call number) breaks every collective of the group, but
    not the group's setup (call number -1), which that peer had finished."""
    theirs = fields.get("seq")
    if isinstance(theirs, int):
        return seq is None or theirs <= seq
    return seq is None or seq >= 0


def abort_fields(exc: BaseException, me: int, seq: int | None) -> dict[str, Any]:
    """The body of the ABORT this rank sends for `exc`: the original cause, not a chain of hops."""
    default = str(exc) if isinstance(exc, RingError) else f"{type(exc).__name__}: {exc}".removesuffix(": ")
    origin, message = getattr(exc, "ringdist_origin", (me, default or type(exc).__name__))
    # A lone surrogate (an undecodable file name in the error) cannot go as UTF-8: escaped, not lost.
    message = message[:4000].encode("utf-8", "backslashreplace").decode("utf-8")
    fields = {"error": type(exc).__name__, "message": message, "origin": origin, "seq": seq}
    peer, address = getattr(exc, "peer", None), getattr(exc, "address", None)
    if peer is not None:  # the rank it concerns, and its address: every rank's error names the same
        fields["peer"] = peer
    if address is not None:
        fields["address"] = address
    return fields


def summary(exc: BaseException, me: int) -> str:
    """'MismatchError: rank 3: ...': the error an ABORT for `exc` carries, in a line."""
    fields = abort_fields(exc, me, None)
    error, message = fields["error"], fields["message"]
    return message if message.startswith(f"{error}: ") else f"{error}: {message}"  # 'TypeError: ...' once


def pending_abort(channels: list[Channel], op: str) -> None:
    """Raise the ABORT a peer sent before it went away, if one already arrived on `channels`.

    A peer that aborts and exits makes our next send fail with a broken pipe; the reason
    it left is usually waiting, unread, in our receive buffer.
    """
    for ch in channels:
        try:
            while ch.fill_stage():
                pass
        except PeerLostError:
            pass
        try:
            for frame in ch.reader.staged_control_frames():
                if frame.kind == wire.ABORT:
                    raise_remote(frame.fields(), ch, op)
        except ProtocolError:
            continue


def abort_waiting(channels: list[Channel], ready: list[tuple[int, int]], seq: int, op: str) -> None:
    """Raise the ABORT a peer sent for collective `seq` (or an earlier one) if it has arrived.

    Called once a collective has gone well here: a peer that gave up on it (a timeout while
    this rank was late, a failure further round the ring) sent an ABORT after its last
    frame of the call, so it is the next frame on that peer's channel. `ready` is a poll's
    answer for `channels` (fds with bytes to read).
    """
    readable = {fd for fd, _ in ready}
    for ch in channels:
        if ch.fd in readable or ch.staged():
            _raise_next_abort(ch, seq, op)


def _raise_next_abort(ch: Channel, seq: int, op: str) -> None:
    """Raise the channel's next frame if it is an ABORT for collective `seq` or earlier.

    Anything else (the next collective's header from a peer ahead) is left staged for its
    reader, as is a closed connection: a peer may leave once a call has gone well.
    """
    reader = ch.reader
    try:
        staged = reader.end - reader.start
        if staged < wire.PREFIX_SIZE:
            ch.fill_stage(wire.PREFIX_SIZE - staged)
        if reader.next_kind() != wire.ABORT:
            return  # the common case: the next call's header, from a peer ahead
        prefix = reader.next_prefix()
        if prefix is None or prefix[0] != wire.ABORT:
            return
        end = wire.PREFIX_SIZE + prefix[1]
        waiter = None
        deadline = time.monotonic() + 1.0  # an ABORT is sent whole: the rest is on its way
        while reader.staged() < end:
            if ch.fill_stage(end - reader.staged()):
                continue
            if waiter is None:
                waiter = select.poll()
                waiter.register(ch.fd, select.POLLIN)
            left = deadline - time.monotonic()
            if left <= 0 or not waiter.poll(left * 1000):
                return
        event = reader.lookahead().next_event()
        assert isinstance(event, wire.ControlFrame)
        fields = event.fields()
    except (PeerLostError, ProtocolError):
        return  # the next operation on this channel reports it
    theirs = fields.get("seq")
    if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs > seq:
        return
    raise_remote(fields, ch, op)


ABORT_BUDGET = 1.0  # seconds an ABORT may take to go out on all of a failure's connections


def abort(outflows: list[Finishing], channels: list[Channel], exc: BaseException, me: int, seq: int | None,
          timeout: float = ABORT_BUDGET) -> bytes:
    """Tell every peer on `channels` that collective `seq` failed (best effort, bounded); returns
    the ABORT frame, for peers that connect later (`Endpoint.note_aborted`)."""
    frame = wire.encode_map(wire.ABORT, abort_fields(exc, me, seq))
    deadline = time.monotonic() + timeout  # one budget for the whole abort, not one per peer
    owned = {id(flow.ch) for flow in outflows}
    for ch in channels:  # first those with no frame to finish: a peer that stopped reading a
        if id(ch) not in owned:  # message costs the others nothing
            tell(ch, frame, deadline)
    for flow in outflows:
        try:
            flow.finish_frame(max(0.0, deadline - time.monotonic()))
        except RingError:
            flow.ch.cut = True  # mid-frame: an ABORT now, or ever, would corrupt the stream
    for ch in channels:
        if id(ch) in owned:
            tell(ch, frame, deadline)
    return frame


_TELLING = threading.Lock()


def tell(ch: Channel, frame: bytes, deadline: float) -> None:
    """The ABORT `frame` on `ch` (best effort, by `deadline` or within 50 ms), unless the
    channel is closed, has one already, or has a frame left unfinished on it. One that does not
    go whole leaves the channel cut."""
    with _TELLING:  # two threads' failures (a message's, a collective's) may tell one connection
        if ch.closed or ch.cut or ch.aborted:
            return
        ch.aborted = True
    try:
        ch.send_control_blocking(frame, max(0.05, deadline - time.monotonic()))
    except RingError:
        ch.cut = True  # (some of it may have gone)
