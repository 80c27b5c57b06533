"""Messages a rank sends itself: MPI allows them (a periodic dimension of size 1 shifts to the
rank itself, at 2, 3, 5 or 7 ranks in two dimensions), and so does every call here.

They never leave the process. The group's mailbox (`Mailbox`, made on first use) keeps each
message sent (a copy taken at the call, so the send is done at once, whatever its size: MPI's
buffered send) and each receive from this rank that waits for one. As for another rank's
messages, a receive takes the first message of its tag in the order sent, and a message goes to
the first waiting receive that takes its tag, in the order they were posted. A message is
checked as another rank's is (shape, dtype, array or object); one that does not fit is that
receive's MismatchError alone (no peer is involved: the group stays usable), and is used up.

A receive that waits ends with its timeout (RingTimeoutError; nothing taken, as for another
rank's receive), an interruption (nothing taken), or when the group breaks or closes
(`Mailbox.end`, from `Comm`). An any-source receive (`recv_any`) does not take them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable

import numpy as np

from . import deadlines, handle, wire
from .arrays import as_array
from .calls import check_flag
from .comm import Comm
from .errors import MismatchError, RingError, RingTimeoutError
from .objects import Pickled, unpickle
from .tags import ANY_TAG, check_status, check_tag, fill, matches


class _Message:
    """A message to this rank: an array's copy, or a pickled object (maybe why it is not)."""

    __slots__ = ("tag", "array", "pickled")

    def __init__(self, tag: int, array: np.ndarray | None = None, pickled: Pickled | None = None):
        self.tag, self.array, self.pickled = tag, array, pickled

    def describe(self) -> str:
        tag = f", tag={self.tag}" if self.tag else ""
        if self.array is None:
            return f"send_object({tag[2:]})"
        return f"send(shape={self.array.shape}, dtype={self.array.dtype}{tag})"


class _Waiting:
    """A receive from this rank that waits for its message: `tag` (or ANY_TAG) picks it;
    `delivered(message)` is called once it has one (on the sending thread)."""

    __slots__ = ("tag", "message", "event", "delivered", "expired", "__weakref__")

    def __init__(self, tag: int, delivered: Callable[["_Waiting"], None] | None = None):
        self.tag = tag
        self.message: _Message | None = None
        self.event = threading.Event()
        self.delivered = delivered
        self.expired: Callable[[], None] | None = None  # a non-blocking receive's end at its timeout

    def deliver(self, message: _Message) -> None:
        self.message = message
        self.event.set()
        if self.delivered is not None:
            self.delivered(self)


class Mailbox:
    """A group's messages from this rank to itself, and the receives waiting for them."""

    def __init__(self, g: Comm):
        self.g = g
        self._lock = threading.Lock()
        self._messages: deque[_Message] = deque()
        self._waiting: list[_Waiting] = []
        self._ended: Callable[[], BaseException] | None = None  # the error a receive gets once the group ended

    def put(self, message: _Message, first: bool = False) -> None:
        """A message sent: to the first waiting receive that takes its tag, else kept (`first`:
        ahead of those kept, as the one a receive gave back)."""
        with self._lock:
            if self._ended is not None:
                return  # (the group broke or closed meanwhile: a receive would have been ended too)
            for i, w in enumerate(self._waiting):
                if matches(w.tag, message.tag):
                    del self._waiting[i]
                    break
            else:
                if first:
                    self._messages.appendleft(message)
                else:
                    self._messages.append(message)
                return
        w.deliver(message)

    def post(self, w: _Waiting) -> None:
        """A receive: its message now if one is kept, else it waits (in posting order)."""
        with self._lock:
            if self._ended is not None:
                raise self._ended()
            for i, m in enumerate(self._messages):
                if matches(w.tag, m.tag):
                    del self._messages[i]
                    break
            else:
                self._waiting.append(w)
                return
        w.deliver(m)

    def holds(self, tag: int) -> bool:
        """Whether a message kept here is one a receive of `tag` would take."""
        with self._lock:
            return any(matches(tag, m.tag) for m in self._messages)

    def withdraw(self, w: _Waiting) -> bool:
        """Whether `w` still waited (it waits no more); False once it has its message."""
        with self._lock:
            try:
                self._waiting.remove(w)
            except ValueError:
                return False
            return True

    def end(self, error: Callable[[], BaseException]) -> None:
        """The group broke or closed: waiting receives fail with `error()`, kept messages go."""
        with self._lock:
            if self._ended is not None:
                return
            self._ended = error
            waiting, self._waiting = self._waiting, []
            self._messages.clear()
        for w in waiting:
            w.message = None
            w.event.set()
            if w.delivered is not None:
                w.delivered(w)

    def ended(self) -> BaseException | None:
        return None if self._ended is None else self._ended()


