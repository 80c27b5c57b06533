"""Binomial-tree broadcast (and scatter and gather, below): ceil(log2 N) steps; a rank receives from its parent, then sends
to its children, largest subtree first (ranks counted from the root).

Dissemination rounds of header-only messages come first (`dissemination.rounds`), so
every rank returns only once every rank has made the same call, as the other broadcasts
do, and ranks that disagree find out before any waits on a parent that is in another call. Cost ceil(log2 N)(α + nβ) on the
path from the root (the root sends n to each of its ceil(log2 N) children) plus
ceil(log2 N)α for the agreement: for small messages; the ring's pipelined chain is
(N-1)α + nβ. Links on first use: at most 2·ceil(log2 N) per rank.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import buffers, wire
from ..arrays import byte_view
from ..channel import Channel
from ..comm import Comm
from ..errors import ProtocolError
from ..flows import Outflow, Segments, SizedInflow, check_same
from .base import Algorithm
from .blocks import common, dtype_of, sizes_of
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


def scatter(g: Comm, arr: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> np.ndarray:
    """Binomial-tree scatter: a rank receives from its parent the blocks of its subtree (ranks
    counted from the root), keeps its own and sends each child its subtree's, largest first.
    The root sends N-1 blocks in all, each rank a block once per level above it: ceil(log2 N)
    steps on the path from the root, where the ring relays N(N-1)/2 blocks in N-1 hops.

    Only the root knows the array's shape and dtype: its header says them, and every rank
    passes them on in the header to its children. The agreement rounds come first, their
    headers with those fields made equal (`wire.ROLE_FIELDS`), as the broadcast's do; since a
    rank can fail on what the root's header says, the same rounds close the call too."""
    n, r = g.size(), g.rank()
    op = header.fields["op"]
    follow = wire.Header(dict(header.fields, dtype="|u1", shape=[0]))
    rounds(g, follow, op, timeout)
    v = (r - root) % n  # rank counted from the root
    mask, parent = 1, None
    while mask < n:
        if v & mask:
            parent = (r - mask) % n
            break
        mask <<= 1
    count = min(mask, n - v)  # blocks of this rank's subtree: its own, then its children's
    children = []  # (rank, first block counted from this rank, blocks)
    mask >>= 1
    while mask > 0:
        if v + mask < n:
            children.append(((r + mask) % n, mask, min(mask, n - v - mask)))
        mask >>= 1
    if parent is None:  # the root: blocks counted from it may wrap round its array's end
        data = byte_view(np.ascontiguousarray(arr))
        step = len(data) // n
        fields = header.fields
        out = buffers.cache.empty((arr.shape[0] // n,) + arr.shape[1:], arr.dtype)
        byte_view(out)[:] = data[r * step:(r + 1) * step]

        def blocks(first: int, k: int) -> list[memoryview]:
            a = (r + first) % n
            if a + k <= n:
                return [data[a * step:(a + k) * step]]
            return [data[a * step:], data[:(a + k - n) * step]]
    else:
        out, fields, held, step = _receive(g, header, root, parent, count, timeout)

        def blocks(first: int, k: int) -> list[memoryview]:
            return [held[first * step:(first + k) * step]]
    if children:
        rows = out.shape[0]
        chans = g.open_links(op, [c for c, _, _ in children], timeout)
        g.run(op, [], [Outflow(ch, Segments(blocks(first, k)), op, wire.Header(dict(fields, sizes=[k * rows])))
                       for ch, (_, first, k) in zip(chans, children)], timeout=timeout)
    # Closing rounds: a rank returns only once every rank has its block. A rank that could not
    # take its block (a dtype numpy there does not know) sends an ABORT instead, and the root,
    # which only sent, raises too rather than return.
    rounds(g, follow, op, timeout)
    return out


def _receive(g: Comm, header: wire.Header, root: int, parent: int, count: int,
             timeout: float | None) -> tuple[np.ndarray, dict[str, Any], memoryview, int]:
    """This rank's subtree's blocks from its parent: (its own block as its result, the root's
    header fields, the subtree's bytes, a block's bytes)."""
    n, op = g.size(), header.fields["op"]
    mine = common(header.fields, wire.ROLE_FIELDS["scatter"])
    learned: dict[str, Any] = {}

    def accept(theirs: dict[str, Any], ch: Channel) -> memoryview:
        called = common(theirs, wire.ROLE_FIELDS["scatter"])
        if called != mine:  # named with their dtypes and shapes, which the comparison leaves out
            check_same(common(header.fields), common(theirs), ch)
        shape = theirs["shape"]
        dtype = dtype_of(theirs["dtype"], ch)
        (rows,) = sizes_of(theirs, ch, 1)
        if not shape or shape[0] % n or rows != shape[0] // n * count:
            raise ProtocolError(f"rank {ch.me}: {ch.describe()} passes on scatter's blocks as {rows} rows of shape "
                                f"{tuple(shape)}, where this rank's subtree has {count} of the {n} blocks")
        learned.update(fields={k: v for k, v in theirs.items() if k != "sizes"}, shape=tuple(shape), dtype=dtype)
        return memoryview(buffers.cache.empty((rows * dtype.itemsize * math.prod(shape[1:]),), np.dtype(np.uint8)))

    (ch,) = g.open_links(op, [parent], timeout)
    inflow = SizedInflow(ch, op, accept)
    g.run(op, [inflow], [], timeout=timeout)
    held = inflow.dest
    assert held is not None
    shape, dtype = learned["shape"], learned["dtype"]
    step = len(held) // count
    rows = (shape[0] // n,) + shape[1:]
    if not step:
        return np.empty(rows, dtype), learned["fields"], held, step
    block = np.frombuffer(held[:step], dtype).reshape(rows)
    out = block  # a leaf's result is its whole buffer; others free theirs
    if count > 1:  # (bytes, not fields: numpy copies a structured dtype's fields and skips its padding)
        out = np.empty_like(block)
        np.copyto(out.view(np.uint8), block.view(np.uint8))
    return out, learned["fields"], held, step


def gather_root(g: Comm, arr: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> np.ndarray | None:
    """Binomial-tree gather: a rank receives its children's subtrees' blocks (ranks counted from
    the root), smallest first, then sends its whole subtree's to its parent; the root puts them in
    rank order. ceil(log2 N) steps on the path to the root, where the ring's all-gather takes N-1.
    Every rank's call is the same (shape, dtype, root), so every stream is the call's header and a
    known number of bytes; the agreement rounds come first, as the broadcast's do."""
    n, r = g.size(), g.rank()
    op = header.fields["op"]
    rounds(g, header, op, timeout)
    v = (r - root) % n  # rank counted from the root
    m = arr.nbytes
    mask = 1
    while mask < n and not v & mask:
        mask <<= 1
    count = min(mask, n - v)  # blocks of this rank's subtree: its own, then its children's
    if v == 0:  # the root: every subtree lands in its place in the result; the one that wraps round
        return _gather_at_root(g, arr, header, timeout)  # the result's end through scratch
    held = buffers.cache.empty((count, m), np.uint8, min_bytes=buffers.SCRATCH_MIN_BYTES)
    if m:
        held[0] = np.frombuffer(byte_view(np.ascontiguousarray(arr)), np.uint8)
    view = byte_view(held)
    k = 1
    while k < mask and v + k < n:  # children, smallest subtree first: each sends its blocks from v + k on
        g.exchange(op, [], [view[k * m:(k + min(k, n - v - k)) * m]], header, timeout=timeout, peers=[(r + k) % n])
        k <<= 1
    g.exchange(op, [view[:count * m]], [], header, timeout=timeout, peers=[(r - mask) % n])
    return None


def _gather_at_root(g: Comm, arr: np.ndarray, header: wire.Header, timeout: float | None) -> np.ndarray:
    """The root's part of the binomial gather: child k (ranks counted from the root) sends the
    blocks of ranks root+k to root+2k-1, straight into the result, except the one subtree that
    passes the last rank: it lands in scratch and is copied in two pieces."""
    n, r = g.size(), g.rank()
    op = header.fields["op"]
    rows, m = arr.shape[0], arr.nbytes
    out = buffers.cache.empty((n * rows,) + arr.shape[1:], arr.dtype)
    np.copyto(out[r * rows:(r + 1) * rows], arr)
    data = byte_view(out)
    k = 1
    while k < n:
        first, count = (r + k) % n, min(k, n - k)
        if first + count <= n:
            g.exchange(op, [], [data[first * m:(first + count) * m]], header, timeout=timeout, peers=[(r + k) % n])
        else:
            scratch = buffers.cache.empty((count * m,), np.uint8, min_bytes=buffers.SCRATCH_MIN_BYTES)
            g.exchange(op, [], [byte_view(scratch)], header, timeout=timeout, peers=[(r + k) % n])
            cut = (n - first) * m
            data[first * m:] = byte_view(scratch)[:cut]
            data[:count * m - cut] = byte_view(scratch)[cut:]
        k <<= 1
    return out


ALGORITHM = Algorithm("binomial", broadcast=broadcast, scatter=scatter, gather_root=gather_root)
