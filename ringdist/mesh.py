"""One connection to every other rank of a group, for the direct (small-message) path.

Ring neighbours already share a connection (the ring's lane 0, used both ways; of a pair
of ranks' two ring connections, the one the lower rank dialed); a rank
dials every other rank above it and accepts from every one below. A group opens these
links when it is created, so a collective never waits for a connection that a peer
in a different state would not open.
"""

from __future__ import annotations

import select
import time

from .channel import Channel
from .endpoint import Endpoint, InboxKey
from .ring import RingLinks

MAX_RANKS = 8  # larger groups keep to the ring: a direct exchange costs N-1 messages per rank


class MeshLinks:
    """`peers[p]` is this rank's two-way channel to rank p (every p but this rank)."""

    def __init__(self, endpoint: Endpoint, ring: RingLinks, addresses: list[list[tuple[str, int]]],
                 timeout: float):
        group, rank, size = ring.group, ring.rank, ring.size
        right, left = (rank + 1) % size, (rank - 1) % size
        self.peers: dict[int, Channel] = {}
        self.own: list[Channel] = []  # the links opened here (the ring's belong to the ring)
        deadline = time.monotonic() + timeout
        others = [p for p in range(size) if p not in (rank, left, right)]
        try:
            for p in others:
                if p > rank:
                    sock = endpoint.connect(addresses[p], InboxKey(group, rank, "mesh", 0), deadline,
                                            f"rank {p} of group {group!r}")
                    self._add(Channel(sock, me=rank, peer=p, group=group, role="mesh"))
            for p in others:
                if p < rank:
                    sock = endpoint.take(InboxKey(group, p, "mesh", 0), deadline,
                                         f"group {group!r}: waiting for rank {p} to connect (mesh)")
                    self._add(Channel(sock, me=rank, peer=p, group=group, role="mesh"))
        except BaseException:
            self.close()
            raise
        if right != left:
            self.peers[right] = ring.right[0]
            self.peers[left] = ring.left[0]
        else:  # two ranks: both ends must pick the same one of the pair's two ring connections
            self.peers[right] = ring.right[0] if rank < right else ring.left[0]
        # Send order: nearest first going right, so no rank is everyone's first destination.
        self.order = [(rank + k) % size for k in range(1, size)]
        self.ordered = [self.peers[p] for p in self.order]
        self.poller = select.poll()  # every peer, for reading: the direct path's wait
        for ch in self.ordered:
            self.poller.register(ch.fd, select.POLLIN)

    def _add(self, ch: Channel) -> None:
        self.own.append(ch)
        self.peers[ch.peer] = ch

    def close(self) -> None:
        for ch in self.own:
            ch.close()
