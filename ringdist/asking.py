"""Asking a rank whether a group failed there, while waiting for a connection it makes.

A rank waiting for a peer's connection (a receive for the peer's first message to it, or a
collective's link the peer dials on first use) reads nothing from that peer, and a failure
there went to the connections the peer had, not to this one. So the wait asks the peer
(`Asker`): after ASK_AFTER it opens a small authenticated connection of kind "ask"
(`Endpoint.ask`; its lane says which kind of connection the wait is for). The peer
- closes it with nothing if it has begun to make the connection waited for (keep waiting:
  that connection carries the messages sent before any failure, then the ABORT);
- else writes its ABORT on it at once if the group has failed there, or a PeerLostError's, marked
  `closed`, if the group was closed there (`Endpoint.discard`): a receive from that rank raises
  it; an any-source receive counts that rank as one that will not send;
- else keeps it open (`Endpoint._keep_ask`) and writes its ABORT on it when the group fails
  there, or closes it once it makes the connection.

So after one ask the waiting rank hears of a failure as soon as the peer has it. An ask closed
with nothing (or not kept: the peer keeps at most ASKS_KEPT) is
made again later, at doubling intervals up to ASK_MOST. The ask's connection is made on a
thread of its own, so the wait goes on meanwhile (the progress thread serves other messages);
`look` takes the answer, reading it once it has begun to come (at most ASK_TIMEOUT).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Iterable

from . import channel
from .endpoint import ASK_MESSAGE, Endpoint

ASK_AFTER = 0.5  # seconds a wait goes before its first ask (a connection most often comes well before)
ASK_MOST = 2.0  # seconds between asks, at most, where an ask was closed with nothing
ASK_TIMEOUT = 0.2  # seconds an ask may take to connect, and to read an answer that has begun to come


class Asker:
    """A wait's asks to rank `peer` (its `addresses`) whether `group` failed there."""

    def __init__(self, endpoint: Endpoint, addresses: list[tuple[str, int]], group: str, me: int, peer: str,
                 lane: int = ASK_MESSAGE, first: float = ASK_AFTER):
        self._endpoint, self._addresses, self._group, self._me, self._peer = endpoint, addresses, group, me, peer
        self._lane = lane  # what the wait is for (`Endpoint.ask`)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None  # the ask the peer keeps, once made
        self._asking = False  # a thread is making it
        self._closed = False
        self._interval = ASK_AFTER
        self._due = time.monotonic() + first  # (the first ask)

    def look(self) -> dict[str, Any] | None:
        """The fields of the ABORT the peer has answered with, once it has; else None (asking
        when an ask is due). Called by the waiting thread alone."""
        with self._lock:
            sock, asking = self._sock, self._asking
            if sock is None and not asking and time.monotonic() >= self._due and not self._closed:
                self._asking = True
                try:
                    threading.Thread(target=self._ask, name=f"ringdist-ask {self._peer}", daemon=True).start()
                except RuntimeError:  # no thread to be had now (a limit; the interpreter exiting): later
                    self._asking = False
                    self._later()
        if sock is None or not channel.closed_by_peer([sock]):
            return None
        told = channel.read_abort(sock, time.monotonic() + ASK_TIMEOUT)
        with self._lock:
            self._sock = None
            self._later()
        sock.close()
        return told

    def _ask(self) -> None:
        sock = None
        try:
            sock = self._endpoint.ask(self._addresses, self._group, self._me, self._peer, ASK_TIMEOUT, self._lane)
        finally:
            self._made(sock)

    def _made(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._asking = False
            if sock is not None and not self._closed:
                self._sock, sock = sock, None
            else:
                self._later()  # not reached (or this wait is over): again later
        if sock is not None:
            sock.close()

    def _later(self) -> None:
        """The next ask, after the interval, which doubles up to ASK_MOST (under the lock)."""
        self._due = time.monotonic() + self._interval
        self._interval = min(self._interval * 2, ASK_MOST)

    def close(self) -> None:
        """The wait is over: the ask kept, or being made, is closed (the peer lets it go)."""
        with self._lock:
            self._closed = True
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class Askers:
    """A wait's asks to several ranks: an any-source receive's, to each sender whose connection
    has not come (`make(rank)` makes one rank's `Asker`). Its first asks go after ASK_MOST: a
    receive from any of 63 ranks, most of which may never send, asks all of those."""

    def __init__(self, make: Callable[[int], Asker]):
        self._make = make
        self._by_rank: dict[int, Asker] = {}

    def look(self, ranks: Iterable[int]) -> tuple[int, dict[str, Any]] | None:
        """(rank, the fields of its ABORT) for the first of `ranks` that has answered so; asks
        those of `ranks` not asked yet (each `Asker` when due), and stops asking the others."""
        ranks = list(ranks)
        for gone in [r for r in self._by_rank if r not in ranks]:  # its connection came
            self._by_rank.pop(gone).close()
        for r in ranks:
            asker = self._by_rank.get(r)
            if asker is None:
                asker = self._by_rank[r] = self._make(r)
            told = asker.look()
            if told is not None:
                return r, told
        return None

    def close(self) -> None:
        """The wait is over (or paused): every ask is closed; a later `look` asks anew."""
        for asker in self._by_rank.values():
            asker.close()
        self._by_rank.clear()
