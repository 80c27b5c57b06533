"""Binomial-tree broadcast: ceil(log2 N) steps; a rank receives from its parent, then sends
to its children, largest subtree first (ranks counted from the root).

Dissemination rounds of header-only messages come first (`dissemination.rounds`), so
every rank returns only once every rank has made the same call, as the other broadcasts
do, and ranks that disagree find out before any waits on a parent that is in another call. Cost ceil(log2 N)(α + nβ) on the
path from the root (the root sends n to each of its ceil(log2 N) children) plus
ceil(log2 N)α for the agreement: for small messages; the ring's pipelined chain is
(N-1)α + nβ. Links on first use: at most 2·ceil(log2 N) per rank.
"""

from __future__ import annotations

import numpy as np

from .. import wire
from ..arrays import byte_view
from ..comm import Comm
from .base import Algorithm
from .dissemination import rounds


def broadcast(g: Comm, out: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> None:
    n, r = g.size(), g.rank()
    rounds(g, header, "broadcast", timeout)
    v = (r - root) % n  # rank counted from the root
    data = byte_view(out)
    mask = 1
    while mask < n:
        if v & mask:
            g.exchange("broadcast", [], [data], header, timeout=timeout, peers=[(r - mask) % n])
            break
        mask <<= 1
    children = []
    mask >>= 1
    while mask > 0:
        if v + mask < n:
            children.append((r + mask) % n)
        mask >>= 1
    if children:
        g.exchange("broadcast", [data] * len(children), [], header, timeout=timeout, peers=children)


ALGORITHM = Algorithm("binomial", broadcast=broadcast)
