"""Broadcast by scatter then all-gather (van de Geijn): the root's array cut into N blocks,
scattered down a binomial tree (each rank receives the blocks of its subtree), then
gathered round the ring.

Dissemination rounds of header-only messages come first, as in the binomial broadcast
(`binomial`): every rank returns only once every rank has made the same call, and ranks
that disagree find out before any waits. Cost ceil(log2 N)α (agreement) +
ceil(log2 N)α + (N-1)/N·nβ (scatter) + (N-1)α + (N-1)/N·nβ (ring all-gather): about 2nβ
whatever N, against the binomial tree's ceil(log2 N)·nβ, for large messages.
"""

from __future__ import annotations

import numpy as np

from .. import schedule, wire
from ..arrays import byte_view
from ..comm import Comm
from .base import Algorithm
from .common import gather_flows
from .dissemination import rounds


def broadcast(g: Comm, out: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> None:
    n, r = g.size(), g.rank()
    rounds(g, header, "broadcast", timeout)
    data = byte_view(out)
    unit = out.dtype.itemsize
    blocks = schedule.block_bounds(len(data), n, unit)  # block v: rank (root + v) % n's

    def run_of(first: int, end: int) -> memoryview:  # blocks first..end-1, contiguous
        return data[blocks[first][0]:blocks[end - 1][1]]

    v = (r - root) % n  # rank counted from the root
    mask = 1
    while mask < n:
        if v & mask:  # this rank's subtree: blocks v .. v+mask-1
            g.exchange("broadcast", [], [run_of(v, min(v + mask, n))], header, timeout=timeout,
                       peers=[(r - mask) % n])
            break
        mask <<= 1
    children, sends = [], []
    mask >>= 1
    while mask > 0:
        if v + mask < n:
            children.append((r + mask) % n)
            sends.append(run_of(v + mask, min(v + 2 * mask, n)))
        mask >>= 1
    if children:
        g.exchange("broadcast", sends, [], header, timeout=timeout, peers=children)
    inflows, outflows = gather_flows(g, data, [blocks[(i - root) % n] for i in range(n)], "broadcast", header,
                                     unit=unit)
    g.run("broadcast", inflows, outflows, timeout=timeout)


ALGORITHM = Algorithm("scatter-allgather", broadcast=broadcast)
