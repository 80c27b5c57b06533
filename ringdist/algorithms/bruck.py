"""Bruck's all-gather: ceil(log2 N) steps for any N; in step k rank r sends the first
min(2^k, N-2^k) blocks it holds to rank r-2^k and appends as many from rank r+2^k.

A rank holds its blocks rotated (its own first), so every send and receive is one
contiguous run of scratch; one copy puts them in rank order at the end. Cost
ceil(log2 N)α + (N-1)mβ plus that copy: recursive doubling's latency without its two
extra steps (folding in and out) when N is not a power of two. Links on first use: at
most 2·ceil(log2 N) per rank.
"""

from __future__ import annotations

import numpy as np

from .. import buffers, wire
from ..arrays import byte_view
from ..comm import Comm
from .base import Algorithm
from .common import own_rows
from .dissemination import neighbours


def gather(g: Comm, arr: np.ndarray, out: np.ndarray, header: wire.Header, timeout: float | None) -> None:
    n, r, size, op = g.size(), g.rank(), arr.nbytes, header.fields["op"]
    if g.mesh is None:
        neighbours(g, header, op, timeout)
    held = buffers.cache.empty((n, size), np.uint8, min_bytes=buffers.SCRATCH_MIN_BYTES)  # row i: rank (r+i)%n's
    mine = own_rows(g, arr, out)
    np.copyto(mine, arr)
    view = byte_view(held)
    view[:size] = byte_view(mine)
    k = 1
    while k < n:
        count = min(k, n - k)
        g.exchange(op, [view[:count * size]], [view[k * size:(k + count) * size]], header, timeout=timeout,
                   peers=[(r - k) % n], sources=[(r + k) % n])
        k <<= 1
    rows = np.frombuffer(byte_view(out), np.uint8).reshape(n, size)
    rows[r:] = held[:n - r]
    rows[:r] = held[n - r:]


ALGORITHM = Algorithm("bruck", gather=gather)
