"""Recursive doubling: in step k every rank exchanges with rank r XOR 2^k; any N.

With P the largest power of two up to N, the N-P extra ranks fold in first (rank P+i
sends its block, or its whole array, to rank i) and out last (rank i sends it the
result), as MPICH does; ranks 0..P-1 run log2(P) pairwise steps. An all-gather doubles
the run of blocks each rank holds at every step: (log2(P) + 2[N≠P])α + (N-1)mβ (plus a
local reordering when N≠P). An all-reduce exchanges the whole array at every step and
folds it in, the lower rank's operand first, so every rank computes the same bits:
(log2(P) + 2[N≠P])(α + nβ). Latency-optimal; the whole array at every step makes it the
choice for small messages only. Links are opened on first use: 2·log2(N)+1 per rank at most.
"""

from __future__ import annotations

import numpy as np

from .. import buffers, wire
from ..arrays import REDUCERS, byte_view, combine
from ..comm import Comm
from ..flows import NO_BYTES
from .base import Algorithm
from .dissemination import neighbours


def fold(n: int) -> int:
    """The largest power of two up to n: the ranks that run the pairwise steps."""
    return 1 << (n.bit_length() - 1)


def gather(g: Comm, arr: np.ndarray, out: np.ndarray, header: wire.Header, timeout: float | None) -> None:
    steps = g.plans.get("doubling-gather")
    if steps is None:
        steps = _gather_steps(g)
    r, rows, size, op = g.rank(), arr.shape[0], arr.nbytes, header.fields["op"]
    np.copyto(out[r * rows:(r + 1) * rows], arr)  # this rank's rows in place (`own_rows`, written out)
    if g.mesh is None:
        neighbours(g, header, op, timeout)
    data = byte_view(out)
    n = g.size()
    if n & (n - 1) == 0:  # a power of two: no rank folds in
        for peers, base, other, k in steps:
            g.exchange(op, [data[base * size:(base + k) * size]], [data[other * size:(other + k) * size]],
                       header, timeout=timeout, peers=peers)
        return
    _gather_folded(g, data, size, n, r, fold(n), op, header, timeout, steps)


def _gather_folded(g: Comm, data: memoryview, size: int, n: int, r: int, p2: int, op: str, header: wire.Header,
                   timeout: float | None, steps: list[tuple[list[int], int, int, int]]) -> None:
    """The all-gather where N is not a power of two: the extra ranks fold in and out."""
    rem = n - p2
    if r >= p2:  # an extra rank: its block to rank r-P, the whole result back from it
        g.exchange(op, [data[r * size:(r + 1) * size]], [], header, timeout=timeout, peers=[r - p2])
        g.exchange(op, [], [data], header, timeout=timeout, peers=[r - p2])
        return
    # Slot q (q < P) holds block q, then block q+P if q < N-P: every run of slots is contiguous.
    scratch = buffers.cache.empty((n, size), np.uint8, min_bytes=buffers.SCRATCH_MIN_BYTES)
    view = byte_view(scratch)

    def offset(q: int) -> int:
        return (q + min(q, rem)) * size

    view[offset(r):offset(r) + size] = data[r * size:(r + 1) * size]
    if r < rem:
        g.exchange(op, [], [view[offset(r) + size:offset(r + 1)]], header, timeout=timeout, peers=[r + p2])
    for peers, base, other, k in steps:
        g.exchange(op, [view[offset(base):offset(base + k)]], [view[offset(other):offset(other + k)]],
                   header, timeout=timeout, peers=peers)
    order = [b for q in range(p2) for b in ((q, q + p2) if q < rem else (q,))]
    np.frombuffer(data, np.uint8).reshape(n, size)[order] = scratch
    if r < rem:
        g.exchange(op, [data], [], header, timeout=timeout, peers=[r + p2])


def _gather_steps(g: Comm) -> list[tuple[list[int], int, int, int]]:
    """The all-gather's steps among ranks 0..P-1, kept per communicator: at step k,
    the 2^k slots this rank holds (from slot `base`) go to rank r XOR 2^k, whose run (from
    slot `other`) comes back. Each step is (peers list, base, other, 2^k)."""
    r, p2 = g.rank(), fold(g.size())
    steps = []
    k = 1
    while k < p2:
        partner = r ^ k
        steps.append(([partner], r & ~(k - 1), partner & ~(k - 1), k))
        k <<= 1
    g.plans["doubling-gather"] = steps
    return steps


