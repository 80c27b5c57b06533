"""Rabenseifner's all-reduce: a reduce-scatter by recursive halving, then an all-gather by
recursive doubling; and the reduce-scatter alone (sum_scatter). Any N.

With P the largest power of two up to N, the N-P extra ranks fold in first (rank P+i
sends its whole array to rank i, which reduces it into its own) and out last. Among
ranks 0..P-1, step k (mask P/2, P/4, ..., 1) pairs rank r with r XOR mask: each keeps
half of the part it is still responsible for and sends the other half, and reduces what
it receives into its half, the lower rank's operand first. Each block of the result is
computed by one rank only, then copied everywhere, so every rank has the same bits.
All-reduce cost 2log2(P)α + 2(P-1)/P·nβ (+ α + nβ each way for the fold): the ring's
bytes in 2log2(P) steps instead of 2(N-1). The reduce-scatter keeps the first half:
log2(P)α + (P-1)/P·nβ, its input first put in slot order (rank i's block next to rank
i+P's) so that every part is contiguous.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .. import buffers, schedule, wire
from ..arrays import REDUCERS, byte_view
from ..comm import Comm
from .base import Algorithm
from .dissemination import neighbours
from .doubling import fold


def _halve(g: Comm, acc: np.ndarray, offset: Callable[[int], int], p2: int, ufunc, op: str,
           header: wire.Header, timeout: float | None) -> None:
    """Recursive halving over slots 0..p2-1 of flat `acc` (slot q: elements offset(q)..offset(q+1)):
    at the end this rank's slot holds the reduction of every rank's."""
    r = g.rank()
    lo, hi = 0, p2
    mask = p2 >> 1
    scratch = None
    while mask:
        mid = (lo + hi) // 2
        keep, give = ((lo, mid), (mid, hi)) if r & mask == 0 else ((mid, hi), (lo, mid))
        kept = acc[offset(keep[0]):offset(keep[1])]
        if scratch is None:
            scratch = buffers.cache.empty((kept.size,), acc.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
        theirs = scratch[:kept.size]
        g.exchange(op, [byte_view(acc[offset(give[0]):offset(give[1])])], [byte_view(theirs)], header,
                   timeout=timeout, peers=[r ^ mask])
        if r & mask == 0:
            ufunc(kept, theirs, out=kept)
        else:
            ufunc(theirs, kept, out=kept)
        lo, hi = keep
        mask >>= 1


def _double(g: Comm, acc: np.ndarray, offset: Callable[[int], int], p2: int, op: str,
            header: wire.Header, timeout: float | None) -> None:
    """All-gather of slots by recursive doubling: this rank's run of slots to r XOR mask."""
    r = g.rank()
    mask = 1
    while mask < p2:
        base, other = r & ~(mask - 1), (r ^ mask) & ~(mask - 1)
        g.exchange(op, [byte_view(acc[offset(base):offset(base + mask)])],
                   [byte_view(acc[offset(other):offset(other + mask)])], header, timeout=timeout,
                   peers=[r ^ mask])
        mask <<= 1


def _fold_in(g: Comm, acc: np.ndarray, p2: int, ufunc, op: str, header: wire.Header,
             timeout: float | None) -> bool:
    """Extra ranks send their whole `acc` to rank r-P, which reduces it into its own (its
    operand first). True on an extra rank (which then waits for the result)."""
    n, r = g.size(), g.rank()
    if r >= p2:
        g.exchange(op, [byte_view(acc)], [], header, timeout=timeout, peers=[r - p2])
        return True
    if r + p2 < n:
        theirs = buffers.cache.empty(acc.shape, acc.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
        g.exchange(op, [], [byte_view(theirs)], header, timeout=timeout, peers=[r + p2])
        ufunc(acc, theirs, out=acc)
    return False


def reduce(g: Comm, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    n, r = g.size(), g.rank()
    p2 = fold(n)
    ufunc, op = REDUCERS[op], header.fields["op"]  # the reduction; `op` names the call from here on
    if g.mesh is None:
        neighbours(g, header, op, timeout)
    out = buffers.cache.empty(arr.shape, arr.dtype)
    np.copyto(out, arr)
    acc = out.reshape(-1)
    if _fold_in(g, acc, p2, ufunc, op, header, timeout):
        g.exchange(op, [], [byte_view(acc)], header, timeout=timeout, peers=[r - p2])
        return out
    cuts = [lo for lo, _ in schedule.block_bounds(acc.size, p2)] + [acc.size]
    offset = cuts.__getitem__
    _halve(g, acc, offset, p2, ufunc, op, header, timeout)
    _double(g, acc, offset, p2, op, header, timeout)
    if r + p2 < n:
        g.exchange(op, [byte_view(acc)], [], header, timeout=timeout, peers=[r + p2])
    return out


def reduce_scatter(g: Comm, own: np.ndarray, out: np.ndarray, op: str, header: wire.Header,
                   timeout: float | None) -> None:
    n, r = g.size(), g.rank()
    p2 = fold(n)
    rem = n - p2
    name = header.fields["op"]
    if g.mesh is None:
        neighbours(g, header, name, timeout)
    c = out.size  # elements per rank's block
    ufunc = REDUCERS[op]
    acc = buffers.cache.empty(own.shape, own.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
    order = [b for q in range(p2) for b in ((q, q + p2) if q < rem else (q,))]  # slot order
    acc.reshape(n, c)[:] = own.reshape(n, c)[order]
    if _fold_in(g, acc, p2, ufunc, name, header, timeout):
        g.exchange(name, [], [byte_view(out)], header, timeout=timeout, peers=[r - p2])
        return

    def offset(q: int) -> int:
        return (q + min(q, rem)) * c

    _halve(g, acc, offset, p2, ufunc, name, header, timeout)
    start = offset(r)
    np.copyto(out, acc[start:start + c])
    if r < rem:
        g.exchange(name, [byte_view(acc[start + c:start + 2 * c])], [], header, timeout=timeout,
                   peers=[r + p2])


ALGORITHM = Algorithm("rabenseifner", reduce=reduce, reduce_scatter=reduce_scatter)
