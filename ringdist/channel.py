"""One socket: where an `OSError` becomes a `RingError` (with `posixshm`, its portable twin for shared memory).

Every socket operation ringdist makes goes through here, and so do the few other
system calls that can fail on their own (a secret file, a memory hint, a descriptor to
close): each error is translated once, into a `RingError` subclass whose message names
the address and, where the caller passes it, the peer and the operation.

- opening: `listen`, `dial`, `accept` (with `AcceptFailed` for an arrival that could not be
  taken, out of file descriptors or not), `resolve`, `datagram_addresses`, `route_source`;
- non-blocking I/O: `recv_ready`, `send_ready`;
- blocking I/O with deadlines: `send_blocking`, `recv_exact`, `recv_control` (PeerLostError,
  RingTimeoutError, ProtocolError);
- closing: `send_quietly` (a last frame), `close_quietly`, `shutdown_quietly`, `forget_fd`;
- edges that are not sockets: `read_private_file` (ConfigError), `advise_huge_pages`;
- shared memory on one machine: `listen_local`, `dial_local` (abstract Unix sockets),
  `make_segment`, `map_segment`, `unmap` (anonymous memory files), `send_fds`, `recv_fds`
  (the portable backend's own edge, POSIX shared memory and socket files, is `posixshm`).

A `Channel` is an authenticated connection to a peer rank. It owns its socket and its
`wire.FrameReader`: bytes read ahead of the current frame (the next collective's header,
say) wait in the reader's staging buffer for the next reader. Large payloads bypass the
buffer (`recv_into` straight into the output array).
"""

from __future__ import annotations

import errno
import mmap
import os

try:  # imported now: with no descriptor left, an import (and so the limit's error text) fails
    import fcntl
    import resource
    import termios
except ImportError:  # not a POSIX system
    fcntl = resource = termios = None  # type: ignore[assignment]
import select
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from . import deadlines, wire
from .errors import ConfigError, ConnectError, PeerLostError, ProtocolError, RingError, RingTimeoutError, known

STAGE_SIZE = 256 * 1024

# (receive, send) buffer bytes for data connections; 0 leaves one to the kernel's autotuning.
# Measured on localhost: a 2 MiB / 1 MiB cap is 10-20% faster at 1-16 MiB than autotuning
# (which grows the receive queue to tens of MiB, so data goes cold in cache before it is read).
DEFAULT_SOCKET_BUFFERS = (2 << 20, 1 << 20)
_socket_buffers = DEFAULT_SOCKET_BUFFERS  # what a Channel made without `buffers=` gets

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def reason(exc: BaseException) -> str:
    """An OS error in a few words: its strerror when it has one; running out of file
    descriptors says how many this process has open and its limit."""
    words = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        words += f" (this process: {fd_usage()}; raise `ulimit -n`)"
    elif isinstance(exc, OSError) and exc.errno == errno.ENFILE:
        words += " (the system's table of open files is full: see fs.file-max)"
    return words


def socket_error(exc: OSError) -> str:
    """Why a connection failed, in words: a peer that went away reads the same however it left."""
    if isinstance(exc, ConnectionResetError):
        return "connection closed by peer (reset)"
    if isinstance(exc, BrokenPipeError):
        return "connection closed by peer (broken pipe)"
    return f"{type(exc).__name__}: {exc}"


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_address(sock: socket.socket) -> str:
    """'host:port' of the other end, or '?' when the socket has none (closed, not connected, a pair)."""
    try:
        name = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return "?"


def _listening_address(sock: socket.socket, listens: list[tuple[str, int]]) -> str:
    """'host:port' where the peer that dialed `sock` listens: on the address the connection came
    from (a host with several addresses, one per network), else its first."""
    try:
        ip = sock.getpeername()[0]
    except (OSError, IndexError, TypeError):
        ip = None
    host, port = next(((h, p) for h, p in listens if h == ip), listens[0])
    return format_address(host, port)


# ---- socket options ------------------------------------------------------------------------


def configure_defaults(settings: Any) -> None:
    """The process default for data connections' buffers: `settings.socket_buffers` (RCV, SND).

    Used by a `Channel` made without `buffers=`.
    """
    global _socket_buffers
    _socket_buffers = tuple(settings.socket_buffers)


