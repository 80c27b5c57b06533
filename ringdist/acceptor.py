"""Accepting connections: one thread and one selector run every handshake in progress.

Used by a rank's `Endpoint` and by the `RendezvousServer`. A connection costs no
thread until it has proved the job secret; before that it is a non-blocking socket
and a `ServerHandshake` fed whatever bytes arrive. Strangers cannot starve real
peers:

- at most `max_pending` handshakes are in progress; a new arrival beyond that evicts
  the one that has been idle longest (since it arrived, if it never sent a byte). A
  real peer sends its HELLO as it connects and answers the CHALLENGE within a round
  trip, so it is never idle for long, while a stranger that sends nothing, or stops
  halfway, soon is; a real peer that is cut off anyway dials again (`Endpoint.connect`);
- every handshake has a deadline;
- out of file descriptors (EMFILE/ENFILE), the acceptor evicts a handshake in progress
  to make room, or, with none to evict, stops accepting for a moment instead of
  spinning on a listener it cannot serve;
- refusals are counted, and logged at a bounded rate (`RefusalLog`).

An authenticated connection is handed, in blocking mode, to `on_ready(sock, hello,
addr)` (called in the acceptor's thread: it must not block). If that raises
ProtocolError the connection is refused like any other.
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import socket
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from . import channel, forks
from .errors import AuthError, PeerLostError, ProtocolError
from .handshake import ServerHandshake

log = logging.getLogger("ringdist")

MAX_PENDING_HANDSHAKES = 64
ACCEPTS_PER_ROUND = 32  # arrivals taken per wake-up: handshakes in progress are served first
PAUSE_WHEN_OUT_OF_FDS = 0.1  # seconds the listeners rest when no handshake can be evicted


class RefusalLog:
    """Counts refused connections; logs the first `burst`, then one summary line per `interval` seconds.
    `verb` says what was done to them ("dropped": connections authenticated, then let go)."""

    def __init__(self, label: str, burst: int = 10, interval: float = 10.0, verb: str = "refused"):
        self.label = label
        self.verb = verb
        self.burst = burst
        self.interval = interval
        self.count = 0
        self.suppressed = 0
        self.last = ""  # the latest refusal: where from, and why
        self._last_summary = 0.0

    def refuse(self, addr: Any, why: str) -> None:
        self.count += 1
        where = _where(addr)
        self.last = f"{where}: {why}"
        if self.count <= self.burst:
            log.warning("%s: %s connection from %s: %s", self.label, self.verb, where, why)
            self._last_summary = time.monotonic()
            return
        self.suppressed += 1
        if time.monotonic() - self._last_summary >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Log the refusals not logged yet, in one line."""
        if self.suppressed:
            log.warning("%s: %s %d more connections (%d in all; latest from %s)",
                        self.label, self.verb, self.suppressed, self.count, self.last)
            self.suppressed = 0
            self._last_summary = time.monotonic()


