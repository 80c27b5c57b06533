"""This process's presence on the network: its listening sockets, the acceptor, and dialing out.

One `Endpoint` per process serves every group: a peer's connection names its group,
kind and lane in the handshake, and lands in the inbox under that key until the
group that expects it takes it. Strangers (garbage, wrong secret, replays) are
dropped and counted; the job goes on. Accepting and the server side of the handshake
run in one thread for every connection (`acceptor`), so idle or half-finished
connections from strangers cannot keep a real peer out; a real peer whose handshake
is cut off (the acceptor evicts under a flood) dials again until its deadline.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, NamedTuple

from . import channel, deadlines, forks, posixshm, wire
from .acceptor import Acceptor, RefusalLog
from .errors import AuthError, ConnectError, PeerLostError, RingError, RingTimeoutError, known
from .handshake import GroupEnded, HandshakeCutOff, client_handshake

log = logging.getLogger("ringdist")

HANDSHAKE_TIMEOUT = 10.0  # seconds an arrival has to prove the job secret (at most RINGDIST_CONNECT_TIMEOUT)
LISTEN_BACKLOG = 1024  # arrivals the kernel queues while the acceptor is busy
CHECK_INTERVAL = 0.005  # seconds between a waiting take's checks
# Seconds a connection from a rank that has left the job may still take to land in the inbox
# (its handshake done, the acceptor not yet through filing it) before a take gives up on it.
DEPARTED_GRACE = 0.25
# A wait for a rank's connection that lasts this long tries that rank's addresses, and again as
# often (`Endpoint._probe`); each try may take PROBE_TIMEOUT (a host that does not answer).
PROBE_AFTER = 1.0
PROBE_TIMEOUT = 0.05
ENDED_KEPT = 4096  # ended groups whose late connections an endpoint closes (`discard`): the latest
# Why a peer keeps cutting handshakes off, for the error after the last try: its log says which.
CUT_OFF_HINT = ("; its acceptor drops handshakes it cannot serve: it is out of file descriptors "
                "(raise ulimit -n) or flooded by strangers, and its log says which")
ASK_KIND = "ask"  # a connection that asks whether a group failed at the rank dialed (`ask`)
ASK_MESSAGE, ASK_LINK = 0, 1  # an ask's lane: what its wait is for (a message connection, a link)
ASKS_KEPT = 1024  # asks an endpoint keeps open to answer when a group fails here, at most
# Connections filed for a group not made here (yet) that an endpoint keeps, at most: from one
# group rank (as the dialer names itself), and in all. A peer ahead of this rank in a split dials
# it before this rank makes the group; a rank makes groups one at a time (per thread: a split
# returns once its group is made, and the next split needs this rank's part), and into each
# a peer dials at most a connection per ring lane (16 at most), its link, its shared-memory
# link and its message connection: 19. The total: every peer of a group of 4096 ranks dialing
# this rank's link, its shared memory and a message connection before this rank makes the
# group (3 x 4095, and the ring's lanes).
EARLY_PER_PEER = 256
EARLY_KEPT = 16384


def _first(addresses: list[tuple[str, int]] | None) -> tuple[str, int] | None:
    """A rank's first address, as departures are noted by."""
    return (addresses[0][0], int(addresses[0][1])) if addresses else None


class InboxKey(NamedTuple):
    group: str
    peer: int
    kind: str
    lane: int


