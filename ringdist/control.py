"""A rank's control connection to the rendezvous: registration, then a watch for the launcher's
exit and for ranks that leave the job (`Endpoint.note_departed`)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from . import channel, deadlines, rendezvous, wire
from .channel import recv_control, send_blocking
from .endpoint import Endpoint, InboxKey
from .errors import ConfigError, ConnectError, PeerLostError, ProtocolError, RingError, RingTimeoutError, known
from .jobenv import JobEnv
from .settings import Settings, algo_key


def _carried(cap: int) -> int | None:
    """RINGDIST_MAX_OBJECT_BYTES as the table carries it: None past what msgpack encodes (2^63 - 1:
    no object reaches it anyway; the value may be any finite number, `1e20` for "no limit")."""
    return cap if cap < 1 << 63 else None


class ControlLink:
    """This rank's connection to the rendezvous: registration, then a watch for the launcher's exit."""

    def __init__(self, endpoint: Endpoint, job: JobEnv, settings: Settings):
        self.job = job
        self.endpoint = endpoint
        self.settings = settings
        self.closing = False
        self._send_lock = threading.Lock()  # a failure may be told from any thread
        host, port = job.rendezvous
        self.where = rendezvous.format_address(host, port)
        # Under a scheduler rank 0 may start after the others: keep trying until the init deadline.
        wait = settings.connect_timeout if job.launched else settings.init_timeout
        try:
            self.sock = endpoint.connect([job.rendezvous],
                                         InboxKey(rendezvous.RENDEZVOUS_GROUP, job.rank, "register", 0),
                                         deadlines.after(wait), "the rendezvous")
        except ConnectError as exc:
            if job.launched:
                raise
            raise ConnectError(
                f"rank {job.rank} ({job.source}): init() gave up after {wait:g} s: no rendezvous answered at "
                f"{self.where}, where rank 0 serves it (is rank 0 running on that host? "
                f"RINGDIST_INIT_TIMEOUT sets the limit): {exc}") from None

    def register(self) -> list[dict]:
        job = self.job
        deadline = deadlines.after(self.settings.init_timeout)
        addresses = [[ip, port] for ip, port in self.endpoint.addresses]
        peer = f"the rendezvous at {self.where}"
        sent = False
        try:
            send_blocking(self.sock, rendezvous.encode(
                {"type": "register", "rank": job.rank, "size": job.size, "addresses": addresses,
                 "host": job.host, "pid": os.getpid(), "agree": self._agree(),
                 "object_cap": _carried(self.settings.max_object_bytes)}), deadline, peer=peer)
            sent = True
            _, msg, _ = recv_control(self.sock, deadline, expect=wire.CONTROL, peer=peer)
        except RingTimeoutError:
            if not sent:  # (its frame may be cut: no query may follow it on this connection)
                raise RingTimeoutError(f"rank {job.rank}: init() timed out after {self.settings.init_timeout:g} s "
                                       f"before its registration reached the rendezvous {self.where} "
                                       "(RINGDIST_INIT_TIMEOUT sets the limit)") from None
            # Told to the rendezvous before this rank leaves: the ranks whose deadline falls a moment
            # later hear of its departure with this (the ranks missing), not as a cause in itself.
            why, missing = self._timeout_message()
            self._tell_failure(f"RingTimeoutError: {why}", missing)  # (the launcher's summary names them)
            raise RingTimeoutError(why) from None
        except PeerLostError as exc:
            raise PeerLostError(f"rank {job.rank}: registering: {exc}") from None
        if msg.get("type") == "error":
            raise ConfigError(f"rank {job.rank}: the rendezvous at {self.where} refused: {msg.get('message')}")
        if msg.get("type") == "left":
            why = f"rank {job.rank}: init(): rank {msg.get('rank')} {_why(msg)} before the job started"
            self._tell_failure(f"PeerLostError: {why}")  # (the launcher's summary: failed in turn)
            raise PeerLostError(why)
        if msg.get("type") != "table" or not isinstance(msg.get("members"), list):
            raise ProtocolError(f"rank {job.rank}: unexpected message from the rendezvous: {msg.get('type')!r}")
        members = msg["members"]
        if len(members) != job.size:
            raise ProtocolError(f"rank {job.rank}: rendezvous table has {len(members)} ranks, expected {job.size}")
        self._check_members(members)
        self._check_agree(members)
        self.members = members
        if job.launched:
            threading.Thread(target=self._watch, name="ringdist-control", daemon=True).start()
            self.endpoint.tell_failures_to(self._tell_failure)
        return members

    def _check_members(self, members: list) -> None:
        """ProtocolError naming the world rank whose table entry no rank can use: an entry that
        is not a map, or addresses that are not 1 to MAX_ADDRESSES [host, port] pairs (the
        rendezvous refuses those; this rank checks what it is given all the same)."""
        for r, member in enumerate(members):
            why = (rendezvous.address_problem(member.get("addresses")) if isinstance(member, dict)
                   else f"the entry is {type(member).__name__}, not a map")
            if why is not None:
                raise known(ProtocolError(f"rank {self.job.rank}: the rendezvous's table gives world rank {r} "
                                          f"addresses no rank can dial: {why}"),
                            rank=self.job.rank, group="world", op="init", peer=r)

    def _tell_failure(self, why: str, waited: tuple[int, ...] = ()) -> None:
        """This process's first failure, for the rendezvous to give with its departure (the
        peers that lose it then read what it raised), and for a timeout the world ranks it
        waited for (the launcher's summary names a rank that stalled). Best effort: a second at most."""
        if self.closing:
            return
        message = rendezvous.encode({"type": "failed", "why": why[:rendezvous.FAILURE_CHARS],
                                     "waited": list(waited[:rendezvous.WAITED_KEPT])})
        try:
            with self._send_lock:  # the watch thread is in a recv on this socket: its timeout stays
                channel.send_beside_reader(self.sock, message, deadlines.after(1.0))
        except RingError:
            pass  # the launcher is gone: the watch thread ends the process

    def _agree(self) -> dict[str, Any]:
        """Settings every rank must share before any connection is made (their variables' names):
        the lanes each pair opens, the algorithms forced (a forced algorithm that cannot run
        is then a ConfigError on every rank alike, `tuning.choose`), and what the tuning table
        chooses by (a rank choosing another algorithm raised only at the first call of a size
        between the two limits, maybe hours in)."""
        s = self.settings
        return {"RINGDIST_LANES": s.lanes, "RINGDIST_ALGO": algo_key(s.algo),
                "RINGDIST_DIRECT_MAX": "unset" if s.direct_max is None else str(s.direct_max),  # (may pass 2^64)
                "RINGDIST_DIRECTIONS": s.directions or "unset"}

    def _check_agree(self, members: list[dict]) -> None:
        """ConfigError on every rank alike when ranks' `_agree` settings differ (each sees the whole table)."""
        mine = self._agree()
        for name in sorted(mine):
            values = [m.get("agree", {}).get(name) if isinstance(m.get("agree"), dict) else None for m in members]
            if len(set(map(repr, values))) > 1:
                by = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
                raise ConfigError(f"rank {self.job.rank}: {name} differs between ranks ({by}); set it the same "
                                  f"on every rank")

    def _timeout_message(self) -> tuple[str, tuple[int, ...]]:
        """init()'s timeout, naming the ranks that never registered (the rendezvous asked), and those ranks."""
        waited = f"rank {self.job.rank}: init() timed out after {self.settings.init_timeout:g} s at the rendezvous {self.where}"
        try:
            deadline = time.monotonic() + 2
            send_blocking(self.sock, rendezvous.encode({"type": "query"}), deadline)
            msg: dict[str, Any] = {}
            while msg.get("type") != "missing":  # (past notices of ranks that left meanwhile)
                _, msg, _ = recv_control(self.sock, deadline, expect=wire.CONTROL)
            ranks = msg.get("ranks", [])
            hosts = msg.get("hosts", [])
            listing = ", ".join(f"{r} (host {h})" for r, h in zip(ranks, hosts))
            refused = msg.get("refused")
            seen = (f"; the rendezvous refused {refused} connection{'s' * (refused != 1)} meanwhile, the latest from "
                    f"{msg.get('last_refused')} (a rank started with another RINGDIST_SECRET is refused as a stranger)"
                    if isinstance(refused, int) and refused > 0 else "")
            missing = tuple(r for r in ranks if type(r) is int)
            return f"{waited}: ranks that never registered: {listing}{seen} (RINGDIST_INIT_TIMEOUT sets the limit)", missing
        except (RingError, TypeError):  # TypeError: a reply without lists
            return f"{waited} (RINGDIST_INIT_TIMEOUT sets the limit)", ()

    def _watch(self) -> None:
        """Note each rank that leaves the job; exit when the launcher's end of the control
        connection closes (no orphans)."""
        members = self.members
        try:
            while True:
                _, msg, _ = recv_control(self.sock, float("inf"), expect=wire.CONTROL)
                rank = msg.get("rank")
                if msg.get("type") == "left" and isinstance(rank, int) and 0 <= rank < len(members):
                    try:
                        ip, port = members[rank]["addresses"][0]
                        self.endpoint.note_departed((ip, int(port)), f"world rank {rank} {_why(msg)}")
                    except (KeyError, IndexError, TypeError, ValueError):
                        pass  # a table entry without an address: `world` refuses that table anyway
        except RingError:
            pass  # closed (a frame that is not the protocol's: the launcher's side is gone either way)
        if self.closing:
            return
        sys.stderr.write(f"ringdist: rank {self.job.rank}: the launcher's control connection to "
                         f"{self.where} closed; exiting\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        os._exit(143)

    def close(self) -> None:
        self.closing = True
        channel.shutdown_quietly(self.sock)
        self.sock.close()


def _why(msg: dict) -> str:
    """A `left` message's reason, as words after "rank N"."""
    why = msg.get("why")
    return f"left the job: {why}" if isinstance(why, str) else "left the job"
