"""One connection to every other rank of a group, for the direct (small-message) path.

A group of 2 to 8 ranks opens every link (`links.Links`) when it is created: a rank
dials every other rank above it and accepts from every one below, so a direct exchange
never waits for a connection. Larger groups open links on first use only.
"""

from __future__ import annotations

from typing import Any, Callable

from .endpoint import Endpoint
from .links import Links
from .ring import RingLinks

MAX_RANKS = 8  # larger groups keep to the ring: a direct exchange costs N-1 messages per rank
STARTS_KEPT = 64  # block sizes whose offsets a mesh remembers


class MeshLinks(Links):
    """`peers[p]` is this rank's two-way channel to rank p (every p but this rank); `ordered`
    the same in send order (nearest first going right, so no rank is everyone's first), once
    `open` has made them. On failure the links made so far stay (the caller tells them why,
    then closes them)."""

    def __init__(self, endpoint: Endpoint, ring: RingLinks, addresses: list[list[tuple[str, int]]]):
        super().__init__(endpoint, ring, addresses)
        self.order: list[int] = []
        self.ordered: list = []
        self._starts: dict[int, list[int]] = {}

    def open(self, timeout: float, watch: "Callable[[int], Any] | None" = None) -> None:
        self.open_all(timeout, watch)
        self.order = [(self.rank + k) % self.size for k in range(1, self.size)]
        self.ordered = [self.peers[p] for p in self.order]

    def starts(self, step: int) -> list[int]:
        """Where each peer's block of `step` bytes starts in a buffer of one block per rank, in
        `order` (remembered per block size: a small collective cannot spare the multiplications)."""
        found = self._starts.get(step)
        if found is None:
            if len(self._starts) >= STARTS_KEPT:
                self._starts.clear()
            found = self._starts[step] = [p * step for p in self.order]
        return found
