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
(`Mailbox.end`, from `Comm`). An any-source receive (`recv_any`) does not take them. Every
change to a mailbox runs on one thread (`_Courier`), which no signal handler interrupts.
"""

from __future__ import annotations

import atexit
import math
import os
import select
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from . import channel, deadlines, forks, handle, wire
from .arrays import as_array
from .calls import check_flag
from .comm import Comm
from .errors import MismatchError, RingError, RingTimeoutError, known
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
    """A receive from this rank that waits for its message: `tag` (or ANY_TAG) picks it; `work`,
    a non-blocking one's handle, completed with `take(message)` on the courier's thread;
    `deadline` (monotonic; inf: none) ends it with its timeout (`expired()`'s error)."""

    __slots__ = ("box", "tag", "take", "work", "deadline", "expired", "message", "error", "event", "consumed")

    def __init__(self, box: "Mailbox", tag: int, take: Callable[[_Message], Any], deadline: float,
                 expired: Callable[[], BaseException], work: handle.Work | None = None):
        self.box, self.tag, self.take, self.work = box, tag, take, work
        self.deadline, self.expired = deadline, expired
        self.message: _Message | None = None
        self.error: BaseException | None = None
        self.event = _Done()  # set once a blocking receive has its message, or its end
        self.consumed = False  # a blocking receive's caller has its message (it goes back no more)


class Mailbox:
    """A group's messages from this rank to itself, and the receives waiting for them. Changed on
    the courier's thread alone (`_Courier`), which no signal handler interrupts: a message and a
    receive are matched, and a receive ended, whole."""

    def __init__(self, g: Comm):
        self.g = g
        self._lock = threading.Lock()  # (for `holds`, read on another thread)
        self._messages: deque[_Message] = deque()
        self._waiting: list[_Waiting] = []
        self._ended: Callable[[], BaseException] | None = None  # the error a receive gets once the group ended

    # ---- on the courier's thread ----------------------------------------------------------------

    def put(self, message: _Message, first: bool = False) -> None:
        """A message sent: to the first waiting receive that takes its tag, else kept (`first`:
        ahead of those kept, as the one an interrupted receive gave back)."""
        if self._ended is not None:
            return  # (the group broke or closed: a receive would have been ended too)
        with self._lock:
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
        self._deliver(w, message)

    def post(self, w: _Waiting) -> None:
        """A receive: its message now if one is kept, else it waits (in posting order)."""
        if self._ended is not None:
            self._finish(w, error=self._ended())
            return
        with self._lock:
            for i, m in enumerate(self._messages):
                if matches(w.tag, m.tag):
                    del self._messages[i]
                    break
            else:
                self._waiting.append(w)
                _courier.waiting(w)
                return
        self._deliver(w, m)

    def abandon(self, w: _Waiting) -> None:
        """A receive's caller was interrupted (a blocking one's in its wait, a non-blocking one's
        as it posted it): it waits no more, and a message it had not yet taken goes back, first,
        for the next receive that takes its tag."""
        if w in self._waiting:
            self._waiting.remove(w)
            _courier.done_waiting(w)
        elif w.message is not None and not w.consumed:
            message, w.message = w.message, None
            self.put(message, first=True)

    def expire(self, w: _Waiting) -> None:
        if w in self._waiting:
            self._waiting.remove(w)
            self._finish(w, error=w.expired())

    def end(self, error: Callable[[], BaseException]) -> None:
        """The group broke or closed (`Comm._end_mailbox`, any thread): waiting receives fail with
        `error()`, kept messages go (on the courier's thread, after what was handed over before)."""
        _courier.do(lambda: self._end(error))

    def _end(self, error: Callable[[], BaseException]) -> None:
        if self._ended is not None:
            return
        self._ended = error
        with self._lock:
            waiting, self._waiting = self._waiting, []
            self._messages.clear()
        for w in waiting:
            self._finish(w, error=error())

    def _deliver(self, w: _Waiting, message: _Message) -> None:
        w.message = message  # (a blocking receive's caller takes it; a non-blocking one's given back if its
        if w.work is None:   # caller was interrupted as it posted it, never having its handle: `abandon`)
            self._finish(w)
            return
        try:
            result = w.take(message)
        except Exception as exc:  # noqa: BLE001 - the receive's error, raised by its wait
            self._finish(w, error=exc)
            return
        self._finish(w, result=result)

    def _finish(self, w: _Waiting, result: Any = None, error: BaseException | None = None) -> None:
        _courier.done_waiting(w)
        if w.work is not None:
            w.work.complete(result, error)
        else:
            w.error = error
            w.event.set()

    # ---- on any thread ----------------------------------------------------------------------

    def holds(self, tag: int) -> bool:
        """Whether a message kept here is one a receive of `tag` would take (messages sent before
        this call included: asked on the courier's thread, after them)."""
        def look() -> bool:
            with self._lock:
                return any(matches(tag, m.tag) for m in self._messages)
        return _courier.call(look)

    def forget_in_child(self, gid: str) -> None:
        """A forked child: the parent's receives from itself are the parent's to wait for (their
        handles fail here, as its other operations' do); the courier's thread is the parent's."""
        for w in list(self._waiting):
            if w.work is not None:
                w.work.fail_in_child(RingError(f"{w.work.op} on group {gid!r} was issued by process "
                                               f"{forks.parent()}; a forked child cannot wait for it"))


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
    message = _Message(tag, array=np.array(arr, order="C", copy=True))
    box = mailbox(g)
    _courier.do(lambda: box.put(message))  # (done here: the courier takes it in order, before a later receive)
    return handle.done(op, g, arr) if async_op else arr


def send_object(obj: Any, g: Comm, tag: Any, async_op: Any) -> Any:
    """`send_object(obj, dst=this rank)`: pickled at the call (a copy), kept for a receive. An
    object that cannot be pickled (or is over RINGDIST_MAX_OBJECT_BYTES) is a ValueError here
    and at its receive, as between two ranks."""
    me = g.rank()
    tag = check_tag(tag, "send_object", me)
    check_flag(async_op, "async_op", g, "send_object")
    pickled = Pickled(obj, g.settings.max_object_bytes, "send_object", me, whole=True)
    g.check_usable("send_object")
    message = _Message(tag, pickled=pickled)
    box = mailbox(g)
    _courier.do(lambda: box.put(message))
    error = ValueError(pickled.error) if pickled.error is not None else None
    if async_op:
        return handle.done("send_object", g, error=error)
    if error is not None:
        raise error
    return None


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
    deadline = deadlines.after(limit)
    expired = (lambda: _timed_out(g, op, tag, limit))  # noqa: E731
    if async_op:
        work = handle.Work(op, g)
        if finish is not None:
            work.then(lambda result, error: finish(result) if error is None else None)
        with handle.lock:
            handle.unreported.add(work)
        w = _Waiting(box, tag, take, deadline, expired, work)
        abandon = (lambda: box.abandon(w))  # noqa: E731  (made first: the hand-over below is one call)
        try:
            _courier.do(lambda: box.post(w))
        except BaseException:  # an interruption as it was posted: it takes no message
            _courier.hand(abandon)
            handle.forget(work)
            raise
        return work
    w = _Waiting(box, tag, take, deadline, expired)
    abandon = (lambda: box.abandon(w))  # noqa: E731
    try:
        _courier.do(lambda: box.post(w))
        w.event.wait()
        if w.error is not None:
            w.consumed = True
            raise w.error
        assert w.message is not None
        try:
            got = take(w.message)
        except Exception:  # the message's own error (it does not fit): used up, as another rank's
            w.consumed = True
            raise
        w.consumed = True
    except BaseException:
        # Interrupted: nothing taken. A message delivered meanwhile goes back, first of those
        # kept, for the next receive that takes its tag (on the courier's thread, in order).
        if not w.consumed:
            _courier.hand(abandon)
        raise
    return got if finish is None else finish(got)


def _timed_out(g: Comm, op: str, tag: int, limit: float) -> RingTimeoutError:
    tagged = "" if tag == ANY_TAG else f" with tag {tag}"
    exc = RingTimeoutError(f"rank {g.rank()}: {op} from itself (group {g.gid!r}): no message{tagged} within "
                           f"{limit:g} s (a rank's message to itself comes from its own send: an earlier call, "
                           f"or another thread's)")
    return known(exc, rank=g.rank(), group=g.gid, op=op, peer=g.rank())


LOOK_AGAIN = 0.05  # seconds the courier sleeps at most before it looks for tasks again


class _Done:
    """A one-shot flag a thread waits on and the courier raises. A bare lock, taken and given
    back in single calls: the waiter, interrupted by a signal handler, can leave no lock held
    (a `threading.Event`'s condition can be left held that way, and its `set` would wait forever)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # (set already)
            pass

    def wait(self) -> None:
        """Until set (in slices: the main thread looks at its signals between them)."""
        while not self._lock.acquire(timeout=deadlines.thread_wait(math.inf)):
            pass
        self._lock.release()


class _Courier:
    """The one thread that changes the mailboxes: it takes each message sent to a rank itself
    and each receive from it in the order they were handed over, matches them, completes the
    non-blocking receives' handles and ends receives at their deadline. No signal handler runs
    there (only on the main thread), and handing a task over takes no lock (a deque's append and
    a byte down a pipe, single calls), so an interruption of the calling thread never cuts a
    match in half: it comes before the hand-over (nothing done) or after it (all done). Started
    on first use; it keeps a mailbox with receives waiting (and its group) alive until they end."""

    def __init__(self) -> None:
        self._tasks: deque[Callable[[], Any]] = deque()
        self._timed: dict[_Waiting, float] = {}  # waiting receives with a deadline (on the thread)
        self._held: dict[Mailbox, int] = {}  # mailboxes with receives waiting, how many (on the thread)
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self._wake_r = self._wake_w = -1
        self._woken = False  # a byte is in the pipe, or on its way
        self._pid = os.getpid()
        self._exited = False

    def do(self, task: Callable[[], Any]) -> None:
        """Hand `task` over (it runs on the courier's thread, after those handed over before)."""
        if self._thread is None or self._pid != os.getpid():
            self._begin()
        self._tasks.append(task)
        if not self._woken:  # (one byte at most in the pipe: a write never blocks)
            self._woken = True
            os.write(self._wake_w, b"x")

    def _begin(self) -> None:
        with self._start:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._tasks = deque()
            self._wake_r, self._wake_w = channel.make_pipe("the thread of messages a rank sends itself")
            self._woken = False
            self._thread = threading.Thread(target=self._run, name="ringdist-own-messages", daemon=True)
            self._thread.start()
            atexit.register(self._at_exit)

    def hand(self, task: Callable[[], Any]) -> None:
        """`do` for a courier known to run (an interrupted receive's undoing): its first statement
        hands the task over, so that a second interruption comes after it."""
        self._tasks.append(task)
        if not self._woken:
            self._woken = True
            os.write(self._wake_w, b"x")

    def call(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the courier's thread, after every task handed over before; its result."""
        out: list[Any] = []
        done = _Done()

        def task() -> None:
            try:
                out.append(fn())
            finally:
                done.set()

        self.do(task)
        done.wait()
        return out[0]

    # ---- on the courier's thread ----------------------------------------------------------------

    def waiting(self, w: _Waiting) -> None:
        if w.deadline != math.inf:
            self._timed[w] = w.deadline
        self._held[w.box] = self._held.get(w.box, 0) + 1

    def done_waiting(self, w: _Waiting) -> None:
        self._timed.pop(w, None)
        left = self._held.get(w.box, 0) - 1
        if left > 0:
            self._held[w.box] = left
        else:
            self._held.pop(w.box, None)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        tasks = self._tasks
        while True:
            if not tasks:
                wait = min(min(self._timed.values(), default=math.inf) - time.monotonic(), LOOK_AGAIN)
                if wait > 0 and poller.poll(wait * 1000):
                    os.read(self._wake_r, 4096)
            # Cleared before the tasks are taken: a hand-over from now on writes a byte again (and
            # one interrupted between the flag and its byte costs one LOOK_AGAIN, once).
            self._woken = False
            while tasks:
                task = tasks.popleft()
                try:
                    task()
                except Exception:  # noqa: BLE001 - a defect here must not stop every later message
                    handle.log.exception("ringdist: a message of a rank to itself failed")
            now = time.monotonic()
            for w in [w for w, when in self._timed.items() if when <= now]:
                try:
                    w.box.expire(w)
                except Exception:  # noqa: BLE001 - as a task's
                    handle.log.exception("ringdist: a message of a rank to itself failed")

    def _at_exit(self) -> None:
        """Receives still waiting end as the process exits (before the groups close, so that each
        is reported once, as another rank's receive is; `work`'s exit hook calls it first)."""
        if self._exited:
            return
        self._exited = True
        def end_all() -> None:
            for box in list(self._held):
                box._end(lambda g=box.g: RingError(f"rank {g.rank()}: a receive from itself on group {g.gid!r}: "
                                                     f"closed with the operation outstanding (the process is exiting)"))
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            done = threading.Event()
            self.do(lambda: (end_all(), done.set()))
            done.wait(1.0)


_courier = _Courier()


handle.at_exit_first.append(_courier._at_exit)  # receives from itself end before the others are reported
def _after_fork_in_child() -> None:
    """A forked child: the parent's receives from itself (a world of one is not tracked by
    `forks`) and its courier are the parent's; the child starts afresh."""
    for box in list(_courier._held):
        box._waiting.clear()
    _courier._timed.clear()
    _courier._held.clear()
    _courier._thread = None
    _courier._tasks = deque()


forks.in_child(_after_fork_in_child)
