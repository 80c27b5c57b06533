"""This rank's connection to each peer it talks to in a group, opened the first time it is needed.

Ring neighbours already share a connection (the ring's lane 0, used both ways; of a pair
of ranks' two ring connections, the one the lower rank dialed). Any other pair has one
connection, which the lower rank dials and the higher rank accepts, the first time a
collective of either needs it: the dialer never waits on its peer's collective (the
peer's acceptor thread authenticates it and files it in the endpoint's inbox under
(group, rank, "mesh", 0)), so the two sides may come to their first use in either order.
The accepting side waits for it as for the peer's data: within the collective's timeout,
watching the group's other connections meanwhile (`Comm.link`: an ABORT, or a header
saying a peer is in another call). A recursive-doubling or
tree algorithm thus costs a rank O(log N) connections, whatever N; the group's creation
opens none beyond the ring's.
"""

from __future__ import annotations

import select
from typing import Any, Callable

from . import deadlines
from .channel import Channel, peer_name
from .endpoint import Endpoint, InboxKey
from .ring import RingLinks

KIND = "mesh"  # the inbox kind of a pair's own connection


class Links:
    """`peers[p]`: this rank's two-way channel to rank p, for each p it has talked to (and the
    ring neighbours); `own`: the ones opened here; `poller`: every peer's fd, for reading."""

    def __init__(self, endpoint: Endpoint, ring: RingLinks, addresses: list[list[tuple[str, int]]]):
        self.endpoint = endpoint
        self.group, self.rank, self.size = ring.group, ring.rank, ring.size
        self.world_ranks = ring.world_ranks
        self.addresses = addresses
        self.peers: dict[int, Channel] = {}
        self.own: list[Channel] = []
        self.poller = select.poll()
        rank, size = self.rank, self.size
        right, left = (rank + 1) % size, (rank - 1) % size
        if right != left:
            self._file(right, ring.right[0])
            self._file(left, ring.left[0])
        else:  # two ranks: both ends must pick the same one of the pair's two ring connections
            self._file(right, ring.right[0] if rank < right else ring.left[0])

    def _file(self, p: int, ch: Channel) -> None:
        self.peers[p] = ch
        self.poller.register(ch.fd, select.POLLIN)

    def link(self, p: int, connect_deadline: float, accept_deadline: float,
             check: Callable[[], None] | None = None) -> Channel:
        """The channel to rank p, opened now if this is the pair's first use of it: dialed
        (by `connect_deadline`; a peer whose address refuses is gone) if this rank is the lower,
        else taken from the inbox (by `accept_deadline`), calling `check` every few
        milliseconds meanwhile."""
        ch = self.peers.get(p)
        if ch is not None:
            return ch
        if self.rank < p:  # its endpoint listened when the group was made: refused now, it is gone
            # Within the call's own timeout too: a stalled peer's handshake held the dialer past it.
            sock = self.endpoint.connect(self.addresses[p], InboxKey(self.group, self.rank, KIND, 0),
                                         min(connect_deadline, accept_deadline),
                                         f"{peer_name(self, p)} of group {self.group!r}",
                                         up=True, check=check, me=self.rank, peer_rank=p)
            self.endpoint.note_linked(self.group, p)  # p's kept asks for this link (`asking`) are let go
        else:
            sock = self.endpoint.take(InboxKey(self.group, p, KIND, 0), accept_deadline,
                                      f"group {self.group!r}: waiting for {peer_name(self, p)} to connect", check=check,
                                      source=self.addresses[p], me=self.rank)
        ch = Channel(sock, me=self.rank, peer=p, group=self.group, role=KIND, world_ranks=self.world_ranks,
                     listens=self.addresses[p] if self.rank > p else None)
        self.own.append(ch)
        self._file(p, ch)
        return ch

    def open_all(self, timeout: float, watch: "Callable[[int], Any] | None" = None) -> None:
        """Open a link to every rank now: dial every rank above, then accept from every one below
        (`watch(p)`, if given: a context whose value is the check of the wait for rank p)."""
        deadline = deadlines.after(timeout)
        others = [p for p in range(self.size) if p != self.rank and p not in self.peers]
        for p in others:
            if p > self.rank:
                self.link(p, deadline, deadline)
        for p in others:
            if p < self.rank:
                if watch is None:
                    self.link(p, deadline, deadline)
                    continue
                with watch(p) as check:
                    self.link(p, deadline, deadline, check)

    def close(self) -> None:
        for ch in self.own:
            ch.close()