def configure(sock: socket.socket, buffers: tuple[int, int] | None = None) -> None:
    """Socket options for a data connection: no Nagle delay, keepalive, bounded buffers.

    `buffers` is (receive, send) bytes, 0 leaving one to the kernel; None: the process default.
    """
    rcv, snd = _socket_buffers if buffers is None else buffers
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if rcv:
            _set_buffer(sock, socket.SO_RCVBUF, rcv)
        if snd:
            _set_buffer(sock, socket.SO_SNDBUF, snd)
    except OSError as exc:
        raise PeerLostError(f"connection to {peer_address(sock)}: cannot set socket options: {reason(exc)}") from None


_BUFFER_FLOOR = 64 * 1024  # the least a buffer asked for is cut to before its refusal is an error


def _set_buffer(sock: socket.socket, option: int, size: int) -> None:
    """A socket buffer of `size` bytes, or the largest the system allows: Linux cuts a size over
    its limit itself; macOS refuses one over kern.ipc.maxsockbuf (about 7 MiB by default) with
    ENOBUFS, and is asked again for half as much."""
    while True:
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOBUFS, errno.EINVAL) or size <= _BUFFER_FLOOR:
                raise
            size //= 2


# ---- opening -------------------------------------------------------------------------------


def listen(ip: str, port: int, backlog: int, label: str) -> socket.socket:
    """A TCP socket listening on `ip`:`port` (0: an ephemeral port); ConnectError naming `label` and the address."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    where = ip if port == 0 else format_address(ip, port)
    try:
        lsock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectError(f"{label}: cannot listen on {where}: {reason(exc)}") from None
    try:
        if port:  # a port chosen in advance (the rendezvous's): free again while a failed run's
            # connections to it linger in TIME_WAIT (a live listener still holds it: Linux)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((ip, port))
        lsock.listen(backlog)
    except (OSError, OverflowError) as exc:
        lsock.close()
        raise ConnectError(f"{label}: cannot listen on {where}: {reason(exc)}") from None
    return lsock


def local_port(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def dial(address: tuple[str, int], timeout: float) -> socket.socket:
    """A TCP connection to `address` (blocking, with `timeout` for connecting).

    ConnectError 'host:port: why' when it cannot be made (refused, unreachable, timed out);
    its `refused` says whether nothing listened there (ECONNREFUSED).
    """
    try:
        return socket.create_connection(address, timeout=timeout)
    except OSError as exc:
        raise dial_error(f"{format_address(*address)}: {reason(exc)}", exc) from None


def dial_error(message: str, exc: OSError) -> ConnectError:
    """A failed dial as a ConnectError: its `refused` says whether nothing listened there, its
    `transient` whether dialing again may work (a full backlog, a slow accept, a reset: a flood
    of strangers)."""
    err = ConnectError(message)
    err.out_of_fds = exc.errno in (errno.EMFILE, errno.ENFILE)  # this process's limit: no use dialing again
    err.refused = isinstance(exc, (ConnectionRefusedError, FileNotFoundError))
    err.transient = isinstance(exc, (TimeoutError, BlockingIOError, ConnectionResetError, InterruptedError))
    return err


def refused_everywhere(addresses: list[tuple[str, int]], timeout: float) -> bool:
    """Whether every one of `addresses` refuses a connection now (nothing listens there); a
    connection made is closed at once without a byte sent, one that times out counts as no."""
    for address in addresses:
        try:
            sock = socket.create_connection((address[0], int(address[1])), timeout=timeout)
        except ConnectionRefusedError:
            continue
        except OSError:
            return False
        close_quietly(sock)
        return False
    return bool(addresses)


@dataclass(frozen=True)
class AcceptFailed:
    """An arrival `accept` could not take: `out_of_fds` when the process (or system) has no
    descriptor or memory left for it; otherwise it is gone (aborted) and the next may be fine."""

    reason: str
    out_of_fds: bool


def accept(lsock: socket.socket) -> Union[tuple[socket.socket, Any], AcceptFailed, None]:
    """The next arrival on a non-blocking listener as (connection, address); None when none is
    waiting; AcceptFailed when one could not be taken."""
    try:
        return lsock.accept()
    except BlockingIOError:
        return None
    except OSError as exc:
        return AcceptFailed(reason(exc), exc.errno in _OUT_OF_FDS)


def resolve(host: str, port: int, *, label: str, what: str = "host") -> str:
    """The first IP address `host` resolves to for a TCP connection (no scope id); ConfigError otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"{label}: cannot resolve {what} {host!r}: {reason(exc)}") from None
    return str(infos[0][4][0]).split("%")[0]


