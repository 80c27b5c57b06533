"""The rendezvous: where ranks register their addresses and learn everyone else's.

`RendezvousServer` runs in the launcher (or, under a cluster scheduler, in rank 0).
Each rank connects, passes the job's HMAC handshake, registers `(rank, addresses)`,
and once all `world_size` ranks are in, receives the whole table. The connection
then stays open as the rank's control connection: when the launcher goes away it
closes, and the rank exits instead of lingering as an orphan. The other way round,
the server notes when each rank's control connection closes (`disconnected`):
a rank closes it when its process exits, and first thing at interpreter exit, so
the order of these times is the order in which ranks left - what the launcher
needs to name the rank that failed first when its peers fail a moment later.
The order must not depend on which of the server's threads the OS happens to run
first, so on Linux the closes are read from one epoll set watching every control
connection for the peer's FIN (EPOLLRDHUP), which reports them in arrival order;
elsewhere each connection's thread notes the time it saw its connection end.

Arrivals are accepted and authenticated by an `Acceptor` (one thread for all, a cap
on handshakes in progress, rate-limited refusal logs); only a connection that proved
the job secret gets a thread, to read its registration and queries.

Under the launcher (`announce_departures`), every rank still connected hears when another
leaves the job (its control connection closes, or the launcher sees its process end before it
registered): a rank waiting for a connection from that rank, or dialing it, then fails at once
(`Endpoint.note_departed`) instead of waiting out its timeout. A rank that registers later hears
of earlier departures at once; a rank whose table is due gets it before any notice, so every
rank checks the same table (`ConfigError`s alike). Under a scheduler every rank closes its control
connection once it has the table: nothing is announced.

Messages are CONTROL frames (msgpack maps) with a "type":
  rank -> server: register {rank, size, addresses, host, pid, agree, object_cap}; query {}
  server -> rank: table {members: [{rank, addresses, host, pid, agree, object_cap}]}; missing {ranks, hosts}; error {message};
                  left {rank, why}
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import select
import socket
import threading
import time
from typing import Any

from . import channel, wire
from .acceptor import MAX_PENDING_HANDSHAKES, Acceptor
from .channel import format_address, recv_control, send_blocking
from .errors import PeerLostError, ProtocolError, RingTimeoutError

log = logging.getLogger("ringdist")

RENDEZVOUS_GROUP = "rendezvous"
LISTEN_BACKLOG = 1024
CLOSED = "its connection to the launcher closed (its process ended)"  # why a rank left, from the rendezvous's side
FAILURE_CHARS = 500  # of a rank's first failure, given with its departure
WAITED_KEPT = 64  # world ranks a rank's timeout may name as those it waited for
EXIT_READ_WAIT = 0.25  # seconds an exit seen waits for the rank's connection to be read to its end
MAX_ADDRESSES = 64  # addresses one rank may register (RINGDIST_BIND lists one per network)
MAX_HOST_CHARS = 255  # of a registered host: a DNS name's limit (an IPv6 literal with a zone fits)
HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")  # what a host name may be spelled with


def parse_address(text: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def address_problem(addresses: object) -> str | None:
    """What is wrong with a rank's registered addresses, or None when they are a list of 1 to
    MAX_ADDRESSES [host, port] pairs: the host an IP literal or a host name (at most
    MAX_HOST_CHARS), the port an integer from 1 to 65535."""
    if not isinstance(addresses, list) or not addresses:
        return f"addresses must be a non-empty list of [host, port] pairs, got {_shown(addresses)}"
    if len(addresses) > MAX_ADDRESSES:
        return f"addresses has {len(addresses)} entries, more than the {MAX_ADDRESSES} a rank may register"
    for i, pair in enumerate(addresses):
        why = _pair_problem(pair)
        if why is not None:
            return f"addresses[{i}] {why}"
    return None


def _pair_problem(pair: object) -> str | None:
    """What is wrong with one registered [host, port] pair, or None."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return f"is {_shown(pair)}, not a [host, port] pair"
    host, port = pair
    if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_CHARS or not _host_like(host):
        return f"host is {_shown(host)}, not an IP address or host name (at most {MAX_HOST_CHARS} characters)"
    if type(port) is not int or not 0 < port < 65536:
        return f"port is {_shown(port)}, not an integer from 1 to 65535"
    return None