def _where(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
    # A Unix client's path is the stranger's to choose: shown quoted, so a newline or an escape
    # sequence in it cannot pass for a line of the job's output.
    return repr(addr) if addr else "a local socket"


class _Pending:
    __slots__ = ("sock", "addr", "hs", "deadline", "active", "writing")

    def __init__(self, sock: socket.socket, addr: Any, hs: ServerHandshake, now: float, timeout: float):
        self.sock = sock
        self.addr = addr
        self.hs = hs
        self.deadline = now + timeout  # for the whole handshake: trickling bytes does not extend it
        self.active = now  # when it arrived or last sent a byte
        self.writing = False  # registered for EVENT_WRITE: a reply did not fit in the send buffer


class Acceptor:
    """Accepts on `listeners` and authenticates every arrival, in one thread."""

    def __init__(self, listeners: list[socket.socket], secret: bytes, job: str, *,
                 on_ready: Callable[[socket.socket, dict[str, Any], Any], None], label: str,
                 handshake_timeout: float, max_pending: int = MAX_PENDING_HANDSHAKES,
                 verdict: Callable[[dict[str, Any]], str | None] | None = None):
        self._listeners = listeners
        self._secret = secret
        self._job = job
        self._on_ready = on_ready
        self._verdict = verdict  # `ServerHandshake`'s
        self.label = label
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self.refusals = RefusalLog(label)
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # by fd, in arrival order
        self._selector = selectors.DefaultSelector()
        self._paused_until = 0.0
        self.out_of_fds: tuple[float, str] | None = None  # when an arrival last found no descriptor free, and why
        self._closed = False
        self._wake_r, self._wake_w = channel.make_pipe(label)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        for lsock in listeners:
            lsock.setblocking(False)
            self._selector.register(lsock, selectors.EVENT_READ, lsock)
        self._thread = threading.Thread(target=self._loop, name="ringdist-acceptor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting; drop the handshakes in progress. The listeners stay open (their owner's)."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        for p in list(self._pending.values()):
            p.sock.close()
        self._pending.clear()
        self._selector.close()
        os.close(self._wake_w)
        os.close(self._wake_r)
        self._wake_r = self._wake_w = -1  # closed: a forked child must not close these numbers again
        self.refusals.flush()

    def forget_in_child(self) -> None:
        """In a forked child: never touch the parent's wake-up pipe or handshakes (their sockets
        are closed by `forks`); the child has no acceptor thread."""
        self._closed = True
        self._pending.clear()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:  # (-1 once closed here: the number may be another file's by now)
                channel.close_quietly(fd)
        self._wake_r = self._wake_w = -1

    # ---- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closed:
            now = time.monotonic()
            if self._paused_until and now >= self._paused_until:
                self._resume()
            oldest = next(iter(self._pending.values()), None)  # arrival order is deadline order
            wake = min(oldest.deadline if oldest else math.inf, self._paused_until or math.inf)
            timeout = None if wake == math.inf else max(0.0, wake - now)
            arrivals = []
            for key, events in self._selector.select(timeout):
                if key.data is None:
                    return  # close() woke us
                if isinstance(key.data, _Pending):
                    if self._pending.get(key.fd) is key.data:  # not dropped earlier in this round
                        self._serve(key.data, events)
                else:
                    arrivals.append(key.data)
            for lsock in arrivals:  # after the handshakes in progress had their turn
                self._accept(lsock)
            self._expire(time.monotonic())

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_ROUND):
            got = channel.accept(lsock)
            if got is None:
                return
            if isinstance(got, channel.AcceptFailed):
                if not got.out_of_fds:
                    continue  # ECONNABORTED and the like: that arrival is gone, the next may be fine
                self.out_of_fds = (time.monotonic(), got.reason)
                if not self._pending:
                    self._pause(got.reason)
                    return
                self._evict(f"evicted to free a file descriptor ({got.reason})")
                continue
            conn, addr = got
            if len(self._pending) >= self.max_pending:
                self._evict(f"evicted: {self.max_pending} handshakes in progress")
            forks.track(conn)
            conn.setblocking(False)
            p = _Pending(conn, addr, ServerHandshake(self._secret, self._job, self._verdict), time.monotonic(),
                         self.handshake_timeout)
            self._pending[conn.fileno()] = p
            self._selector.register(conn, selectors.EVENT_READ, p)
            self._serve(p, selectors.EVENT_READ)  # a real peer's HELLO is usually here already

    def _evict(self, why: str) -> None:
        """Drop the handshake in progress that has been idle longest."""
        self._drop(min(self._pending.values(), key=lambda p: p.active), why)

    def _pause(self, why: str) -> None:
        """Out of file descriptors with nothing to evict: stop watching the listeners for a moment."""
        self._paused_until = time.monotonic() + PAUSE_WHEN_OUT_OF_FDS
        for lsock in self._listeners:
            try:
                self._selector.unregister(lsock)
            except KeyError:
                pass
        self.refusals.refuse("(not accepted)", f"cannot accept: {why}")

    def _resume(self) -> None:
        self._paused_until = 0.0
        for lsock in self._listeners:
            self._selector.register(lsock, selectors.EVENT_READ, lsock)

    def _expire(self, now: float) -> None:
        for p in list(self._pending.values()):
            if p.deadline > now:
                break  # arrival order is deadline order
            self._drop(p, f"no handshake within {self.handshake_timeout:g} s")

    # ---- one connection ------------------------------------------------------------------------

    def _serve(self, p: _Pending, events: int) -> None:
        hs = p.hs
        try:
            if events & selectors.EVENT_WRITE:
                self._send(p)
            while not hs.outgoing and hs.want():
                data = channel.recv_ready(p.sock, hs.want())
                if data is None:
                    break
                if not data:
                    # Closed before a byte: a peer's look at whether this rank still listens
                    # (`Endpoint.take`'s probe), or a port scan; or after a HELLO of this job: a
                    # member that gave up waiting for this rank (stopped, say). Counted, not logged.
                    self._drop(p, f"connection closed after {hs.received} bytes of handshake",
                               quiet=hs.received == 0 or hs.introduced)
                    return
                p.active = time.monotonic()
                hs.feed(data)
                self._send(p)
        except (AuthError, ProtocolError) as exc:
            self._send_last_words(p)
            self._drop(p, str(exc))
            return
        except PeerLostError as exc:
            self._drop(p, str(exc))
            return
        if hs.done and not hs.outgoing:
            self._hand_off(p)

    def _send(self, p: _Pending) -> None:
        """Send what the handshake queued; wait for EVENT_WRITE if the socket takes only part."""
        out = p.hs.outgoing
        while out:
            sent = channel.send_ready(p.sock, out)
            if not sent:
                break
            del out[:sent]
        want_write = bool(out)
        if want_write != p.writing:
            p.writing = want_write
            events = selectors.EVENT_WRITE if want_write else selectors.EVENT_READ
            self._selector.modify(p.sock, events, p)

    def _send_last_words(self, p: _Pending) -> None:
        """The REJECT a refusal queued, if the socket takes it now (a stranger is not waited for)."""
        if p.hs.outgoing:
            try:
                channel.send_ready(p.sock, p.hs.outgoing)
            except PeerLostError:
                pass

    def _hand_off(self, p: _Pending) -> None:
        self._forget(p)
        p.sock.setblocking(True)
        assert p.hs.hello is not None
        try:
            self._on_ready(p.sock, p.hs.hello, p.addr)
        except ProtocolError as exc:
            self.refusals.refuse(p.addr, str(exc))
            p.sock.close()

    def _drop(self, p: _Pending, why: str, quiet: bool = False) -> None:
        self._forget(p)
        p.sock.close()
        if quiet:
            self.refusals.count += 1
        else:
            self.refusals.refuse(p.addr, why)

    def _forget(self, p: _Pending) -> None:
        self._pending.pop(p.sock.fileno(), None)
        self._selector.unregister(p.sock)
