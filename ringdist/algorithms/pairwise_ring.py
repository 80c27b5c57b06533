"""Pairwise on the ring: two ranks each send their whole array on the ring's connections.

Each rank folds the other's array into its output as it lands, rank 0's operand first
on both ranks (the same bits everywhere): α + nβ, against the ring's 2α + nβ for two
ranks. Going both ways round the ring, the array is split over both of the pair's
connections.
"""

from __future__ import annotations

import numpy as np

from .. import buffers, schedule, wire
from ..arrays import REDUCERS, byte_view
from ..comm import Comm
from ..flows import Outflow, ReducingInflow, Segments
from .base import Algorithm
from .common import streams


def reduce(g: Comm, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    """Two ranks, on the ring's connections: each sends its whole array (split over both of
    the pair's connections when the ring goes both ways) and folds the other's into the
    output as it lands, rank 0's operand first on both ranks. (Up to RINGDIST_DIRECT_MAX,
    going one way, the pair exchanges on its direct connection instead: `pairwise`;
    at 1 MiB the two tie, in separate launches.)"""
    own = np.ascontiguousarray(arr).reshape(-1)
    out = buffers.cache.empty(arr.shape, arr.dtype)
    flat = out.reshape(-1)
    ufunc, op = REDUCERS[op], header.fields["op"]  # the reduction; `op` names the call from here on
    inflows, outflows = [], []
    for direction, send_ch, recv_ch, index, parts in streams(g, [(0, own.nbytes)]):
        a, b = schedule.piece_bounds(0, own.size, parts, index)
        inflows.append(ReducingInflow(recv_ch, [(flat[a:b], own[a:b])], ufunc, op, header,
                                      own_first=g.rank() == 0))
        outflows.append(Outflow(send_ch, Segments([byte_view(own[a:b])]), op, header))
    g.run(op, inflows, outflows, timeout=timeout)
    return out


def _fits(comm: Comm, kind: str, nbytes: int) -> str | None:
    return None if comm.size() == 2 else f"it is for two ranks (this group has {comm.size()})"


ALGORITHM = Algorithm("pairwise-ring", reduce=reduce, fits=_fits)