def datagram_addresses(host: str) -> list[tuple[int, Any]]:
    """(family, sockaddr) of each address `host` resolves to, for a UDP socket; [] when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return []
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def route_source(family: int, sockaddr: Any) -> str | None:
    """The local address the kernel would send from to `sockaddr`, or None without a route.

    Connecting a UDP socket only selects a route; no packet leaves the machine.
    """
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(sockaddr)
            return str(probe.getsockname()[0]).split("%")[0]
    except OSError:
        return None


# ---- non-blocking I/O ----------------------------------------------------------------------


def recv_ready(sock: socket.socket, n: int) -> bytes | None:
    """Up to `n` bytes a non-blocking socket has: None when none is ready, b'' at end of stream.

    PeerLostError when the connection failed (reset and the like), saying why; the caller,
    which knows who is at the other end, names it.
    """
    try:
        return sock.recv(n)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise PeerLostError(socket_error(exc)) from None


def send_ready(sock: socket.socket, data: bytes | bytearray | memoryview) -> int:
    """Send what a non-blocking socket takes now, returning how much (0 when its buffer is full).

    PeerLostError when the connection failed, as `recv_ready`.
    """
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise PeerLostError(socket_error(exc)) from None


# ---- blocking I/O with deadlines -----------------------------------------------------------


def _lost(sock: socket.socket, peer: str | None, why: str) -> PeerLostError:
    return PeerLostError(f"lost {peer or peer_address(sock)}: {why}")


def send_blocking(sock: socket.socket, data: bytes, deadline: float, *, peer: str | None = None) -> None:
    """sendall with an absolute deadline.

    RingTimeoutError when the deadline passes, PeerLostError when the connection fails;
    both name `peer` (a description of the other end; by default its address).
    """
    view = memoryview(data)
    while view:
        try:
            sock.settimeout(deadlines.socket_wait(deadline))
            sent = sock.send(view)
        except socket.timeout:
            if deadlines.passed(deadline):
                raise RingTimeoutError(f"timed out sending to {peer or peer_address(sock)}") from None
            continue  # one slice of a long wait ended
        except OSError as exc:
            raise _lost(sock, peer, socket_error(exc)) from None
        view = view[sent:]


def send_beside_reader(sock: socket.socket, data: bytes, deadline: float, *, peer: str | None = None) -> None:
    """`send_blocking` for a socket another thread is blocked reading: its timeout (shared with
    that thread) is left alone; each send is MSG_DONTWAIT, with a poll for room between."""
    view = memoryview(data)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    while True:
        try:
            view = view[sock.send(view, socket.MSG_DONTWAIT):]
        except BlockingIOError:
            pass
        except OSError as exc:
            raise _lost(sock, peer, socket_error(exc)) from None
        if not view:
            return
        if deadlines.passed(deadline):
            raise RingTimeoutError(f"timed out sending to {peer or peer_address(sock)}")
        poller.poll(max(1, int(deadlines.left(deadline) * 1000)))


REST_WAIT = 1.0  # seconds the rest of a frame begun before a deadline may take past it


def recv_exact(sock: socket.socket, n: int, deadline: float, *, peer: str | None = None) -> bytes:
    """Exactly n bytes before `deadline`, or REST_WAIT past it once some have come (a frame is
    sent whole: the rest is on its way, and a read cut there would leave the stream mid-frame).

    RingTimeoutError when the deadline passes, PeerLostError when the connection closes or
    fails first; both name `peer` (a description of the other end; by default its address).
    """
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    extended = False
    while got < n:
        try:
            sock.settimeout(deadlines.socket_wait(deadline))
            k = sock.recv_into(view[got:])
        except socket.timeout:
            if deadlines.passed(deadline):
                if got and not extended:
                    deadline, extended = deadlines.after(REST_WAIT), True
                    continue
                raise RingTimeoutError(f"timed out waiting for {peer or peer_address(sock)} "
                                       f"({got} of {n} bytes received)") from None
            continue  # one slice of a long wait ended
        except OSError as exc:
            raise _lost(sock, peer, socket_error(exc)) from None
        if k == 0:
            raise _lost(sock, peer, f"connection closed by peer after {got} of {n} bytes")
        got += k
    return bytes(buf)


def recv_control(sock: socket.socket, deadline: float, expect: int | None = None, *,
                 peer: str | None = None) -> tuple[int, dict[str, Any], bytes]:
    """One control frame: (kind, decoded map, raw body).

    ProtocolError on anything else; RingTimeoutError or PeerLostError as `recv_exact`.
    """
    kind, length = wire.decode_prefix(recv_exact(sock, wire.PREFIX_SIZE, deadline, peer=peer))
    if kind == wire.DATA:
        raise ProtocolError("DATA frame where a control frame was expected")
    body = recv_exact(sock, length, max(deadline, deadlines.after(REST_WAIT)), peer=peer)  # (begun: `recv_exact`)
    fields = wire.decode_map(body)
    if expect is not None and kind != expect:
        if kind == wire.REJECT:
            raise ProtocolError(f"refused by peer: {fields.get('reason', '?')}")
        raise ProtocolError(f"expected a {wire.KIND_NAMES[expect]} frame, got {wire.KIND_NAMES[kind]}")
    return kind, fields, body


# ---- closing -------------------------------------------------------------------------------


def close_quietly(thing: socket.socket | int) -> None:
    """Close a socket or a file descriptor; one already closed, or failing to close, is fine."""
    try:
        if isinstance(thing, int):
            os.close(thing)
        else:
            thing.close()
    except OSError:
        pass


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send a small frame without waiting (it fits an empty socket's buffer); a connection already
    gone, or a full buffer, is fine: the peer then sees the close alone."""
    try:
        sock.setblocking(False)
        sock.send(data)
    except OSError:
        pass


def closed_by_peer(socks: list[socket.socket]) -> list[socket.socket]:
    """Of connections whose peer sends nothing but, at most, a frame before its close (asks),
    those where something has come: one poll that does not wait."""
    looker = select.poll()
    by_fd: dict[int, socket.socket] = {}
    for sock in socks:
        fd = sock.fileno()
        if fd >= 0:  # (one closed here already is not looked at)
            by_fd[fd] = sock
            looker.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in looker.poll(0)]


def ended_by_peer(socks: list[socket.socket]) -> list[socket.socket]:
    """Of connections nothing here reads yet, those whose peer closed or reset them with nothing
    left unread (bytes that came first stay theirs to read): one poll that does not wait, and a
    peek at each connection with news."""
    looker = select.poll()
    by_fd: dict[int, socket.socket] = {}
    for sock in socks:
        fd = sock.fileno()
        if fd >= 0:
            by_fd[fd] = sock
            looker.register(fd, select.POLLIN | getattr(select, "POLLRDHUP", 0))
    ended = []
    for fd, _ in looker.poll(0):
        try:
            if by_fd[fd].recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                ended.append(by_fd[fd])
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset
            ended.append(by_fd[fd])
    return ended


def read_abort(sock: socket.socket, deadline: float) -> dict | None:
    """The fields of an ABORT frame the peer sends on `sock` before closing it, or None (it
    closed with nothing to say, or said nothing by `deadline`)."""
    reader = wire.FrameReader(wire.MAX_CONTROL + wire.PREFIX_SIZE)
    try:
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            room = reader.room()
            n = sock.recv_into(room)
            if n == 0:
                return None
            reader.landed(n)
            event = reader.next_event()
            if isinstance(event, wire.ControlFrame):
                return event.fields() if event.kind == wire.ABORT else None
            if event is not wire.NEED_DATA:
                return None
    except (OSError, ProtocolError, ValueError):  # gone, timed out, or not a frame: nothing learned
        return None


def shutdown_quietly(sock: socket.socket) -> None:
    """Shut down both directions (the peer sees the close now); a connection already gone is fine."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def forget_fd(poller: Any, fd: int) -> None:
    """Take `fd` out of a poll or epoll set; one not in it, or a set already closed, is fine."""
    try:
        poller.unregister(fd)
    except (OSError, ValueError, KeyError):  # ValueError: the epoll set is closed
        pass


# ---- edges that are not sockets ------------------------------------------------------------


def read_private_file(path: str, label: str) -> tuple[bytes, int]:
    """A small file's bytes and its mode bits (to warn about a secret others can read).

    ConfigError '{label}: cannot read {path}: why' when it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            return f.read(), mode
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read {path}: {reason(exc)}") from None


def advise_huge_pages(mem: mmap.mmap) -> bool:
    """Ask for transparent huge pages on an anonymous mapping; False where the kernel cannot."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        mem.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        return False
    return True


# ---- shared memory between ranks of one machine (Linux) -------------------------------------


def local_sockets() -> bool:
    """Whether this system has what the shared-memory link needs: abstract Unix sockets,
    descriptor passing and anonymous memory files (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create") and hasattr(socket, "send_fds")


def listen_local(name: str, backlog: int, label: str) -> socket.socket:
    """A Unix socket listening on `name` in the abstract namespace: nothing in the file
    system, gone with the process. ConnectError naming `label`."""
    try:
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectError(f"{label}: cannot open a local socket: {reason(exc)}") from None
    try:
        lsock.bind("\0" + name)
        lsock.listen(backlog)
    except OSError as exc:
        lsock.close()
        raise ConnectError(f"{label}: cannot listen on local socket {name}: {reason(exc)}") from None
    return lsock


def dial_local(name: str, timeout: float) -> socket.socket:
    """A connection to the abstract Unix socket `name`; ConnectError when nobody listens
    there (another machine, another network namespace)."""
    sock = None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect("\0" + name)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise dial_error(f"local socket {name}: {reason(exc)}", exc) from None
    return sock


def map_shared(fd: int, size: int) -> mmap.mmap:
    """A shared mapping of `size` bytes of `fd`. Python's mmap keeps a duplicate of the
    descriptor for the mapping's life unless told not to (`trackfd`, Python 3.13): with it,
    closing `fd` leaves no descriptor behind; before 3.13, one per mapping stays open."""
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, size, trackfd=False)  # type: ignore[call-arg]
    return mmap.mmap(fd, size)


_SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW if hasattr(fcntl, "F_SEAL_SHRINK") else 0


def make_segment(size: int, label: str) -> tuple[int, mmap.mmap]:
    """An anonymous shared memory file of `size` bytes (no name anyone could open; freed when
    the last descriptor and mapping go) and its mapping: (fd, mapping). Sealed at that size: a
    peer that maps it can trust no process shrinks it under its mapping (a SIGBUS). ConnectError
    if it cannot be made."""
    try:
        fd = os.memfd_create("ringdist", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError as exc:
        raise ConnectError(f"{label}: cannot create shared memory: {reason(exc)}") from None
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SIZE_SEALS | fcntl.F_SEAL_SEAL)
        return fd, map_shared(fd, size)
    except OSError as exc:
        os.close(fd)
        raise ConnectError(f"{label}: cannot map {size} bytes of shared memory: {reason(exc)}") from None


def map_segment(fd: int, size: int, peer: str, sealed: bool = False) -> mmap.mmap:
    """Map a peer's segment (received as `fd`) and close the descriptor: the mapping keeps
    the memory. ProtocolError when it is smaller than `size` bytes (macOS rounds POSIX shared
    memory up to its page size), or, where it must be `sealed` (a memory file, `make_segment`),
    when it could still be resized; ConnectError when it cannot be mapped."""
    try:
        actual = os.fstat(fd).st_size
        if actual < size:
            raise ProtocolError(f"{peer}: shared memory of {actual} bytes, expected {size}")
        if sealed and fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SIZE_SEALS != _SIZE_SEALS:
            raise ProtocolError(f"{peer}: shared memory that could still be resized under this rank's mapping "
                                f"(not a sealed memory file: ranks with different RINGDIST_SHM?)")
        return map_shared(fd, size)
    except OSError as exc:
        raise ConnectError(f"{peer}: cannot map shared memory: {reason(exc)}") from None
    finally:
        close_quietly(fd)


def send_fds(sock: socket.socket, fds: list[int], data: bytes, deadline: float, *, peer: str) -> None:
    """`data` (a few bytes) with descriptors `fds` attached (SCM_RIGHTS)."""
    while True:
        try:
            sock.settimeout(deadlines.socket_wait(deadline))
            sent = socket.send_fds(sock, [data], fds)
            break
        except socket.timeout:  # the peer is there but not reading: a stall, not a loss
            if deadlines.passed(deadline):
                raise RingTimeoutError(f"timed out sending shared memory to {peer}") from None
        except OSError as exc:
            raise _lost(sock, peer, f"cannot send shared memory: {socket_error(exc)}") from None
    if sent != len(data):
        raise _lost(sock, peer, f"sent {sent} of {len(data)} bytes with shared memory")


def recv_fds(sock: socket.socket, size: int, most: int, deadline: float, *, peer: str) -> tuple[bytes, list[int]]:
    """`size` bytes and the 1 to `most` descriptors that come with them; PeerLostError if the
    connection closes or none is attached, RingTimeoutError at the deadline."""
    while True:
        try:
            sock.settimeout(deadlines.socket_wait(deadline))
            data, fds, flags, _ = socket.recv_fds(sock, size, most + 2)
            break
        except socket.timeout:
            if deadlines.passed(deadline):
                raise RingTimeoutError(f"timed out waiting for shared memory from {peer}") from None
        except OSError as exc:
            raise _lost(sock, peer, socket_error(exc)) from None
    if flags & getattr(socket, "MSG_CTRUNC", 0):  # the kernel dropped descriptors this process had no room for
        for fd in fds:
            close_quietly(fd)
        raise ConnectError(f"cannot receive the shared memory of {peer}: the system dropped its descriptors "
                           f"(more than {most} sent, or this process is out of file descriptors: {fd_usage()}); "
                           f"raise `ulimit -n`, or use fewer groups at once")
    if len(data) != size or not 1 <= len(fds) <= most:
        for fd in fds:
            close_quietly(fd)
        raise _lost(sock, peer, f"no shared memory received ({len(data)} bytes, {len(fds)} descriptors)")
    return data, fds


OPEN_MAX_MACOS = 10240  # macOS's OPEN_MAX: the most a soft limit on open files may be there by default


def raise_fd_limit(want: int) -> int:
    """Raise this process's soft limit on open files towards `want`, as far as its hard limit
    lets it (a job of many ranks and groups holds a connection, and a segment, per peer and
    group); returns the soft limit now (a large number where the system sets none)."""
    if resource is None:  # not a POSIX system
        return 1 << 30
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return want
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    for limit in (target, min(target, OPEN_MAX_MACOS)):  # macOS refuses more than its kern.maxfilesperproc
        if limit <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            return limit
        except (OSError, ValueError):
            continue
    return soft


def map_private(size: int) -> mmap.mmap:
    """`size` bytes of private anonymous memory (a forked child writing into them copies them,
    as for any numpy array); MemoryError where the system has none to give (mmap's ENOMEM: an
    address-space limit, overcommit refused), as numpy's own allocations raise."""
    try:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as exc:
        if exc.errno != errno.ENOMEM:
            raise
        raise MemoryError(f"cannot map {size} bytes of memory: {exc.strerror}") from None


def untouched(size: int) -> "mmap.mmap | bytearray":
    """`size` zero bytes that take no memory until written: a connection's staging buffer is
    mostly unused (small frames), and at 64 ranks a rank holds hundreds of connections, where a
    zero-filled bytearray made each resident whole. Private: a forked child's copy is its own."""
    try:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (AttributeError, ValueError, OSError):  # no such mapping here: a plain buffer
        return bytearray(size)


def fd_room() -> int | None:
    """How many more files this process may open under its soft limit; None where the system
    does not say."""
    if resource is None:
        return None
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        return soft - (len(os.listdir("/proc/self/fd")) - 1)  # less the listing's own
    except (OSError, ValueError):
        return None


def fd_usage() -> str:
    """'N open, limit L' for this process's file descriptors (as far as the system tells: with
    none left, the count cannot be read)."""
    try:
        limit = f"limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}" if resource is not None else "limit unknown"
    except (OSError, ValueError):
        limit = "limit unknown"
    try:
        return f"{len(os.listdir('/proc/self/fd')) - 1} open, {limit}"
    except OSError:
        return limit


def unsent_bytes(sock: socket.socket) -> int | None:
    """Bytes given to the kernel for `sock` that the peer has not acknowledged yet (Linux's
    SIOCOUTQ, macOS's SO_NWRITE); None where the system does not say."""
    try:
        if _SIOCOUTQ is not None:
            return int.from_bytes(fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"), sys.byteorder, signed=True)
        if sys.platform == "darwin":
            return sock.getsockopt(socket.SOL_SOCKET, 0x1024)  # SO_NWRITE
    except OSError:
        pass
    return None


_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None) if sys.platform.startswith("linux") else None  # (the same number)


def make_pipe(label: str) -> tuple[int, int]:
    """A pipe (a thread's wake-up): (read end, write end). RingError naming `label` (the rank
    and call, or the thread) when the process or the system has no descriptor left for it."""
    try:
        return os.pipe()
    except OSError as exc:
        raise RingError(f"{label}: cannot make a wake-up pipe: {reason(exc)}") from None


def make_eventfd() -> int:
    """A non-blocking eventfd (a shared-memory link's wake-up); -1 where the system gives none."""
    try:
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    except (OSError, AttributeError):
        return -1


def ring_eventfd(fd: int) -> None:
    """Wake whoever polls `fd`; a counter already full of wake-ups, or a closed one, is fine."""
    try:
        os.eventfd_write(fd, 1)
    except OSError:
        pass