def _host_like(host: str) -> bool:
    """Whether `host` is spelled as an IP literal (an IPv6 one may carry a %zone) or a host name."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        return HOST_NAME.fullmatch(host) is not None


def _shown(value: object) -> str:
    """`value` for an error message: its repr, cut short (a registration is the sender's to choose)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def encode(fields: dict[str, Any]) -> bytes:
    return wire.encode_map(wire.CONTROL, fields)


class RendezvousServer:
    """Collects every rank's addresses and hands out the table; keeps control connections."""

    def __init__(self, secret: str, world_size: int, host: str = "127.0.0.1", port: int = 0,
                 rank_hosts: list[str] | None = None, handshake_timeout: float = 10.0,
                 announce_departures: bool = False):
        self._secret = secret.encode()
        self._job = wire.job_id(self._secret)
        self.world_size = world_size
        self.host = host
        self.port = port
        self.rank_hosts = rank_hosts
        self.handshake_timeout = handshake_timeout
        self.address = ""
        self._members: dict[int, dict[str, Any]] = {}
        self._conns: dict[int, socket.socket] = {}
        self._left: dict[int, float] = {}  # rank -> time.monotonic() its control connection closed
        self.announce_departures = announce_departures
        self._notices: dict[int, dict[str, Any]] = {}  # rank -> the `left` notice of its departure
        self._whys: dict[int, str] = {}  # rank -> why it left (the launcher's word on its exit, once it has one)
        self._order: list[int] = []  # ranks in the order they left (connection closed, or departure told)
        self._clean: set[int] = set()  # ranks the launcher saw exit with code 0
        self._ordered: set[int] = set()  # the ranks in `_order`
        self._raised: dict[int, str] = {}  # rank -> its first failure, as it told it ('MismatchError: ...')
        self._waited: dict[int, tuple[int, ...]] = {}  # rank -> the ranks that failure (a timeout) waited for
        self._scan = 0  # `_order` before this index: ranks that exited cleanly
        self._table: dict[str, Any] | None = None  # once every rank has registered
        self._tabled: set[int] = set()  # ranks sent the table
        self._held: dict[int, list[dict[str, Any]]] = {}  # notices for a rank whose table is still due
        self._departures = select.epoll() if hasattr(select, "epoll") else None  # Linux
        self._fd_rank: dict[int, int] = {}  # control connections in _departures
        self._send_locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()
        self._conn_gone = threading.Condition(self._lock)  # a control connection left `_conns`
        self._delivered = threading.Event()  # the table went out to every rank
        self._cannot_start: str | None = None  # a registration no job can form with (see `_register`)
        self._closed = False
        self._listener: socket.socket | None = None
        self._acceptor: Acceptor | None = None

    def start(self) -> None:
        """Listen and serve; ConnectError naming the address when it cannot listen there."""
        lsock = channel.listen(self.host, self.port, max(LISTEN_BACKLOG, self.world_size), "rendezvous")
        self._listener = lsock
        self.address = format_address(self.host, channel.local_port(lsock))
        self._acceptor = Acceptor([lsock], self._secret, self._job, on_ready=self._admit, label="rendezvous",
                                  handshake_timeout=self.handshake_timeout,
                                  max_pending=max(MAX_PENDING_HANDSHAKES, self.world_size))
        self._acceptor.start()

    @property
    def refused(self) -> int:
        """Connections dropped before or during the handshake (strangers, garbage, evictions)."""
        return self._acceptor.refusals.count if self._acceptor is not None else 0

    def missing(self) -> list[int]:
        with self._lock:
            return [r for r in range(self.world_size) if r not in self._members]

    def _admit(self, conn: socket.socket, hello: dict[str, Any], addr: tuple) -> None:
        """An authenticated connection (from the acceptor's thread): a thread of its own from now on."""
        if hello["group"] != RENDEZVOUS_GROUP:
            raise ProtocolError(f"connection for group {hello['group']!r} at the rendezvous")
        threading.Thread(target=self._serve, args=(conn, addr), daemon=True,
                         name="ringdist-rendezvous-conn").start()

    def _serve(self, conn: socket.socket, addr: tuple) -> None:
        rank = None
        try:
            deadline = time.monotonic() + self.handshake_timeout
            _, msg, _ = recv_control(conn, deadline, expect=wire.CONTROL)
            rank = self._register(conn, msg)
            conn.settimeout(None)
            while True:  # control connection: answer queries until the rank goes away
                _, msg, _ = recv_control(conn, float("inf"), expect=wire.CONTROL)
                if msg.get("type") == "query":
                    self._send(rank, {"type": "missing", **self._missing_report()})
                elif msg.get("type") == "failed" and isinstance(msg.get("why"), str):
                    waited = msg.get("waited")
                    if not isinstance(waited, list) or not all(type(r) is int for r in waited):
                        waited = []  # (a rank of an older ringdist tells none)
                    with self._lock:
                        if rank not in self._raised:
                            self._raised[rank] = msg["why"][:FAILURE_CHARS]
                            self._waited[rank] = tuple(r for r in waited[:WAITED_KEPT] if 0 <= r < self.world_size)
        except ProtocolError as exc:
            log.warning("rendezvous: refused rank connection from %s: %s", addr[0], exc)
        except (PeerLostError, RingTimeoutError):
            pass
        finally:
            with self._lock:
                ours = rank is not None and self._conns.get(rank) is conn
                if ours:
                    self._note_departures()
                    if not self._closed and rank not in self._left:  # the rank's doing, not close()'s
                        self._record_left(rank)
                    self._unwatch(conn)
                    del self._conns[rank]
                    self._conn_gone.notify_all()
            conn.close()
            if ours and not self._closed:
                self.rank_left(rank, CLOSED)

    def rank_exited(self, rank: int, why: str, clean: bool) -> None:
        """The launcher saw `rank`'s process end (`clean`: with code 0): `rank_left`, and its
        word on the exit kept for the notices of later departures, which name the first rank
        to leave unless it exited cleanly."""
        with self._lock:  # what its connection still holds is read first (a failure it told)
            self._conn_gone.wait_for(lambda: rank not in self._conns, EXIT_READ_WAIT)
            if clean:
                self._clean.add(rank)
            self._whys[rank] = why
        self.rank_left(rank, why)

    def rank_left(self, rank: int, why: str) -> None:
        """Tell every rank still connected that `rank` has left the job (once per rank; only
        with `announce_departures`)."""
        if not self.announce_departures:
            return
        with self._lock:
            if rank in self._notices or self._closed:
                return
            self._whys.setdefault(rank, why)
            self._gone(rank)
            why += self._raised_by(rank) + self._first_left(rank)
            message = {"type": "left", "rank": rank, "why": why}
            self._notices[rank] = message
            others = [r for r in self._conns if r != rank]
        for r in others:
            self._notify(r, message)

    def _gone(self, rank: int) -> None:
        """Note `rank` in the order of departures, if it is not there yet (lock held)."""
        if rank not in self._ordered:
            self._ordered.add(rank)
            self._order.append(rank)

    def _first_left(self, rank: int) -> str:
        """', after world rank 2 left first (why)' when another rank left the job before `rank`
        and did not exit cleanly (code 0, whatever it caught before): the first failure is
        often the cause of the later ones (lock held). Amortized O(1): the clean exits at the
        front of the order are skipped once."""
        self._note_departures()
        order, i = self._order, self._scan
        while i < len(order) and order[i] in self._clean:
            i += 1
        self._scan = i
        if i == len(order) or order[i] == rank:
            return ""
        first = order[i]
        why = (self._whys.get(first) or "") + self._raised_by(first)
        return f", after world rank {first} left first" + (f" ({why.lstrip('; ')})" if why else "")

    def _raised_by(self, rank: int) -> str:
        """'; it had raised MismatchError: ...' if `rank` told its first failure (lock held)."""
        raised = self._raised.get(rank)
        return f"; it had raised {raised}" if raised else ""

    def _notify(self, rank: int, message: dict[str, Any]) -> None:
        """Send a notice to `rank`, after its table if that is due (held until `_send_table`)."""
        lock = self._send_locks.get(rank)
        if lock is None:
            return
        with lock:
            if self._table is not None and rank not in self._tabled:
                self._held.setdefault(rank, []).append(message)
                return
            self._send_now(rank, message)

    def _send_table(self, rank: int) -> None:
        lock = self._send_locks.get(rank)
        if lock is None:
            return
        with lock:
            assert self._table is not None
            self._send_now(rank, self._table)
            self._tabled.add(rank)
            for message in self._held.pop(rank, []):
                self._send_now(rank, message)

    def registered(self, rank: int) -> bool:
        """Whether `rank` has registered (so its control connection's close will be recorded)."""
        with self._lock:
            return rank in self._members

    def disconnected(self) -> dict[int, float]:
        """When (`time.monotonic()`) each rank whose control connection has closed saw it close."""
        with self._lock:
            self._note_departures()
            return dict(self._left)

    def told(self) -> dict[int, str]:
        """The first failure each rank told before it left, if it told one ('PeerLostError: ...')."""
        with self._lock:
            return dict(self._raised)

    def waited(self) -> dict[int, tuple[int, ...]]:
        """For each rank whose told failure was a timeout waiting for peers: their world ranks."""
        with self._lock:
            return {rank: ranks for rank, ranks in self._waited.items() if ranks}

    def _note_departures(self) -> None:
        """Record the control connections whose peer has closed, in the order they closed (lock held)."""
        if self._departures is None or self._closed:
            return
        for fd, _ in self._departures.poll(0):
            rank = self._fd_rank.pop(fd, None)
            self._departures.unregister(fd)
            if rank is not None and rank not in self._left:
                self._record_left(rank)

    def _record_left(self, rank: int) -> None:
        """Note `rank` as gone now, strictly after every rank noted before (lock held)."""
        latest = max(self._left.values(), default=-math.inf)
        self._left[rank] = max(time.monotonic(), math.nextafter(latest, math.inf))
        self._whys.setdefault(rank, CLOSED)
        self._gone(rank)

    def _watch(self, rank: int, conn: socket.socket) -> None:
        """Add a registered rank's control connection to the departures set (lock held)."""
        if self._departures is not None and not self._closed:
            self._departures.register(conn.fileno(), select.EPOLLRDHUP)
            self._fd_rank[conn.fileno()] = rank

    def _unwatch(self, conn: socket.socket) -> None:
        """Take a control connection out of the departures set before it is closed (lock held)."""
        fd = conn.fileno()
        if self._departures is not None and self._fd_rank.pop(fd, None) is not None:
            channel.forget_fd(self._departures, fd)

    def _missing_report(self) -> dict[str, Any]:
        ranks = self.missing()
        hosts = [self.rank_hosts[r] if self.rank_hosts and r < len(self.rank_hosts) else "?" for r in ranks]
        refusals = self._acceptor.refusals if self._acceptor is not None else None
        if refusals is None or not refusals.count:
            return {"ranks": ranks, "hosts": hosts}
        return {"ranks": ranks, "hosts": hosts, "refused": refusals.count, "last_refused": refusals.last}

    def _register(self, conn: socket.socket, msg: dict[str, Any]) -> int:
        def refuse(message: str) -> ProtocolError:
            try:
                send_blocking(conn, encode({"type": "error", "message": message}), time.monotonic() + 2)
            except (PeerLostError, RingTimeoutError):
                pass
            return ProtocolError(message)

        def cannot_start(message: str) -> ProtocolError:
            # A rank of this job (it knows the secret) that no world of this size can take: two of
            # one rank, or ranks counting different worlds. The ranks waiting for the table would
            # wait out RINGDIST_INIT_TIMEOUT for a rank that never comes: they are told now, as
            # is every rank that registers from now on.
            with self._lock:
                if self._table is None and self._cannot_start is None:
                    self._cannot_start = message
                waiting = [r for r in self._conns if r not in self._tabled] if self._table is None else []
            for r in waiting:
                self._send(r, {"type": "error", "message": f"the job cannot start: {message}"})
            return refuse(message)

        if msg.get("type") != "register":
            raise refuse(f"expected a register message, got {msg.get('type')!r}")
        if self._cannot_start is not None:
            raise refuse(f"the job cannot start: {self._cannot_start}")
        rank, size = msg.get("rank"), msg.get("size")
        if size != self.world_size:
            raise cannot_start(f"rank {rank} says the world has {size} ranks; this rendezvous serves a world of "
                               f"{self.world_size}")
        if not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise cannot_start(f"rank {rank!r} is out of range for a world of {self.world_size}")
        addresses = msg.get("addresses")
        why = address_problem(addresses)
        if why is not None:  # a table with it is no use to any rank: every rank is told, as for a bad rank
            raise cannot_start(f"rank {rank} registered addresses no rank can dial: {why}")
        with self._lock:
            first = self._members.get(rank)
            if first is None:
                self._members[rank] = {"rank": rank, "addresses": addresses, "host": msg.get("host", "?"),
                                       "pid": msg.get("pid", 0), "agree": msg.get("agree", {}),
                                       "object_cap": msg.get("object_cap")}
                self._conns[rank] = conn
                self._watch(rank, conn)
                self._send_locks[rank] = threading.Lock()
                done = len(self._members) == self.world_size
                if done:
                    self._table = {"type": "table", "members": [self._members[r] for r in range(self.world_size)]}
                earlier = [] if done else list(self._notices.values())  # the job cannot start: say why now
        if first is not None:
            raise cannot_start(f"rank {rank} registered twice (first from pid {first.get('pid')}, then from pid "
                               f"{msg.get('pid')}): each process needs its own rank")
        for message in earlier:
            self._notify(rank, message)
        if done:
            for r in range(self.world_size):
                self._send_table(r)
            self._delivered.set()
        return rank

    def _send(self, rank: int, fields: dict[str, Any]) -> None:
        lock = self._send_locks.get(rank)
        if lock is None:
            return
        with lock:
            self._send_now(rank, fields)

    def _send_now(self, rank: int, fields: dict[str, Any]) -> None:
        """Send to `rank` (its send lock held); a rank gone or not reading is skipped."""
        conn = self._conns.get(rank)
        if conn is None:
            return
        try:
            send_blocking(conn, encode(fields), time.monotonic() + 10)
        except (PeerLostError, RingTimeoutError):
            pass

    def wait_delivered(self, timeout: float) -> bool:
        """Wait until every rank has been sent the table (before closing a rendezvous nobody watches)."""
        return self._delivered.wait(timeout)

    def abandon(self, why: str) -> None:
        """The rank serving this rendezvous failed before the job started (`why`): the ranks waiting
        for the table are told so before it closes (they read its connection closing, and blamed it
        on a crash); a rank that registers from now on is refused with it."""
        with self._lock:
            if self._table is not None:
                return
            if self._cannot_start is None:
                self._cannot_start = why
            waiting = [r for r in self._conns if r not in self._tabled]
        for r in waiting:
            self._send(r, {"type": "error", "message": f"the job cannot start: {why}"})

    def finish_delivery(self, timeout: float) -> None:
        """Where every rank has registered, wait (up to `timeout`) for the table to reach them all:
        a rank hosting the rendezvous that fails in init() must not cut the others off mid-delivery."""
        if self._table is not None:
            self._delivered.wait(timeout)

    def close(self) -> None:
        """Stop serving and close every control connection (ranks still running then exit)."""
        if self._closed:
            return
        self._closed = True
        if self._acceptor is not None:
            self._acceptor.close()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = list(self._conns.values())
            if self._departures is not None:
                self._departures.close()
        for conn in conns:
            channel.shutdown_quietly(conn)
