"""Tags on point-to-point messages (MPI's and torch's `tag`), and the messages a receive reads
past on the way to the one it wants.

Every message carries a tag, an integer from 0 to TAG_MAX: 0 unless its sender gives one (a
header leaves a tag of 0 out, so untagged messages cost nothing). A receive takes the next
message from its source whose tag it asks for; ANY_TAG, a receive's default, takes any.

Messages between a pair travel in one stream, so a later message is reached only past the
earlier ones. A receive that reads a message it does not want keeps it whole, in `Held`, for
a later receive (MPI's unexpected messages). Every receive looks there before the stream,
oldest first, so messages of one tag from one sender are taken in the order they were sent,
whatever tags came between them (MPI's rule). A held message takes memory until a receive
takes it, as an unexpected message does in MPI.
"""

from __future__ import annotations

import numbers
import threading
from collections import deque
from typing import Any

from .errors import ProtocolError
from .wire import describe_header

ANY_TAG = -1  # a receive's tag that takes a message of any tag (MPI.ANY_TAG)
TAG_MAX = 2**31 - 1  # the largest tag (MPI promises at least 32767; mpi4py's TAG_UB is often this)


def check_tag(tag: Any, op: str, rank: int, receiving: bool = False) -> int:
    """A call's `tag` as an int; TypeError or ValueError naming the rank and the call."""
    if type(tag) is int and (0 <= tag <= TAG_MAX or (receiving and tag == ANY_TAG)):
        return tag  # the common case, checked in a few bytecodes
    if isinstance(tag, bool) or not isinstance(tag, numbers.Integral):
        raise TypeError(f"rank {rank}: {op}: tag must be an integer, got {type(tag).__name__}")
    tag = int(tag)
    if not 0 <= tag <= TAG_MAX and not (receiving and tag == ANY_TAG):
        also = " or rd.ANY_TAG" if receiving else ""
        if tag == ANY_TAG and not receiving:
            also = " (rd.ANY_TAG, -1, is for receives: it takes a message of any tag, and a message has one)"
        raise ValueError(f"rank {rank}: {op}: tag={tag}: a tag is an integer from 0 to {TAG_MAX}{also}")
    return tag


def fields_of(tag: int) -> dict[str, int]:
    """A message header's tag field: none for 0."""
    return {"tag": tag} if tag else {}


def tag_of(fields: dict[str, Any], rank: int, peer: int) -> int:
    """The tag a message's header carries; ProtocolError if it is not one."""
    tag = fields.get("tag", 0)
    if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag <= TAG_MAX:
        raise ProtocolError(f"rank {rank}: rank {peer} sent a message whose tag is {tag!r}")
    return tag


def matches(wanted: int, tag: int) -> bool:
    return wanted == ANY_TAG or wanted == tag


class Status:
    """Where a received message came from, as MPI's Status: pass one as a receive's `status=`
    and it holds the sender's rank (`source`) and the message's `tag` once the receive is done
    (with `async_op=True`, once `wait()` returns)."""

    __slots__ = ("source", "tag")

    def __init__(self) -> None:
        self.source: int | None = None
        self.tag: int | None = None

    def __repr__(self) -> str:
        return f"Status(source={self.source}, tag={self.tag})"


def fill(status: Any, source: int, tag: int) -> None:
    if status is not None:
        status.source, status.tag = source, tag


def check_status(status: Any, op: str, rank: int) -> None:
    if status is not None and not isinstance(status, Status):
        raise TypeError(f"rank {rank}: {op}: status must be a ringdist Status or None, got {type(status).__name__}")


class Message:
    """A message read ahead of its receive: its tag, its sender's header and its bytes (an array
    for an array's message, the pickled bytes for an object's)."""

    __slots__ = ("tag", "fields", "data")

    def __init__(self, tag: int, fields: dict[str, Any], data: Any):
        self.tag, self.fields, self.data = tag, fields, data


class Held:
    """A group's messages read ahead of their receive, per sender, oldest first. Any thread may
    look; only the thread holding a pair's turn reads its stream, so only it adds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per sender, oldest first; empty when none is kept (a receive's first look, without the lock).
        self.by_sender: dict[int, deque[Message]] = {}
        # Per sender, how many of its kept messages have each tag: a receive for a tag none has
        # looks no further (thousands of receives posted, offered each kept message: `lanes`).
        self._tags: dict[int, dict[int, int]] = {}

    def put(self, src: int, message: Message) -> None:
        with self._lock:
            self.by_sender.setdefault(src, deque()).append(message)
            tags = self._tags.setdefault(src, {})
            tags[message.tag] = tags.get(message.tag, 0) + 1

    def take(self, src: int, tag: int, reserved: frozenset[int] = frozenset()) -> Message | None:
        """The oldest message from `src` a receive for `tag` takes, taken out; None if none.
        `reserved`: tags of messages a receive posted before this one waits for (not these)."""
        if not self.by_sender:  # the common case: nothing read ahead (a read without the lock)
            return None
        with self._lock:  # (the loop in a function of its own: `handle._join`)
            return self._take(src, tag, reserved)

    def _take(self, src: int, tag: int, reserved: frozenset[int]) -> "Message | None":
        held = self.by_sender.get(src)
        if not held or (tag != ANY_TAG and tag not in self._tags[src]):
            return None
        for i, message in enumerate(held):
            if matches(tag, message.tag) and message.tag not in reserved:
                del held[i]
                tags = self._tags[src]
                tags[message.tag] -= 1
                if not tags[message.tag]:
                    del tags[message.tag]
                if not held:
                    del self.by_sender[src]
                    del self._tags[src]
                return message
        return None

    def has_tag(self, src: int, tag: int) -> bool:
        """Whether a message from `src` that a receive for `tag` may take is kept (a look without
        the lock: a message kept meanwhile is offered again once it is)."""
        tags = self._tags.get(src)
        return bool(tags) and (tag == ANY_TAG or tag in tags)  # type: ignore[operator]

    def kept_note(self, src: int | None) -> str:
        """What a receive from `src` (None: from any rank) that timed out says of the messages kept
        from it for other tags ('' if none): a tag mismatch, not a sender that sent nothing."""
        if src is None:
            with self._lock:
                senders = sorted(self.by_sender)
            return "".join(self.kept_note(q) for q in senders)
        with self._lock:
            kept = list(self.by_sender.get(src, ()))
        if not kept:
            return ""
        shown = "; ".join(_kept(m) for m in kept[:3]) + ("; ..." if len(kept) > 3 else "")
        return (f"; rank {src} sent {len(kept)} message{'s' if len(kept) > 1 else ''} this receive does not take, "
                f"kept for a receive of {'its' if len(kept) == 1 else 'their'} tag: {shown}")

    def take_first(self, order: list[int], tag: int, reserved: frozenset[int] = frozenset()) -> tuple[int, Message] | None:
        """The oldest message a receive for `tag` takes from the first sender in `order` that has
        one, taken out, with its sender; None if none has. (`reserved` as for `take`.)"""
        if not self.by_sender:
            return None
        for src in order:
            message = self.take(src, tag, reserved)
            if message is not None:
                return src, message
        return None

    def clear(self) -> None:
        with self._lock:
            self.by_sender.clear()
            self._tags.clear()

    def __bool__(self) -> bool:
        return bool(self.by_sender)

    def count(self) -> int:
        with self._lock:
            return sum(len(held) for held in self.by_sender.values())


def _kept(message: Message) -> str:
    """A kept message as a timed-out receive names it: 'tag 5: send(shape=(3,), dtype=float64)'."""
    shown = describe_header({k: v for k, v in message.fields.items() if k not in ("tag", "seq")})
    return f"tag {message.tag}: {shown.partition(' [call #')[0]}"
