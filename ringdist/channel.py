"""One authenticated TCP connection to a peer, and blocking frame I/O with deadlines.

A `Channel` owns its socket and its `wire.FrameReader`: bytes read ahead of the
current frame (the next collective's header, say) wait in the reader's staging buffer
for the next reader. Large payloads bypass the buffer (`recv_into` straight into the
output array). Its methods are where a socket's OSError becomes a PeerLostError.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from . import deadlines, wire
from .errors import PeerLostError, ProtocolError, RingTimeoutError

STAGE_SIZE = 256 * 1024


# (receive, send) buffer bytes for data connections; 0 leaves one to the kernel's autotuning.
# Measured on localhost: a 2 MiB / 1 MiB cap is 10-20% faster at 1-16 MiB than autotuning
# (which grows the receive queue to tens of MiB, so data goes cold in cache before it is read).
# init() sets it from RINGDIST_SOCKET_BUFFERS.
SOCKET_BUFFERS = (2 << 20, 1 << 20)


def configure(sock: socket.socket) -> None:
    """Socket options for a data connection: no Nagle delay, keepalive, bounded buffers."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    rcv, snd = SOCKET_BUFFERS
    if rcv:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcv)
    if snd:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, snd)


def send_blocking(sock: socket.socket, data: bytes, deadline: float) -> None:
    """sendall with an absolute deadline (socket.timeout when it passes)."""
    view = memoryview(data)
    while view:
        sock.settimeout(deadlines.socket_wait(deadline))
        try:
            sent = sock.send(view)
        except socket.timeout:
            if deadlines.passed(deadline):
                raise
            continue  # one slice of a long wait ended
        view = view[sent:]


def recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    """Exactly n bytes, or EOFError / socket.timeout."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        sock.settimeout(deadlines.socket_wait(deadline))
        try:
            k = sock.recv_into(view[got:])
        except socket.timeout:
            if deadlines.passed(deadline):
                raise
            continue  # one slice of a long wait ended
        if k == 0:
            raise EOFError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def recv_control(sock: socket.socket, deadline: float, expect: int | None = None) -> tuple[int, dict[str, Any], bytes]:
    """One control frame: (kind, decoded map, raw body). ProtocolError on anything else."""
    kind, length = wire.decode_prefix(recv_exact(sock, wire.PREFIX_SIZE, deadline))
    if kind == wire.DATA:
        raise ProtocolError("DATA frame where a control frame was expected")
    body = recv_exact(sock, length, deadline)
    fields = wire.decode_map(body)
    if expect is not None and kind != expect:
        if kind == wire.REJECT:
            raise ProtocolError(f"refused by peer: {fields.get('reason', '?')}")
        raise ProtocolError(f"expected a {wire.KIND_NAMES[expect]} frame, got {wire.KIND_NAMES[kind]}")
    return kind, fields, body


def socket_error(exc: OSError) -> str:
    """Why a connection failed, in words: a peer that went away reads the same however it left."""
    if isinstance(exc, ConnectionResetError):
        return "connection closed by peer (reset)"
    if isinstance(exc, BrokenPipeError):
        return "connection closed by peer (broken pipe)"
    return f"{type(exc).__name__}: {exc}"


class Channel:
    """An authenticated connection to `peer` (a rank of group `group`), in non-blocking mode."""

    def __init__(self, sock: socket.socket, *, me: int, peer: int, group: str, role: str, lane: int = 0):
        self.sock = sock
        self.me = me
        self.peer = peer
        self.group = group
        self.role = role  # "left", "right", "p2p-in", "p2p-out": how this rank uses it
        self.lane = lane
        try:
            host, port = sock.getpeername()[:2]
            self.address = f"{host}:{port}"
        except OSError:
            self.address = "?"
        configure(sock)
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.reader = wire.FrameReader(STAGE_SIZE)  # the frames read so far, and bytes read ahead
        self.closed = False

    def describe(self) -> str:
        return f"rank {self.peer} ({self.address}, {self.role} link of group {self.group!r})"

    def staged(self) -> int:
        return self.reader.end - self.reader.start

    def fill_stage(self, limit: int = STAGE_SIZE) -> int:
        """Read up to `limit` bytes the socket has into the reader's staging buffer; 0 if none
        is ready or there is no room.

        Raises PeerLostError on EOF or reset.
        """
        room = self.reader.room(limit)
        if not room:
            return 0
        k = self.recv_into(room)
        self.reader.end += k
        return k

    def recv_into(self, dest: memoryview, op: str = "") -> int:
        """Bytes the socket has, up to len(dest), into dest; 0 if none is ready.

        Raises PeerLostError on EOF or reset.
        """
        try:
            k = self.sock.recv_into(dest)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise self.lost(socket_error(exc), op) from None
        if k == 0:
            raise self.lost("connection closed by peer", op)
        return k

    def lost(self, why: str, op: str = "") -> PeerLostError:
        during = f" during {op}" if op else ""
        return PeerLostError(f"rank {self.me}: lost {self.describe()}{during}: {why}")

    def sendmsg(self, buffers: list, op: str = "") -> int:
        """Bytes of `buffers` the socket takes now (one sendmsg); 0 if it takes none.

        Raises PeerLostError when the connection is gone.
        """
        try:
            return self.sock.sendmsg(buffers)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise self.lost(socket_error(exc), op) from None

    def send_control_blocking(self, frame: bytes, timeout: float) -> None:
        """Send a whole small frame, waiting at most `timeout` seconds (best effort helper)."""
        import select

        view = memoryview(frame)
        deadline = deadlines.after(timeout)
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while view:
            sent = self.sendmsg([view])
            if sent:
                view = view[sent:]
                continue
            left = deadlines.left(deadline)
            if left <= 0 or (not poller.poll(deadlines.poll_ms(left)) and deadlines.passed(deadline)):
                raise RingTimeoutError(f"rank {self.me}: could not send to {self.describe()} in {timeout:.1f} s")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass
