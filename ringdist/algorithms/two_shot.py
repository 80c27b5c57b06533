"""Two-shot: a reduce-scatter and an all-gather, each one direct exchange over the mesh.

Rank p receives block p of every rank's array, reduces them in rank order and sends the
result to every rank: the ring's bytes (2(N-1)/N of the array each way) in 2 steps
instead of 2(N-1). Cost 2α + 2(N-1)/N·nβ, for medium arrays on 2 to 8 ranks.
"""

from __future__ import annotations

import numpy as np

from .. import buffers, schedule, wire
from ..arrays import REDUCERS, byte_view, fold
from ..comm import Comm
from .base import Algorithm
from .common import needs_mesh


def reduce(g: Comm, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None,
           root: int | None = None) -> np.ndarray | None:
    """Reduce-scatter then all-gather, each one direct exchange: rank p gets block p of every
    rank's array, reduces them in rank order, and sends the result to every rank (only to
    `root`, when given: None elsewhere).

    The ring's bytes (2(N-1)/N of the array each way) in 2 steps instead of 2(N-1).
    """
    n, r = g.size(), g.rank()
    mesh = g.mesh
    assert mesh is not None
    ufunc, op = REDUCERS[op], header.fields["op"]  # the reduction; `op` names the call from here on
    own = np.ascontiguousarray(arr).reshape(-1)
    out = buffers.cache.empty(arr.shape, arr.dtype)
    flat = out.reshape(-1)
    bounds = schedule.block_bounds(flat.size, n)
    lo, hi = bounds[r]
    stack = buffers.cache.empty((n, hi - lo), arr.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)  # row q: rank q's block r
    g.exchange(op, [byte_view(own[bounds[p][0]:bounds[p][1]]) for p in mesh.order],
               [byte_view(stack[p]) for p in mesh.order], header, timeout=timeout)
    mine = flat[lo:hi]
    fold([own[lo:hi] if q == r else stack[q] for q in range(n)], ufunc, mine)
    if root is not None:
        if r != root:
            g.exchange(op, [byte_view(mine)], [], header, timeout=timeout, peers=[root])
            return None
        others = [p for p in range(n) if p != r]
        g.exchange(op, [], [byte_view(flat[bounds[p][0]:bounds[p][1]]) for p in others], header,
                   timeout=timeout, peers=others)
        return out
    g.exchange(op, [byte_view(mine)] * len(mesh.order),
               [byte_view(flat[bounds[p][0]:bounds[p][1]]) for p in mesh.order], header, timeout=timeout)
    return out


def _fits(comm: Comm, kind: str, nbytes: int) -> str | None:
    return needs_mesh(comm)


def reduce_root(g: Comm, arr: np.ndarray, op: str, root: int, header: wire.Header,
                timeout: float | None) -> np.ndarray | None:
    return reduce(g, arr, op, header, timeout, root)


ALGORITHM = Algorithm("two-shot", reduce=reduce, reduce_root=reduce_root, fits=_fits)