def mailbox(g: Comm) -> Mailbox:
    box = g.mailbox
    if box is None:
        with _made:
            box = g.mailbox
            if box is None:
                box = g.mailbox = Mailbox(g)
    return box


_made = threading.Lock()


def is_me(peer: Any, g: Comm) -> bool:
    """Whether a send's `dst` or a receive's `src` is this rank itself (an integer rank)."""
    return type(peer) is int and peer == g.rank() or (
        isinstance(peer, (int, np.integer)) and not isinstance(peer, bool) and int(peer) == g.rank())


# ---- sending --------------------------------------------------------------------------------


def check_sendrecv(g: Comm, sendtag: int, recvtag: int) -> None:
    """A sendrecv from this rank to itself whose receive could only be another thread's message
    (MPI's would never complete): MismatchError before anything is sent."""
    if not matches(recvtag, sendtag) and not (g.mailbox is not None and g.mailbox.holds(recvtag)):
        raise MismatchError(f"rank {g.rank()} expected sendrecv(recvtag={recvtag}) from itself but sends "
                            f"sendtag={sendtag}")



def send(x: Any, g: Comm, tag: Any, async_op: Any, op: str = "send") -> Any:
    """`send(x, dst=this rank)`: a copy of `x` kept for a receive; done at once."""
    me = g.rank()
    tag = check_tag(tag, op, me)
    check_flag(async_op, "async_op", g, op)
    arr = as_array(x, op, g)
    try:
        wire.header_dtype(op, arr.dtype)  # (refused as a message to another rank is: no header could carry it)
    except ValueError as exc:
        raise ValueError(f"rank {me}: {exc}") from None
    g.check_usable(op)
    mailbox(g).put(_Message(tag, array=np.array(arr, order="C", copy=True)))
    return _done(g, op) if async_op else None


def send_object(obj: Any, g: Comm, tag: Any, async_op: Any) -> Any:
    """`send_object(obj, dst=this rank)`: pickled at the call (a copy), kept for a receive. An
    object that cannot be pickled (or is over RINGDIST_MAX_OBJECT_BYTES) is a ValueError here
    and at its receive, as between two ranks."""
    me = g.rank()
    tag = check_tag(tag, "send_object", me)
    check_flag(async_op, "async_op", g, "send_object")
    pickled = Pickled(obj, g.settings.max_object_bytes, "send_object", me, whole=True)
    g.check_usable("send_object")
    mailbox(g).put(_Message(tag, pickled=pickled))
    error = ValueError(pickled.error) if pickled.error is not None else None
    if async_op:
        return _done(g, "send_object", error=error)
    if error is not None:
        raise error
    return None


def _done(g: Comm, op: str, result: Any = None, error: BaseException | None = None) -> handle.Work:
    work = handle.Work(op, g)
    if error is not None:
        with handle.lock:
            handle.unreported.add(work)
    work.complete(result, error)
    return work


# ---- receiving ------------------------------------------------------------------------------


def recv(plan: Any, g: Comm, async_op: Any) -> Any:
    """`recv(shape, dtype, src=this rank)`: `plan` is its `p2p._Recv` (from ANYONE, so that its
    checks pass), started here: its arguments checked as a receive from another rank's are."""
    op = plan.op
    check_flag(async_op, "async_op", g, op)
    limit = plan.start()
    plan.out = None  # (the message is the result: a receive that waits holds no array)
    me = g.rank()
    tagged = "" if plan.tag == ANY_TAG else f", tag={plan.tag}"

    def take(message: _Message) -> np.ndarray:
        arr = message.array
        if arr is None or not plan.fits(arr.shape, wire.header_dtype(op, arr.dtype)):
            raise MismatchError(f"rank {me} expected {op}({plan.wanted()}{tagged}) from itself but it sent "
                                f"{message.describe()} (group {g.gid!r})")
        fill(plan.status, me, message.tag)
        return arr

    return _receive(g, op, plan.tag, limit, take, async_op)


