"""This process's presence on the network: its listening sockets, the acceptor, and dialing out.

One `Endpoint` per process serves every group: a peer's connection names its group,
kind and lane in the handshake, and lands in the inbox under that key until the
group that expects it takes it. Strangers (garbage, wrong secret, replays) are
dropped and counted; the job goes on.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from typing import NamedTuple

from . import deadlines, forks, wire
from .errors import AuthError, ConnectError, ProtocolError, RingTimeoutError
from .handshake import client_handshake, server_handshake

log = logging.getLogger("ringdist")

MAX_PENDING_HANDSHAKES = 32


class InboxKey(NamedTuple):
    group: str
    peer: int
    kind: str
    lane: int


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


class Endpoint:
    """Listens on this rank's addresses; accepts and authenticates peers; connects to peers."""

    def __init__(self, secret: bytes, bind_ips: list[str], *, connect_timeout: float, label: str = ""):
        self._secret = secret
        self.job = wire.job_id(secret)
        self.connect_timeout = connect_timeout
        self.label = label  # e.g. "rank 3", for log lines
        self.refused = 0  # connections dropped for failing the handshake
        self._inbox: dict[InboxKey, list[socket.socket]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._listeners: list[socket.socket] = []
        self.addresses: list[tuple[str, int]] = []
        for ip in bind_ips:
            lsock = forks.track(socket.socket(_family(ip), socket.SOCK_STREAM))
            try:
                lsock.bind((ip, 0))
            except OSError as exc:
                lsock.close()
                self.close()
                raise ConnectError(f"{label}: cannot listen on {ip}: {exc.strerror or exc}") from None
            lsock.listen(128)
            lsock.setblocking(False)
            self._listeners.append(lsock)
            self.addresses.append((ip, lsock.getsockname()[1]))
        self._pending = threading.BoundedSemaphore(MAX_PENDING_HANDSHAKES)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._accept_loop, name="ringdist-acceptor", daemon=True)
        self._thread.start()
        forks.track(self)

    def __repr__(self) -> str:
        return f"<Endpoint {self.label} {self.addresses}>"

    # ---- accepting ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for lsock in self._listeners:
            poller.register(lsock.fileno(), select.POLLIN)
        by_fd = {lsock.fileno(): lsock for lsock in self._listeners}
        while not self._closed:
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    return
                try:
                    conn, addr = by_fd[fd].accept()
                except OSError:
                    continue
                forks.track(conn)
                if not self._pending.acquire(blocking=False):
                    self._refuse(addr, "too many connections in handshake")
                    conn.close()
                    continue
                threading.Thread(target=self._authenticate, args=(conn, addr), daemon=True,
                                 name="ringdist-handshake").start()

    def _authenticate(self, conn: socket.socket, addr: tuple) -> None:
        try:
            deadline = time.monotonic() + min(self.connect_timeout, 10.0)
            try:
                hello = server_handshake(conn, self._secret, self.job, deadline)
            except (AuthError, ProtocolError, EOFError, OSError) as exc:
                self._refuse(addr, str(exc) or type(exc).__name__)
                conn.close()
                return
            key = InboxKey(hello["group"], hello["rank"], hello["kind"], hello["lane"])
            with self._cond:
                if self._closed:
                    conn.close()
                    return
                self._inbox.setdefault(key, []).append(conn)
                self._cond.notify_all()
        finally:
            self._pending.release()

    def _refuse(self, addr: tuple, why: str) -> None:
        """Count a dropped connection; log the first few, then one line per hundred (no log floods)."""
        with self._cond:
            self.refused += 1
            count = self.refused
        if count <= 10:
            log.warning("%s: refused connection from %s:%s: %s", self.label, addr[0], addr[1], why)
        elif count % 100 == 0:
            log.warning("%s: %d connections refused so far (latest from %s: %s)", self.label, count, addr[0], why)

    def take(self, key: InboxKey, deadline: float, what: str) -> socket.socket:
        """Wait for the authenticated connection filed under `key`; RingTimeoutError at deadline."""
        with self._cond:
            while True:
                queue = self._inbox.get(key)
                if queue:
                    conn = queue.pop(0)
                    if not queue:
                        del self._inbox[key]
                    conn.settimeout(None)
                    return conn
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise RingTimeoutError(f"{self.label}: {what}: no connection arrived in time")
                self._cond.wait(deadlines.wait_slice(left))

    def discard(self, group: str) -> None:
        """Close connections still waiting in the inbox for `group` (it is being closed)."""
        with self._cond:
            for key in [k for k in self._inbox if k.group == group]:
                for conn in self._inbox.pop(key):
                    conn.close()

    # ---- connecting --------------------------------------------------------------------------

    def connect(self, addresses: list[tuple[str, int]], key: InboxKey, deadline: float,
                peer: str) -> socket.socket:
        """Dial `peer` at the first of `addresses` that answers, and authenticate.

        `key` is what the peer files the connection under: (group, my rank, kind, lane).
        """
        errors: list[str] = []
        delay = 0.01
        while True:
            for ip, port in addresses:
                try:
                    sock = socket.create_connection((ip, port), timeout=max(0.01, deadlines.wait_slice(deadlines.left(deadline))))
                except OSError as exc:
                    errors.append(f"{ip}:{port}: {exc.strerror or exc}")
                    continue
                forks.track(sock)
                try:
                    hello = wire.make_hello(self.job, key.group, key.peer, key.kind, key.lane,
                                            os.urandom(wire.NONCE_SIZE))
                    client_handshake(sock, self._secret, hello, deadline, f"{peer} at {ip}:{port}")
                except (OSError, EOFError) as exc:
                    sock.close()
                    errors.append(f"{ip}:{port}: handshake: {exc}")
                    continue
                except BaseException:
                    sock.close()
                    raise
                sock.settimeout(None)
                return sock
            if time.monotonic() + delay >= deadline:
                tried = "; ".join(errors[-len(addresses):]) or "no address"
                raise ConnectError(f"{self.label}: cannot reach {peer}: {tried}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def forget_in_child(self) -> None:
        """In a forked child: this copy is closed (its sockets are closed by `forks`); the wake-up
        pipe, shared with the parent's acceptor, is closed here, never written to."""
        self._cond = threading.Condition()  # the parent's may have been held by a thread the child lacks
        self._closed = True
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for queue in self._inbox.values():
                for conn in queue:
                    conn.close()
            self._inbox.clear()
            self._cond.notify_all()
        if hasattr(self, "_wake_w"):
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=2)
            os.close(self._wake_w)
            os.close(self._wake_r)
        for lsock in self._listeners:
            lsock.close()