def drain_eventfd(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except OSError:  # BlockingIOError: drained already
        pass


def unmap(mem: mmap.mmap) -> None:
    """Release a mapping; one that numpy views still use is left to the garbage collector."""
    try:
        mem.close()
    except BufferError:
        pass


# ---- a connection to a peer rank -----------------------------------------------------------


E = TypeVar("E", bound=BaseException)


def about(ch: Any, exc: E, op: str = "") -> E:
    """`exc`, an error about the peer of connection `ch` (or of a stand-in naming `me`, `peer`,
    `group`), carrying what it concerns (`errors.known`)."""
    return known(exc, rank=getattr(ch, "me", None), group=getattr(ch, "group", None), op=op or None,
                 peer=getattr(ch, "peer", None), address=getattr(ch, "address", None))


def world_rank(ch: Any, rank: int, after: str = "") -> str:
    """'world rank W' (and `after`) for group rank `rank` of `ch`'s group where W differs; else ''."""
    world = world_of(ch, rank)
    return "" if world == rank else f"world rank {world}{after}"


def world_of(ch: Any, rank: int | None = None) -> int:
    """The world rank of group rank `rank` of `ch`'s group (default: `ch`'s peer); the group
    rank itself where the channel knows no world ranks."""
    rank = ch.peer if rank is None else rank
    ranks = getattr(ch, "world_ranks", None)
    return ranks[rank] if ranks and 0 <= rank < len(ranks) else rank


def peer_name(ch: Any, rank: int | None = None) -> str:
    """'rank P' for `ch`'s peer (or group rank `rank`), with '(world rank W)' where that differs
    (a sub-group)."""
    rank = ch.peer if rank is None else rank
    world = world_rank(ch, rank)
    return f"rank {rank} ({world})" if world else f"rank {rank}"


class Channel:
    """An authenticated connection to `peer` (a rank of group `group`), in non-blocking mode.

    `buffers` is the (receive, send) buffer bytes of the socket, 0 leaving one to the
    kernel; None means the process default (`configure_defaults`). `world_ranks`: each group
    rank's rank in the world, named in errors where it differs (in a sub-group). `listens`:
    the peer's addresses, for a connection it made (errors name the first).
    """

    def __init__(self, sock: socket.socket, *, me: int, peer: int, group: str, role: str, lane: int = 0,
                 buffers: tuple[int, int] | None = None, world_ranks: list[int] | None = None,
                 listens: list[tuple[str, int]] | None = None):
        self.sock = sock
        self.me = me
        self.peer = peer
        self.world_ranks = world_ranks
        self.group = group
        self.role = role  # "left", "right", "p2p-in", "p2p-out": how this rank uses it
        self.lane = lane
        # Where the peer listens, for a connection it dialed (`listens`: its addresses): the
        # other end's own port is one the kernel chose, which names no rank.
        self.address = _listening_address(sock, listens) if listens else peer_address(sock)
        configure(sock, buffers)
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.reader = wire.FrameReader(STAGE_SIZE, untouched(STAGE_SIZE))  # the frames read so far, and bytes read ahead
        self.closed = False
        # A frame left unfinished on it (a failed message's, an ABORT cut short): nothing more
        # may be written, for the peer would read it as the rest of that frame; and whether an
        # ABORT went on it (one is enough). Both set by `aborts.abort` and `aborts.tell`.
        self.cut = False
        self.aborted = False
        # The last recv found the socket empty: it returned fewer bytes than it had room for
        # (what a poll for input at that moment would have said).
        self.drained = False
        self._looker: Any = None  # a poll of this socket alone, for `gone`

    def describe(self) -> str:
        return f"rank {self.peer} ({world_rank(self, self.peer, ', ')}{self.address}, {self.role} link of group {self.group!r})"

    def staged(self) -> int:
        return self.reader.end - self.reader.start

    def fill_stage(self, limit: int = STAGE_SIZE, op: str = "") -> int:
        """Read up to `limit` bytes the socket has into the reader's staging buffer; 0 if none
        is ready or there is no room.

        Raises PeerLostError on EOF or reset (naming `op`, the call reading, if given).
        """
        reader = self.reader
        if reader.start == reader.end:  # the common case: an empty stage, used from its start
            reader.start = reader.end = 0
            room = reader.view[:limit]
        else:
            room = reader.room(limit)
            if not room:
                return 0
        k = self.recv_into(room, op)
        reader.end += k
        return k

    def recv_into(self, dest: memoryview, op: str = "") -> int:
        """Bytes the socket has, up to len(dest), into dest; 0 if none is ready.

        Raises PeerLostError on EOF or reset.
        """
        try:
            k = self.sock.recv_into(dest)
        except BlockingIOError:
            self.drained = True
            return 0
        except OSError as exc:
            raise self.lost(socket_error(exc), op) from None
        if k == 0:
            raise self.lost("connection closed by peer", op)
        self.drained = k < len(dest)
        return k

    def lost(self, why: str, op: str = "") -> PeerLostError:
        during = f" during {wire.called_as(op)}" if op else ""
        exc = PeerLostError(f"{peer_name(self, self.me)}: lost {self.describe()}{during}: {why}")
        exc.ringdist_peer = (self.group, self.peer)  # type: ignore[attr-defined]  (`Comm.why_lost`)
        return about(self, exc, op)

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
        """Send a whole small frame, waiting at most `timeout` seconds (best effort helper).

        RingTimeoutError when it does not go in time, PeerLostError when the connection fails.
        """
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
                raise about(self, RingTimeoutError(f"{peer_name(self, self.me)}: could not send to {self.describe()} "
                                                   f"in {timeout:.1f} s"))

    def gone(self) -> str | None:
        """On a connection this rank sends on: why the other end has gone (it closed or reset the
        connection); "" if bytes have come back (an ABORT, say: left for the reader); None if
        nothing has. A poll that does not wait (0.4 us where nothing has come, a fifth of a
        peek that raises BlockingIOError), then a peek if it found something."""
        looker = self._looker
        if looker is None:
            looker = self._looker = select.poll()
            looker.register(self.fd, select.POLLIN)
        if not looker.poll(0):
            return None  # nothing has come back
        try:
            if self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return ""
        except (BlockingIOError, InterruptedError):
            return None  # nothing has come back
        except OSError as exc:
            return socket_error(exc)
        return "connection closed by peer"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            close_quietly(self.sock)
