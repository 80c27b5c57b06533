"""Recursive doubling: log2(N) steps, in step k every rank exchanging with rank r XOR 2^k.

On a power-of-two number of ranks, over the mesh. An all-gather doubles the run of
blocks each rank holds at every step: log2(N)α + (N-1)mβ. An all-reduce exchanges the
whole array at every step and folds it in, the lower rank's operand first, so every rank
computes the same bits: log2(N)(α + nβ). Latency-optimal; the whole array at every step
makes it the choice for small messages only.
"""

from __future__ import annotations

import numpy as np

from .. import buffers, wire
from ..arrays import REDUCERS, byte_view
from ..comm import Comm
from .base import Algorithm
from .common import needs_mesh, place_own, pow2


def gather(g: Comm, arr: np.ndarray, out: np.ndarray, header: wire.Header, timeout: float | None) -> None:
    place_own(g, arr, out)
    _gather(g, byte_view(out), arr.nbytes, header.fields["op"], header, timeout)


def _gather(g: Comm, data: memoryview, size: int, op: str, header: wire.Header, timeout: float | None) -> None:
    """All-gather by recursive doubling: at step k, the 2^k blocks this rank holds (a
    contiguous run of `data`) go to rank r XOR 2^k, whose run comes back."""
    n, r = g.size(), g.rank()
    k = 1
    while k < n:
        base, partner = r & ~(k - 1), r ^ k
        other = partner & ~(k - 1)
        g.exchange(op, [data[base * size:(base + k) * size]], [data[other * size:(other + k) * size]],
                   header, timeout=timeout, peers=[partner])
        k <<= 1


def reduce(g: Comm, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    """Recursive doubling (N a power of two): log2(N) exchanges of the whole array with rank
    r XOR 2^k, each followed by a reduction with the lower rank's operand first.

    The first step sends the input itself and receives straight into the result, folded in
    place; later steps send the result so far and receive into scratch."""
    n, r = g.size(), g.rank()
    ufunc = REDUCERS[op]
    if arr.flags.c_contiguous:
        mine, acc = arr, buffers.cache.empty(arr.shape, arr.dtype)  # an array even when 0-d
    else:
        mine = acc = np.array(arr, order="C", copy=True)  # a copy is needed anyway: fold into it
    theirs = None
    k = 1
    while k < n:
        partner = r ^ k
        if mine is acc:  # the result so far is being sent: the partner's array lands in scratch
            if theirs is None:
                theirs = buffers.cache.empty(arr.shape, arr.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
            into = theirs
        else:
            into = acc
        g.exchange(op, [byte_view(mine)], [byte_view(into)], header, timeout=timeout, peers=[partner])
        if r < partner:
            ufunc(mine, into, out=acc)
        else:
            ufunc(into, mine, out=acc)
        mine = acc
        k <<= 1
    return acc


def _fits(comm: Comm, kind: str, nbytes: int) -> str | None:
    if not pow2(comm.size()):
        return f"it needs a power-of-two group size (this one has {comm.size()})"
    return needs_mesh(comm)


ALGORITHM = Algorithm("doubling", gather=gather, reduce=reduce, fits=_fits)