def recv_object(g: Comm, tag: Any, status: Any, timeout: float | None, async_op: Any) -> Any:
    """`recv_object(src=this rank)`."""
    me = g.rank()
    tag = check_tag(tag, "recv_object", me, receiving=True)
    check_status(status, "recv_object", me)
    check_flag(async_op, "async_op", g, "recv_object")
    g.check_usable("recv_object")
    limit = g._timeout(timeout)
    tagged = "" if tag == ANY_TAG else f" tag={tag}"

    def take(message: _Message) -> Pickled:
        pickled = message.pickled
        if pickled is None:
            raise MismatchError(f"rank {me} expected send_object{tagged} from itself but it sent "
                                f"{message.describe()} (group {g.gid!r})")
        if pickled.error is not None:
            raise ValueError(f"rank {me}: recv_object: rank {me} could not send its object: {pickled.error}")
        fill(status, me, message.tag)
        return pickled

    def unpickled(pickled: Pickled) -> Any:
        part = pickled.parts[0]
        return unpickle(part, [len(part)], f"rank {me}: recv_object: the object from rank {me} (itself)")

    return _receive(g, "recv_object", tag, limit, take, async_op, unpickled)


def _receive(g: Comm, op: str, tag: int, limit: float, take: Callable[[_Message], Any], async_op: bool,
             finish: Callable[[Any], Any] | None = None) -> Any:
    box = mailbox(g)
    if async_op:
        return _receive_later(g, box, op, tag, limit, take, finish)
    w = _Waiting(tag)
    box.post(w)
    deadline = deadlines.after(limit)
    try:
        while not w.event.wait(deadlines.thread_wait(deadlines.left(deadline))):
            if deadlines.passed(deadline) and box.withdraw(w):
                raise _timed_out(g, op, tag, limit)
    except BaseException:
        # An interruption (or the timeout): nothing taken. A message delivered meanwhile goes
        # back, first of those kept, for the next receive that takes its tag.
        if not box.withdraw(w) and w.message is not None:
            box.put(w.message, first=True)
        raise
    if w.message is None:
        raise _ended(box, g, op)
    got = take(w.message)
    return got if finish is None else finish(got)


def _receive_later(g: Comm, box: Mailbox, op: str, tag: int, limit: float, take: Callable[[_Message], Any],
                   finish: Callable[[Any], Any] | None) -> handle.Work:
    work = handle.Work(op, g)
    if finish is not None:
        work.then(lambda result, error: finish(result) if error is None else None)
    with handle.lock:
        handle.unreported.add(work)

    def delivered(w: _Waiting) -> None:
        message, w.message, w.expired = w.message, None, None
        if message is None:
            work.complete(None, _ended(box, g, op))
            return
        try:
            result = take(message)
        except Exception as exc:  # noqa: BLE001 - the receive's error, raised by its wait
            work.complete(None, exc)
            return
        work.complete(result, None)

    w = _Waiting(tag, delivered)
    box.post(w)
    if not w.event.is_set() and limit != math.inf:
        w.expired = lambda: box.withdraw(w) and work.complete(None, _timed_out(g, op, tag, limit))
        _clock.add(time.monotonic() + limit, weakref.ref(w))  # (a receive done meanwhile is gone)
    return work


def _timed_out(g: Comm, op: str, tag: int, limit: float) -> RingTimeoutError:
    tagged = "" if tag == ANY_TAG else f" with tag {tag}"
    return RingTimeoutError(f"rank {g.rank()}: {op} from itself (group {g.gid!r}): no message{tagged} within "
                            f"{limit:g} s (a rank's message to itself comes from its own send: an earlier call, "
                            f"or another thread's)")


def _ended(box: Mailbox, g: Comm, op: str) -> BaseException:
    error = box.ended()
    return error if error is not None else RingError(f"rank {g.rank()}: {op} from itself: no message")


class _Clock:
    """Ends the non-blocking receives from this rank that wait past their timeout: one thread,
    started on first use, with a heap of deadlines (a receive that had its message leaves an
    entry that does nothing)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, weakref.ref[_Waiting]]] = []
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, when: float, waiting: "weakref.ref[_Waiting]") -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._count), waiting))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ringdist-own-timeouts", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                when, _, waiting = self._heap[0]
                wait = when - time.monotonic()
                if wait > 0:
                    self._cond.wait(min(wait, 60.0))
                    continue
                heapq.heappop(self._heap)
            w = waiting()
            expired = None if w is None else w.expired
            if expired is not None:
                expired()


_clock = _Clock()
