"""A group's ring: `lanes` authenticated connections to each ring neighbour.

Rank r dials its right neighbour (r+1) and accepts from its left (r-1); with two
ranks these are two distinct connections, so both directions of the ring exist
whatever the size.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

from .channel import Channel, peer_name
from .endpoint import Endpoint, InboxKey


class RingLinks:
    """The channels of one rank in one group's ring: none until `connect` makes them."""

    def __init__(self, group: str, rank: int, size: int, world_ranks: list[int] | None = None):
        self.group = group
        self.rank = rank
        self.size = size
        self.world_ranks = world_ranks or list(range(size))  # each rank's in the world, for errors
        self.right: list[Channel] = []
        self.left: list[Channel] = []

    def connect(self, endpoint: Endpoint, addresses: list[list[tuple[str, int]]], lanes: int,
                timeout: float, watch: "Callable[[int], Any] | None" = None) -> None:
        """Dial the right neighbour's lanes, then take the left one's (`watch(left)`, if given: a
        context whose value is the check of that wait). On failure the channels made so far stay
        (the caller tells them why, then closes them)."""
        group, rank, size = self.group, self.rank, self.size
        right, left = (rank + 1) % size, (rank - 1) % size
        deadline = time.monotonic() + timeout
        for lane in range(lanes):
            sock = endpoint.connect(addresses[right], InboxKey(group, rank, "ring", lane), deadline,
                                    f"{peer_name(self, right)} of group {group!r}", up=True, me=rank,
                                    peer_rank=right)
            self.right.append(Channel(sock, me=rank, peer=right, group=group, role="right", lane=lane,
                                      world_ranks=self.world_ranks))
        with watch(left) if watch is not None else contextlib.nullcontext() as check:
            for lane in range(lanes):
                sock = endpoint.take(InboxKey(group, left, "ring", lane), deadline,
                                     f"ring of group {group!r}: waiting for {peer_name(self, left)} to connect "
                                     f"(lane {lane})",
                                     check=check, source=addresses[left], me=rank)
                self.left.append(Channel(sock, me=rank, peer=left, group=group, role="left", lane=lane,
                                         world_ranks=self.world_ranks, listens=addresses[left]))

    @property
    def channels(self) -> list[Channel]:
        return self.right + self.left

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