class Endpoint:
    """Listens on this rank's addresses; accepts and authenticates peers; connects to peers."""

    def __init__(self, secret: bytes, bind_ips: list[str], *, connect_timeout: float, label: str = "",
                 local: str = "auto", socket_dir: str | None = None):
        self._secret = secret
        self.job = wire.job_id(secret)
        self.connect_timeout = connect_timeout
        self.label = label  # e.g. "rank 3", for log lines
        self._inbox: dict[InboxKey, list[socket.socket]] = {}
        self._cond = threading.Condition()
        # Ranks that have left the job, by their first address: why, and when this rank heard
        # (from the launcher's rendezvous: `control`).
        self._departed: dict[tuple[str, int], tuple[str, float]] = {}
        self._dialed: set[tuple[str, int]] = set()  # (group, rank) this rank's message connections go to
        self._linked: set[tuple[str, int]] = set()  # (group, rank) this rank's links (`links`) go to
        # Groups whose collective failed here: the ABORT sent to their peers, by group id, for
        # a peer whose link arrives after it was sent (a link opened on first use).
        self._aborted: dict[str, bytes] = {}
        # Asks kept open (`_keep_ask`), by (group, asking rank, lane): answered with the group's
        # ABORT if it fails here (`answer_asks`), closed once the connection they wait for is made.
        self._asks: dict[tuple[str, int, int], list[socket.socket]] = {}
        self._answers: dict[str, bytes] = {}  # the ABORT each group's asks are answered with
        # Groups (or a group's kind of connection) that have ended here: a connection for one
        # that arrives later is closed, not kept in the inbox for good (its dialer told why, where
        # the value says: a group closed here, `_verdict`). The latest ENDED_KEPT.
        self._ended: dict[tuple[str, str | None], str | None] = {}
        self._groups: set[str] = set()  # groups made here (`note_group`) and not ended
        # Connections in the inbox for a group not made here when they came, oldest first (with
        # where from), and how many each group rank dialed: capped (`_keep_early`).
        self._early: dict[socket.socket, tuple[InboxKey, object]] = {}
        self._early_peers: dict[int, int] = {}
        self._dropped = RefusalLog(label, verb="dropped")  # early connections let go past the caps
        self._failed = False  # a group of this process has failed (the first is told: `tell_failures_to`)
        self._on_failure: Callable[[str, tuple[int, ...]], None] | None = None  # told that first failure
        # Ranks whose connection is waited for, by their first address: when their addresses
        # are next tried (`_probe`).
        self._probes: dict[tuple[str, int], float] = {}
        self._closed = False
        self._listeners: list[socket.socket] = []
        self.local_path: str | None = None  # the "posix" backend's socket file, while listening
        self.addresses: list[tuple[str, int]] = []
        for ip in bind_ips:
            try:
                lsock = forks.track(channel.listen(ip, 0, LISTEN_BACKLOG, label))
            except ConnectError:
                self.close()
                raise
            self._listeners.append(lsock)
            self.addresses.append((ip, channel.local_port(lsock)))
        # The same handshake on a Unix socket, for the shared-memory link (`shm`): abstract
        # ("memfd" backend, Linux), or a file in a private directory ("posix": `posixshm`).
        self.local_backend = local_backend(local)
        self._socket_base = posixshm.base_directory(socket_dir)
        self.local_name = self.local_name_of(self.addresses[0]) if self.addresses else None
        if self.local_name is not None and self.local_backend is not None:
            try:
                if self.local_backend == "posix":
                    path = posixshm.socket_path(self._socket_base, self.local_name)
                    self._listeners.append(forks.track(posixshm.listen(path, LISTEN_BACKLOG, label)))
                    self.local_path = path
                else:
                    self._listeners.append(forks.track(channel.listen_local(self.local_name, LISTEN_BACKLOG,
                                                                            label)))
            except ConnectError:
                self.local_name = None  # the name is taken: peers find a stranger there and use TCP
        if self.local_name is None:
            self.local_backend = None
        self._acceptor = Acceptor(self._listeners, secret, self.job, on_ready=self._file, label=label,
                                  handshake_timeout=min(connect_timeout, HANDSHAKE_TIMEOUT), verdict=self._verdict)
        self._acceptor.start()
        forks.track(self)

    def __repr__(self) -> str:
        return f"<Endpoint {self.label} {self.addresses}>"

    # ---- accepting ---------------------------------------------------------------------------

    @property
    def refused(self) -> int:
        """Connections dropped before or during the handshake (strangers, garbage, evictions)."""
        return self._acceptor.refusals.count

    def _verdict(self, hello: dict) -> str | None:
        """Why the group a connection being authenticated is for was closed here (its WELCOME says
        so: the dialer's send raises, and nothing is written to be lost), or None. Not for asks,
        nor for a group that failed here (`_file` answers those)."""
        with self._cond:
            if hello["kind"] == ASK_KIND or hello["group"] in self._aborted:
                return None
            return self._ended.get((hello["group"], None))

    def _file(self, conn: socket.socket, hello: dict, addr: tuple) -> None:
        """An authenticated connection (from the acceptor's thread): into the inbox under its key."""
        key = InboxKey(hello["group"], hello["rank"], hello["kind"], hello["lane"])
        with self._cond:
            if self._closed:
                conn.close()
                return
            frame = self._aborted.get(key.group)
            if key.kind == ASK_KIND:
                frame = frame or self._answers.get(key.group)
                if (key.group, key.peer) in (self._dialed if key.lane == ASK_MESSAGE else self._linked):
                    # A wait for this rank's message connection (or link) asks: it was made, and
                    # carries the messages sent before any failure, then its ABORT. Keep waiting.
                    conn.close()
                    return
            if frame is not None:  # the group failed here: the dialer reads why, then the end
                channel.send_quietly(conn, frame)
                conn.close()
                return
            if (key.group, None) in self._ended or (key.group, key.kind) in self._ended:
                conn.close()  # its group was closed, or never made, here: the dialer sees it closed
                return
            if key.kind == ASK_KIND:  # asked whether the group failed here: not yet; told if it does
                self._keep_ask(key, conn)
                return
            self._inbox.setdefault(key, []).append(conn)
            dropped = self._keep_early(key, conn, addr) if key.group not in self._groups else []
            self._cond.notify_all()
        for sock in dropped:
            sock.close()

    def _keep_early(self, key: InboxKey, conn: socket.socket, addr: object) -> list[socket.socket]:
        """Count a connection filed for a group not made here (under the lock). Past EARLY_PER_PEER
        from its group rank, or EARLY_KEPT in all, those whose dialer has closed them with nothing
        sent are let go first, then the oldest beyond the cap, logged at a bounded rate: a member
        dialing made-up groups cannot take every file descriptor. What to close is returned."""
        self._early[conn] = (key, addr)
        self._early_peers[key.peer] = self._early_peers.get(key.peer, 0) + 1
        crowded = self._early_peers[key.peer] > EARLY_PER_PEER
        if not crowded and len(self._early) <= EARLY_KEPT:
            return []
        mine = [sock for sock, (k, _) in self._early.items() if not crowded or k.peer == key.peer]
        dropped = channel.ended_by_peer(mine)
        for sock in dropped:
            self._unfile(sock)
        while self._early_peers.get(key.peer, 0) > EARLY_PER_PEER or len(self._early) > EARLY_KEPT:
            over = self._early_peers.get(key.peer, 0) > EARLY_PER_PEER
            oldest = next(sock for sock, (k, _) in self._early.items() if not over or k.peer == key.peer)
            (group, peer, kind, lane), where = self._unfile(oldest)
            cap = f"{EARLY_PER_PEER} from that rank" if over else f"{EARLY_KEPT} in all"
            self._dropped.refuse(where, f"unclaimed {kind} connection (lane {lane}) from rank {peer} of group "
                                        f"{group!r}, a group not made here: more than {cap} wait")
            dropped.append(oldest)
        return dropped

    def _unfile(self, sock: socket.socket) -> tuple[InboxKey, object]:
        """Take an early connection out of the inbox and the count (under the lock): its key and
        where from."""
        key, where = self._early.pop(sock)
        self._unearly(key)
        queue = self._inbox[key]
        queue.remove(sock)
        if not queue:
            del self._inbox[key]
        return key, where

    def _unearly(self, key: InboxKey) -> None:
        """One early connection fewer from `key`'s group rank (under the lock)."""
        left = self._early_peers[key.peer] - 1
        if left:
            self._early_peers[key.peer] = left
        else:
            del self._early_peers[key.peer]

    def _claimed(self, conns: list[socket.socket]) -> None:
        """Connections taken out of the inbox (under the lock): no longer early, if they were."""
        for sock in conns:
            early = self._early.pop(sock, None)
            if early is not None:
                self._unearly(early[0])

    def note_group(self, group: str) -> None:
        """Group `group` is being made here: the connections filed for it are its own from now on,
        not counted against the caps on those for groups not made here."""
        with self._cond:
            self._groups.add(group)
            self._claimed(self._filed_for(group))

    def _filed_for(self, group: str) -> list[socket.socket]:
        """The connections waiting in the inbox for `group` (under the lock)."""
        return [sock for key, queue in self._inbox.items() if key.group == group for sock in queue]

    def _keep_ask(self, key: InboxKey, conn: socket.socket) -> None:
        """Keep an ask open (under the lock) to answer it if its group fails here; asks whose
        asker has closed them (its connection came, or its wait ended) are let go first. Past
        ASKS_KEPT it is closed: the asker asks again later."""
        kept = [sock for socks in self._asks.values() for sock in socks]
        if kept:
            gone = set(channel.closed_by_peer(kept))
            for where in list(self._asks):
                self._asks[where] = [sock for sock in self._asks[where] if sock not in gone]
                if not self._asks[where]:
                    del self._asks[where]
            for sock in gone:
                sock.close()
            if len(kept) - len(gone) >= ASKS_KEPT:
                conn.close()
                return
        self._asks.setdefault((key.group, key.peer, key.lane), []).append(conn)

    def answer_asks(self, group: str, frame: bytes) -> None:
        """Group `group` failed here with the ABORT `frame`: the asks kept for it get the frame and
        are closed, and asks that come later get it at once."""
        with self._cond:
            self._answers[group] = frame
            if len(self._answers) > ENDED_KEPT:  # (with the "keep waiting" it kept once closed: `discard`)
                oldest = next(iter(self._answers))
                del self._answers[oldest]
                self._dialed = _without(self._dialed, oldest)
            asks = self._pop_asks(lambda where: where[0] == group)
        for sock in asks:
            channel.send_quietly(sock, frame)
            sock.close()

    def _pop_group_asks(self, group: str, answering: bool) -> tuple[list[socket.socket], list[socket.socket]]:
        """The asks kept for `group`, taken out (under the lock): those to close with nothing, and
        (`answering`: it was closed here) those to answer, whose asker's connection (a message's,
        or a link) this rank never made."""
        quiet: list[socket.socket] = []
        answered: list[socket.socket] = []
        for (_, peer, lane) in [where for where in self._asks if where[0] == group]:
            made = (group, peer) in (self._dialed if lane == ASK_MESSAGE else self._linked)
            (answered if answering and not made else quiet).extend(self._asks.pop((group, peer, lane)))
        return quiet, answered

    def _pop_asks(self, which: Callable[[tuple[str, int, int]], bool]) -> list[socket.socket]:
        """The kept asks of the (group, rank, lane)s `which` says, taken out (under the lock)."""
        return [sock for where in [w for w in self._asks if which(w)] for sock in self._asks.pop(where)]

    def _pop_filed(self, which: Callable[[InboxKey], bool]) -> list[socket.socket]:
        """The inbox's connections whose keys `which` says, taken out (under the lock). Loops
        under the lock are functions of their own (`handle._join`: Python 3.13 and Ctrl-C)."""
        filed = [conn for key in [k for k in self._inbox if which(k)] for conn in self._inbox.pop(key)]
        self._claimed(filed)
        return filed

    def _filed_peers(self, group: str, kind: str) -> list[int]:
        return [key.peer for key in self._inbox if key.group == group and key.kind == kind]

    def note_dialing(self, group: str, peer: int) -> None:
        """This rank is making its message connection to rank `peer` of `group`: `_file`'s answer
        to that rank's asks is "keep waiting" (the connection carries the messages sent before
        any failure, then its ABORT), and the asks kept are closed so. Marked before the dial, so
        that no failure's answer reaches an ask while a message issued before it is on its way."""
        self._release(group, peer, ASK_MESSAGE)

    def note_not_dialed(self, group: str, peer: int) -> None:
        """The dial `note_dialing` marked failed: no connection is coming."""
        with self._cond:
            self._dialed.discard((group, peer))

    def note_linked(self, group: str, peer: int) -> None:
        """This rank dialed its link to rank `peer` of `group`: that rank's asks for it are told
        "keep waiting" (the link carries any ABORT), and those kept are closed so."""
        self._release(group, peer, ASK_LINK)

    def _release(self, group: str, peer: int, lane: int) -> None:
        with self._cond:
            (self._dialed if lane == ASK_MESSAGE else self._linked).add((group, peer))
            asks = self._pop_asks(lambda where: where == (group, peer, lane))
        for sock in asks:
            sock.close()

    def note_departed(self, address: tuple[str, int], why: str) -> None:
        """The rank whose first address is `address` has left the job: waits for its connection end."""
        with self._cond:
            self._departed.setdefault((address[0], int(address[1])), (why, time.monotonic()))
            self._cond.notify_all()

    def note_aborted(self, group: str, frame: bytes, why: str = "", messages: bool = False,
                     waited: tuple[int, ...] = ()) -> None:
        """Group `group`'s collective failed here with the ABORT `frame`: a peer's connection for
        that group arriving from now on, or waiting in the inbox untaken (a message connection
        aside, unless `messages`: the group was never made here), gets the frame and is closed,
        instead of waiting for a take that will never come (the dialer raises the ABORT, not a
        lost peer, nor its timeout while it reads for data). The first failure of the process
        (`why`: 'MismatchError: rank 3: ...'; `waited`: for a timeout, the world ranks it waited
        for) goes to the listener set with `tell_failures_to`."""
        with self._cond:
            self._aborted[group] = frame
            if len(self._aborted) > ENDED_KEPT:
                del self._aborted[next(iter(self._aborted))]
            # Its links that came but were not taken yet: their dialer may be reading one for
            # this call's data. (A message connection's sender is told by `Comm._tell_pairs`.)
            filed = self._pop_filed(lambda k: k.group == group and (messages or k.kind != "p2p"))
        for conn in filed:
            channel.send_quietly(conn, frame)
            conn.close()
        self.answer_asks(group, frame)
        self.note_failure(why, waited)

    def note_failure(self, why: str, waited: tuple[int, ...] = ()) -> None:
        """A failure here (`why`): the first of the process goes to the listener set with
        `tell_failures_to` (`note_aborted` calls it; a failure whose ABORT waits to be sent, too)."""
        with self._cond:
            first = not self._failed
            self._failed = True
            listener = self._on_failure
        if first and listener is not None:
            listener(why, waited)

    def tell_failures_to(self, listener: Callable[[str, tuple[int, ...]], None]) -> None:
        """Call `listener(text, waited)` with this process's first failure (`note_aborted`), once."""
        with self._cond:
            self._on_failure = listener

    def departed(self, addresses: list[tuple[str, int]] | None) -> str | None:
        """Why the rank listening at `addresses` left the job, if this rank has heard that it did."""
        gone = self._departure(addresses)
        return gone[0] if gone is not None else None

    def _departure(self, addresses: list[tuple[str, int]] | None) -> tuple[str, float] | None:
        """(why, when this rank heard) if the rank listening at `addresses` has left the job."""
        if not addresses or not self._departed:
            return None
        ip, port = addresses[0]
        return self._departed.get((ip, int(port)))

    def _gone(self, source: list[tuple[str, int]] | None, now: float) -> str | float | None:
        """With the lock held and nothing in the inbox from the rank listening at `source`: why
        it left the job, if that was DEPARTED_GRACE ago or more; the seconds of grace left if it
        left less long ago; None if it has not left (as far as this rank knows)."""
        gone = self._departure(source)
        if gone is None:
            return None
        why, heard = gone
        return why if now - heard >= DEPARTED_GRACE else heard + DEPARTED_GRACE - now

    def take(self, key: InboxKey, deadline: float, what: str,
             check: Callable[[], None] | None = None,
             source: list[tuple[str, int]] | None = None, me: int | None = None,
             none_came: str = "no connection arrived in time") -> socket.socket:
        """Wait for the authenticated connection filed under `key`; RingTimeoutError at deadline.

        `check` (if given) runs every CHECK_INTERVAL seconds of the wait, outside the lock:
        it may raise to give up (an ABORT found on another connection, say). `source`: the
        addresses of the rank expected to connect; once it is known to have left the job (and
        DEPARTED_GRACE has passed with nothing from it), PeerLostError, after a last `check` (an
        ABORT from another rank names the first failure, which that rank's departure may follow).
        `me`: this rank's rank in the group taking it, which errors name (default: the world's);
        `none_came`: what its timeout says happened. Its errors carry the group and the rank
        waited for (`errors.known`)."""
        try:
            return self._take(key, deadline, what, check, source, me, none_came)
        except RingError as exc:
            known(exc, rank=me, group=key.group)
            if getattr(exc, "ringdist_origin", None) is None:  # (an ABORT's carries its origin's peer)
                known(exc, peer=key.peer, address=channel.format_address(*source[0]) if source else None)
            raise

    def _take(self, key: InboxKey, deadline: float, what: str, check: Callable[[], None] | None,
              source: list[tuple[str, int]] | None, me: int | None, none_came: str) -> socket.socket:
        label = self.label if me is None else f"rank {me}"
        while True:
            with self._cond:
                queue = self._inbox.get(key)
                if queue:
                    conn = queue.pop(0)
                    if not queue:
                        del self._inbox[key]
                    self._claimed([conn])
                    conn.settimeout(None)
                    self._probes.pop(_first(source), None)
                    return conn
                now = time.monotonic()
                left = deadline - now
                if self._closed:
                    raise RingError(f"{label}: {what}: this rank's endpoint closed (the process is exiting)")
                if left <= 0:
                    raise RingTimeoutError(f"{label}: {what}: {none_came}{self._starved()}")
                wait = deadlines.thread_wait(left)
                gone = self._gone(source, now)
                if isinstance(gone, float):  # heard of its departure: the grace, then PeerLostError
                    wait = min(wait, gone)
                elif source:  # its addresses are tried every PROBE_AFTER (`_probe`)
                    wait = min(wait, PROBE_AFTER)
                if not isinstance(gone, str):
                    wait = min(wait, deadlines.SLICE) if check is None else min(wait, CHECK_INTERVAL)
                    began = time.monotonic()
                    self._cond.wait(wait)
                    deadline += deadlines.stopped_for(began, wait)  # (the process was stopped: not counted)
            if check is not None:
                check()
            if isinstance(gone, str):
                raise PeerLostError(f"{label}: {what}: {gone}")
            if gone is None:
                self._probe(source)

    def _starved(self) -> str:
        """Why connections may not have arrived: this process had no file descriptor to take
        one with (in the last minute), or ''."""
        seen = getattr(self, "_acceptor", None) and self._acceptor.out_of_fds
        if not seen or time.monotonic() - seen[0] > 60:
            return ""
        if "ulimit -n" in seen[1]:  # `channel.reason` said it
            return f"; this rank could not accept connections: {seen[1]}"
        return (f"; this rank could not accept connections: {seen[1]} (out of file descriptors: "
                f"{channel.fd_usage()}; raise `ulimit -n`)")

    def _probe(self, source: list[tuple[str, int]] | None) -> None:
        """While a wait for the connection of the rank listening at `source` goes on: after
        PROBE_AFTER seconds, and then every PROBE_AFTER, try its addresses; every one refusing
        means it has left the job (its process ended, or it closed its endpoint), which is then
        noted as a departure (`note_departed`). Under the launcher the rendezvous says so
        sooner; without one (a scheduler's variables) nothing else would."""
        first = _first(source)
        if first is None:
            return
        now = time.monotonic()
        with self._cond:
            due = self._probes.setdefault(first, now + PROBE_AFTER)
            if now < due:
                return
            self._probes[first] = now + PROBE_AFTER
        if channel.refused_everywhere(source, PROBE_TIMEOUT):  # type: ignore[arg-type]
            self.note_departed(first, "nothing listens at its address any more: it has left the job")

    def take_nowait(self, key: InboxKey, what: str = "", source: list[tuple[str, int]] | None = None,
                    me: int | None = None) -> socket.socket | None:
        """The authenticated connection filed under `key` if it has arrived, else None (or, as
        `take`, PeerLostError when `source` has left the job; `me` as there)."""
        with self._cond:
            queue = self._inbox.get(key)
            if not queue:
                gone = self._gone(source, time.monotonic())
                if isinstance(gone, str):
                    raise PeerLostError(f"{self.label if me is None else f'rank {me}'}: {what}: {gone}")
                queue = None
            else:
                conn = queue.pop(0)
                if not queue:
                    del self._inbox[key]
                self._claimed([conn])
                self._probes.pop(_first(source), None)
        if queue is None:
            if gone is None:
                self._probe(source)
            return None
        conn.settimeout(None)
        return conn

    def filed(self, group: str, kind: str) -> list[int]:
        """The peers whose connection of `kind` for `group` waits in the inbox, not yet taken."""
        with self._cond:
            return self._filed_peers(group, kind)

    def ask(self, addresses: list[tuple[str, int]], group: str, me: int, peer: str,
            timeout: float, lane: int = ASK_MESSAGE) -> socket.socket | None:
        """Ask the rank listening at `addresses` whether `group` failed there (`asking`), for a
        wait for its message connection (`lane` ASK_MESSAGE) or its link (ASK_LINK): the
        connection, on which it writes its ABORT (now, or when the group fails there) or which
        it closes with nothing (the connection waited for was made; or it does not keep the ask:
        ask again later); None if it could not be reached within `timeout`."""
        try:
            return self.connect(addresses, InboxKey(group, me, ASK_KIND, lane), time.monotonic() + timeout, peer)
        except RingError:
            return None

    def discard(self, group: str, kind: str | None = None, closed_by: int | None = None) -> None:
        """Close connections waiting in the inbox for `group` (only those of `kind`, if given),
        and those that come later: the group is closed, or could not be made here (group ids
        are not reused), or gave up that kind of connection (shared memory's, after a vote for TCP).
        `closed_by`: this rank's rank in the group, which its user closed (or dropped): a rank that
        connects to it later is told so in the handshake (`_verdict`), and asks are answered with
        it (a PeerLostError, as ABORT), unless the group failed here first; asks from the ranks
        this rank dialed are still told to wait (their connections carry what was sent)."""
        asks: list[socket.socket] = []
        answered: list[socket.socket] = []  # kept asks a closed group's answer goes on
        answer = why = None
        with self._cond:
            if closed_by is not None and kind is None:
                why = f"rank {closed_by} closed group {group!r} (Group.close, or the group was dropped)"
                if group not in self._answers and group not in self._aborted:
                    self._answers[group] = wire.encode_map(wire.ABORT, {
                        "error": "PeerLostError", "message": why, "origin": closed_by, "seq": None, "closed": True})
                    if len(self._answers) > ENDED_KEPT:
                        oldest = next(iter(self._answers))
                        del self._answers[oldest]
                        self._dialed = _without(self._dialed, oldest)
            self._ended[(group, kind)] = why
            if kind is None:
                self._groups.discard(group)
            if kind is None and group not in self._answers:
                # (a failed group's asks are still answered "keep waiting" where it dialed)
                self._dialed = _without(self._dialed, group)
            if kind is None and why is None:  # (closed: asks about the links it made still wait for them)
                self._linked = _without(self._linked, group)
            if kind is None:
                answer = self._answers.get(group) if why is not None else None
                asks, answered = self._pop_group_asks(group, answer is not None)
            if len(self._ended) > ENDED_KEPT:
                del self._ended[next(iter(self._ended))]
            filed = self._pop_filed(lambda k: k.group == group and kind in (None, k.kind))
        for sock in answered:
            channel.send_quietly(sock, answer)  # type: ignore[arg-type]
            sock.close()
        for sock in asks + filed:
            sock.close()

    # ---- connecting --------------------------------------------------------------------------

    def connect(self, addresses: list[tuple[str, int]], key: InboxKey, deadline: float,
                peer: str, *, up: bool = False, check: Callable[[], None] | None = None,
                me: int | None = None, peer_rank: int | None = None, limit: str | None = None) -> socket.socket:
        """Dial `peer` at the first of `addresses` that answers, and authenticate.

        `key` is what the peer files the connection under: (group, my rank, kind, lane).
        A refused connection, a reset, or a handshake cut off before WELCOME (the peer's
        acceptor evicts under a flood of strangers) is tried again until `deadline`; a
        peer that refuses the handshake (wrong secret, another job) is an AuthError at once.
        With `up` (the peer's endpoint listened once: a rank's addresses are in the rendezvous's
        table only once it listens there), every address refusing means it has left the job:
        PeerLostError at once, not a wait until `deadline`; so does a peer known to have left
        the job (`note_departed`). `check` is called between tries (an ABORT seen meanwhile).
        `me`: this rank's rank in the group dialing, which errors name (default: the world's);
        `peer_rank`: the peer's, which its errors carry with the group and its address. `limit`:
        what set `deadline`, as errors name it (default: RINGDIST_CONNECT_TIMEOUT).
        """
        try:
            return self._connect(addresses, key, deadline, peer, up, check, me, limit)
        except RingError as exc:
            known(exc, rank=me, group=key.group)
            if getattr(exc, "ringdist_origin", None) is None:  # (an ABORT's carries its origin's peer)
                known(exc, peer=peer_rank, address=channel.format_address(*addresses[0]) if addresses else None)
            raise

    def _connect(self, addresses: list[tuple[str, int]], key: InboxKey, deadline: float, peer: str, up: bool,
                 check: Callable[[], None] | None, me: int | None, limit: str | None = None) -> socket.socket:
        label = self.label if me is None else f"rank {me}"
        limit = limit or f"RINGDIST_CONNECT_TIMEOUT={self.connect_timeout:g} s"
        errors: list[str] = []
        attempts = 0
        delay = 0.01
        while True:
            gone = self._departure(addresses)
            if gone is not None:
                if check is not None:
                    check()  # an ABORT already here names the first failure
                raise PeerLostError(f"{label}: lost {peer}: {gone[0]}")
            refused = 0
            for ip, port in addresses:
                attempts += 1
                try:
                    sock = channel.dial((ip, port), max(0.01, deadlines.wait_slice(deadlines.left(deadline))))
                except ConnectError as exc:
                    if getattr(exc, "out_of_fds", False):  # this rank's own limit: dialing again will not help
                        raise ConnectError(f"{label}: cannot dial {peer}: {exc}") from None
                    errors.append(str(exc))
                    refused += getattr(exc, "refused", False)
                    continue
                try:
                    self._authenticate(sock, key, deadline, f"{peer} at {ip}:{port}")
                except GroupEnded as exc:  # nothing was sent: raised as the peer's departure is
                    raise PeerLostError(f"{label}: lost {peer}: {exc}") from None
                except HandshakeCutOff:
                    errors.append(f"{ip}:{port}: handshake cut off (connection closed before WELCOME)")
                    continue
                except RingTimeoutError:
                    errors.append(f"{ip}:{port}: handshake: timed out")
                    continue
                except AuthError as exc:  # (named for the rank that dialed)
                    raise AuthError(f"{label}: {exc}") from None
                return sock
            if up and refused == len(addresses):
                if check is not None:
                    check()
                raise PeerLostError(f"{label}: lost {peer}: nothing listens at its address any more "
                                    f"({'; '.join(errors[-len(addresses):])}): it has left the job")
            if time.monotonic() + delay >= deadline:
                tried = "; ".join(errors[-len(addresses):]) or "no address"
                hint = CUT_OFF_HINT if tried.endswith("(connection closed before WELCOME)") else ""
                if "handshake: timed out" in tried:  # the kernel took the connection; that rank's process never answered
                    hint += (f" ({limit} sets the limit; a process stopped, or out of file descriptors, takes no "
                             f"connection: its log says the latter)")
                elif "timed out" in tried:
                    hint += f" ({limit} sets the limit)"
                raise ConnectError(f"{label}: cannot reach {peer}: {tried} ({attempts} attempts){hint}")
            if check is not None:
                check()
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _authenticate(self, sock: socket.socket, key: InboxKey, deadline: float, who: str) -> None:
        """The handshake on a connection just dialed, filed at the peer under `key`; on any
        failure the connection is closed and the error raised."""
        forks.track(sock)
        try:
            hello = wire.make_hello(self.job, key.group, key.peer, key.kind, key.lane, os.urandom(wire.NONCE_SIZE))
            client_handshake(sock, self._secret, hello, deadline, who)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)

    def local_name_of(self, address: tuple[str, int]) -> str:
        """The abstract Unix socket name of the rank whose first address is `address`: keyed
        by the job secret, found only by ranks of the job on the same machine."""
        return wire.local_socket_name(self._secret, address)

    def connect_local(self, address: tuple[str, int], key: InboxKey, deadline: float,
                      peer: str) -> socket.socket | None:
        """Dial the Unix socket of the rank whose first address is `address` and authenticate;
        None when nobody listens there (another machine or network namespace), the peer there
        refuses the handshake (a stranger on the name) or the dial fails for good (not allowed,
        say): the caller uses TCP. A handshake cut off (the peer's acceptor evicts under a flood
        of strangers) or a dial that did not get through in time is tried again until
        `deadline`, as `connect` does; given up so, it is logged."""
        name = self.local_name_of(address)
        if self.local_backend == "posix":
            name = posixshm.socket_path(self._socket_base, name)
        delay = 0.01
        last = ""
        while True:
            timeout = max(0.01, deadlines.wait_slice(deadlines.left(deadline)))
            try:
                if self.local_backend == "posix":
                    sock = posixshm.dial(name, timeout)
                else:
                    sock = channel.dial_local(name, timeout)
            except ConnectError as exc:
                if not getattr(exc, "transient", False):
                    if not getattr(exc, "refused", False):
                        log.warning("%s: %s; the group uses TCP", self.label, exc)
                    return None
                last = str(exc)
                sock = None
            if sock is not None:
                try:
                    self._authenticate(sock, key, deadline, f"{peer} on local socket {name}")
                except (HandshakeCutOff, RingTimeoutError) as exc:
                    last = f"{peer} on local socket {name}: {exc}"
                except RingError:
                    return None
                else:
                    return sock
            if time.monotonic() + delay >= deadline:
                log.warning("%s: %s (tried until the deadline); the group uses TCP", self.label, last)
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def forget_in_child(self) -> None:
        """In a forked child: this copy is closed (its sockets are closed by `forks`), and so is
        the acceptor's, whose thread the child does not have."""
        self._cond = threading.Condition()  # the parent's may have been held by a thread the child lacks
        self._closed = True
        self.local_path = None  # the parent's socket file: not the child's to remove
        if hasattr(self, "_acceptor"):
            self._acceptor.forget_in_child()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for queue in [*self._inbox.values(), *self._asks.values()]:
                for conn in queue:
                    conn.close()
            self._inbox.clear()
            self._early.clear()
            self._early_peers.clear()
            self._asks.clear()
            self._cond.notify_all()
        self._dropped.flush()
        if hasattr(self, "_acceptor"):
            self._acceptor.close()
        for lsock in self._listeners:
            lsock.close()
        if self.local_path is not None:
            posixshm.remove(self.local_path)
            self.local_path = None


def local_backend(wanted: str) -> str | None:
    """The shared-memory link's backend for `wanted` (RINGDIST_SHM): "memfd" (anonymous memory
    files and abstract sockets, Linux) when "auto" finds it, else "posix" (`posixshm`) where the
    system has it; None when neither is there (the link is never built)."""
    if wanted == "auto" and channel.local_sockets():
        return "memfd"
    return "posix" if posixshm.available() else None


def _without(marks: set, group: str) -> set:
    """`marks` ((group, ...) tuples) but `group`'s (`Endpoint._pop_filed` on loops under a lock)."""
    return {mark for mark in marks if mark[0] != group}
