"""Direct: every rank sends its block to every other rank at once, over the mesh (2 to 8 ranks).

One step instead of the ring's N-1, so a small collective pays one wake-up per rank
rather than N-1 in a row; each rank sends N-1 messages. Cost: all-gather α + (N-1)mβ per
rank; all-reduce (every rank's whole array, reduced in rank order on every rank, so
every rank gets the same bits) α + (N-1)nβ; broadcast α + nβ at the root, which also
receives every other rank's header (every rank compares its call with every other's).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import buffers, wire
from ..arrays import NOTHING, REDUCERS, byte_view, fold, fold_in_place
from ..channel import Channel
from ..comm import Comm
from ..errors import ProtocolError
from ..flows import NO_BYTES, Inflow, Outflow, Segments, SizedInflow, check_same
from .base import Algorithm
from .blocks import all_to_all_direct, common, dtype_of, gather_direct
from .common import direct_parts, needs_mesh


def gather(g: Comm, arr: np.ndarray, out: np.ndarray, header: wire.Header, timeout: float | None) -> None:
    # Written out (not `own_rows` and `direct_parts`): a few function calls are a few percent of a
    # small collective.
    mesh = g.mesh
    assert mesh is not None
    rows, size, r = arr.shape[0], arr.nbytes, g.rank()
    np.copyto(out[r * rows:(r + 1) * rows], arr)
    data = byte_view(out)
    mine = data[r * size:(r + 1) * size]
    g.exchange(header.fields["op"], [mine] * len(mesh.order), [data[p * size:(p + 1) * size] for p in mesh.order],
               header, timeout=timeout)


def reduce(g: Comm, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    """Gather every rank's array directly, then reduce them in rank order (the same on every rank)."""
    n = g.size()
    ufunc, op = REDUCERS[op], header.fields["op"]  # the reduction; `op` names the call from here on
    # Rows flat: a row of every rank's shape would be one dimension past numpy's 64 for a 64-d array.
    stack = buffers.cache.empty((n, arr.size), arr.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
    np.copyto(stack[g.rank()].reshape(arr.shape), arr)
    size = arr.nbytes
    g.exchange(op, *direct_parts(g, byte_view(stack), [(i * size, (i + 1) * size) for i in range(n)]), header,
               timeout=timeout)
    out = np.empty(arr.shape, arr.dtype)  # an array even when 0-d
    fold([row.reshape(arr.shape) for row in stack], ufunc, out)
    return out



def scan(g: Comm, arr: np.ndarray, op: str, exclusive: bool, header: wire.Header,
         timeout: float | None) -> np.ndarray | None:
    """One exchange with every rank: this rank's array to the ranks after it, its header alone to
    the ranks before it (so every rank checks every other rank's call); then the arrays of the
    ranks before it (and its own, unless `exclusive`) folded in rank order."""
    mesh = g.mesh
    assert mesh is not None
    r = g.rank()
    take = r if exclusive else r + 1
    stack = buffers.cache.empty((max(take, 1), arr.size), arr.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
    size = arr.nbytes
    data = byte_view(stack)
    # Folded as sent (a strided view's NaN signs are numpy's strided loop's), in the shape given (0-d too).
    own = np.ascontiguousarray(arr).reshape(arr.shape)
    g.exchange(header.fields["op"], [byte_view(own) if p > r else NO_BYTES for p in mesh.order],
               [data[p * size:(p + 1) * size] if p < r else NO_BYTES for p in mesh.order], header, timeout=timeout)
    if not take:
        return None
    rows = [stack[p].reshape(arr.shape) for p in range(r)] + ([] if exclusive else [own])
    out = np.empty(arr.shape, arr.dtype)
    fold_in_place(rows, REDUCERS[op], out)
    return out


def gather_root(g: Comm, arr: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> np.ndarray | None:
    """One exchange with every rank: each rank's block to the root, its header alone to the
    others (so every rank checks every other rank's call); the root's result in rank order."""
    mesh = g.mesh
    assert mesh is not None
    rows, size, r = arr.shape[0], arr.nbytes, g.rank()
    op = header.fields["op"]
    if r != root:
        mine = byte_view(np.ascontiguousarray(arr))
        g.exchange(op, [mine if p == root else NO_BYTES for p in mesh.order], [NO_BYTES] * len(mesh.order), header,
                   timeout=timeout)
        return None
    out = buffers.cache.empty((g.size() * rows,) + arr.shape[1:], arr.dtype)
    np.copyto(out[r * rows:(r + 1) * rows], arr)
    data = byte_view(out)
    g.exchange(op, [NO_BYTES] * len(mesh.order), [data[p * size:(p + 1) * size] for p in mesh.order], header,
               timeout=timeout)
    return out


def all_to_all_even(g: Comm, data: memoryview, out: memoryview, header: wire.Header, timeout: float | None) -> None:
    """One exchange with every rank: block p of `data` to rank p, rank p's block into block p
    of `out` (this rank's own copied across); every block's size known, so each lands in place."""
    mesh = g.mesh
    assert mesh is not None
    step = len(data) // g.size()
    lo = g.rank() * step
    out[lo:lo + step] = data[lo:lo + step]
    starts = mesh.starts(step)
    g.exchange(header.fields["op"], [data[a:a + step] for a in starts], [out[a:a + step] for a in starts], header,
               timeout=timeout)


def scatter(g: Comm, arr: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> np.ndarray:
    """One step over the mesh: the root's header (its shape and dtype) and block p to rank p;
    every other rank's header alone to every rank, so every rank checks every other's call.
    The root expects the non-roots' headers byte for byte; a non-root learns its block's
    shape and dtype from the root's and lands the block in its result."""
    mesh = g.mesh
    assert mesh is not None
    n, r = g.size(), g.rank()
    op = header.fields["op"]
    if r == root:
        data = byte_view(np.ascontiguousarray(arr))
        step = len(data) // n
        out = buffers.cache.empty((arr.shape[0] // n,) + arr.shape[1:], arr.dtype)
        byte_view(out)[:] = data[r * step:(r + 1) * step]
        theirs = g.peer_header(op, NOTHING, ALGORITHM.name, root=root)
        g.exchange(op, [data[a:a + step] for a in mesh.starts(step)], [NO_BYTES] * len(mesh.order), header,
                   timeout=timeout, expect=theirs)
        return out
    mine = common(header.fields, ("dtype", "shape"))
    landed: list[np.ndarray] = []

    def accept(fields: dict[str, Any], ch: Channel) -> memoryview:
        called = common(fields, ("dtype", "shape"))
        if called != mine:  # named with their dtypes and shapes, which the comparison leaves out
            check_same(common(header.fields), common(fields), ch)
        shape = tuple(fields["shape"])
        dtype = dtype_of(fields["dtype"], ch)
        if not shape or shape[0] % n:
            raise ProtocolError(f"rank {ch.me}: root {root} of scatter sends shape {shape}, "
                                f"whose rows do not divide among {n} ranks")
        out = buffers.cache.empty((shape[0] // n,) + shape[1:], dtype)
        landed.append(out)
        return byte_view(out)

    peers = mesh.peers
    inflows: list[Inflow] = [SizedInflow(peers[root], op, accept)]
    inflows += [Inflow(peers[p], Segments([]), op, header) for p in mesh.order if p != root]
    g.run(op, inflows, [Outflow(ch, Segments([]), op, header) for ch in mesh.ordered], timeout=timeout)
    return landed[0]


def broadcast(g: Comm, out: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> None:
    """One exchange with every rank: the root's data to each, every other rank's header to
    each (no payload), so every rank compares its call with every other rank's."""
    mesh = g.mesh
    assert mesh is not None
    data = byte_view(out)
    if g.rank() == root:
        sends, recvs = [data] * len(mesh.order), [NO_BYTES] * len(mesh.order)
    else:
        sends, recvs = [NO_BYTES] * len(mesh.order), [data if p == root else NO_BYTES for p in mesh.order]
    g.exchange("broadcast", sends, recvs, header, timeout=timeout)


def reduce_root(g: Comm, arr: np.ndarray, op: str, root: int, header: wire.Header,
                timeout: float | None) -> np.ndarray | None:
    """`reduce`'s result on the root only: every array to the root (`gather_root`), folded
    there in rank order."""
    stack = gather_root(g, arr.reshape(1, -1), root, header, timeout)
    if stack is None:
        return None
    out = np.empty(arr.shape, arr.dtype)
    fold([row.reshape(arr.shape) for row in stack], REDUCERS[op], out)
    return out


def _fits(comm: Comm, kind: str, nbytes: int) -> str | None:
    return needs_mesh(comm)


ALGORITHM = Algorithm("direct", gather=gather, reduce=reduce, broadcast=broadcast, all_to_all=all_to_all_direct,
                      all_to_all_even=all_to_all_even, scatter=scatter,
                      gather_v=gather_direct, gather_root=gather_root, reduce_root=reduce_root, scan=scan,
                      fits=_fits)