def reduce(g: Comm, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    """Recursive doubling: log2(P) exchanges of the whole array with rank r XOR 2^k, each
    followed by a reduction with the lower rank's operand first (the extra ranks folded
    in and out around them).

    The first step sends the input itself and receives straight into the result, folded in
    place; later steps send the result so far and receive into scratch."""
    p2, partners, extra = g.plans.get("doubling") or _plan(g)
    ufunc, op = REDUCERS[op], header.fields["op"]  # the reduction; `op` names the call from here on
    if g.mesh is None:
        neighbours(g, header, op, timeout)
    if arr.flags.c_contiguous:
        mine, acc = arr, buffers.cache.empty(arr.shape, arr.dtype)  # an array even when 0-d
    else:
        mine = acc = np.array(arr, order="C", copy=True)  # a copy is needed anyway: fold into it
    acc_bytes = byte_view(acc)
    if extra is not None:  # an extra rank: its array to rank r-P, the result back from it
        g.exchange(op, [byte_view(mine)], [], header, timeout=timeout, peers=extra)
        g.exchange(op, [], [acc_bytes], header, timeout=timeout, peers=extra)
        return acc
    theirs = theirs_bytes = None
    for partner, lower in partners:
        if mine is acc:  # the result so far is being sent: the partner's array lands in scratch
            if theirs is None:
                theirs = buffers.cache.empty(arr.shape, arr.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
                theirs_bytes = byte_view(theirs)
            into, into_bytes, sent = theirs, theirs_bytes, acc_bytes
        else:
            into, into_bytes, sent = acc, acc_bytes, byte_view(mine)
        if partner[0] >= p2:  # folding in: receive only
            g.exchange(op, [], [into_bytes], header, timeout=timeout, peers=partner)
        else:
            g.exchange(op, [sent], [into_bytes], header, timeout=timeout, peers=partner)
        if lower:  # the lower rank's operand first, the output on either: the same bits on both
            combine(ufunc, mine, into, acc)
        else:
            combine(ufunc, into, mine, acc)
        mine = acc
    r = g.rank()
    if r + p2 < g.size():
        g.exchange(op, [acc_bytes], [], header, timeout=timeout, peers=[r + p2])
    return acc


def _plan(g: Comm) -> tuple[int, list[tuple[list[int], bool]], list[int] | None]:
    """(P, this rank's partners in step order, each as a peers list with whether this rank
    is the lower of the pair, and the rank it folds into when it is an extra rank), kept
    per communicator."""
    n, r = g.size(), g.rank()
    p2 = fold(n)
    if r >= p2:
        plan: tuple = (p2, [], [r - p2])
    else:
        partners = ([r + p2] if r + p2 < n else []) + [r ^ k for k in _powers(p2)]
        plan = (p2, [([q], r < q) for q in partners], None)
    g.plans["doubling"] = plan
    return plan



def reduce_root(g: Comm, arr: np.ndarray, op: str, root: int, header: wire.Header,
                timeout: float | None) -> np.ndarray | None:
    """`reduce`'s result on the root only: the same pairs fold the same operands in the same
    order, but one way (a binomial tree): at step k the rank of each pair whose bit k
    differs from the target's sends its partial result and is done. The target is the root,
    or rank root-P where the root is an extra rank (which gets the result from it at the end).
    Half the bytes, and no step back out. A receiver sends its header back (no payload):
    ranks that disagree on the root would otherwise all wait to receive."""
    r = g.rank()
    p2, partners, extra = g.plans.get("doubling") or _plan(g)
    ufunc, op = REDUCERS[op], header.fields["op"]  # the reduction; `op` names the call from here on
    if g.mesh is None:
        neighbours(g, header, op, timeout)
    target = root if root < p2 else root - p2
    mine = arr if arr.flags.c_contiguous else np.array(arr, order="C", copy=True)  # 0-d stays 0-d
    acc = buffers.cache.empty(arr.shape, arr.dtype)  # an array even when 0-d
    if extra is not None:  # an extra rank: its array to rank r-P (and, on the root, the result back from it)
        g.exchange(op, [byte_view(mine)], [NO_BYTES], header, timeout=timeout, peers=extra)
        if r != root:
            return None
        g.exchange(op, [], [byte_view(acc)], header, timeout=timeout, peers=[target])
        return acc
    theirs = None
    for peers, lower in partners:
        partner = peers[0]
        if partner < p2 and (r ^ target) & (partner ^ r):  # this rank's partial goes to the partner
            g.exchange(op, [byte_view(mine)], [NO_BYTES], header, timeout=timeout, peers=peers)
            return None
        if mine is acc:
            if theirs is None:
                theirs = buffers.cache.empty(arr.shape, arr.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
            into = theirs
        else:
            into = acc
        g.exchange(op, [NO_BYTES], [byte_view(into)], header, timeout=timeout, peers=peers)
        if lower:
            combine(ufunc, mine, into, acc)
        else:
            combine(ufunc, into, mine, acc)
        mine = acc
    if r != root:  # the target, for an extra rank's root
        g.exchange(op, [byte_view(acc)], [], header, timeout=timeout, peers=[root])
        return None
    return acc


def _powers(p2: int) -> list[int]:
    return [1 << i for i in range(p2.bit_length() - 1)]


ALGORITHM = Algorithm("doubling", gather=gather, reduce=reduce, reduce_root=reduce_root)
