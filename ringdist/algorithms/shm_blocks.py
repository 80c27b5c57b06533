"""Shared memory's all-to-all (and scatter, which runs it): one copy into the segment, one out.

Each rank's stream is its blocks for the other ranks, in rank order (its own block skipped),
cut into rounds of one slot (`ringdist.shm`): in round k a rank writes bytes [kS, (k+1)S)
of its stream into its slot, signals over TCP (the header exchange), and copies out of
every peer's slot the part of its own block that lies in that window. A rank's own block
goes straight from its input to its output.

Where a block lies in a peer's stream, and how long that stream is (so how many rounds the
call takes: the longest stream's), the receiver learns without an extra round: with every
rank's blocks the same size (all_to_all without splits) it follows from its own call; with
splits or for a scatter, round 0's header to each peer declares the block's rows (`sizes`,
checked as every block exchange checks them) and `at`: the block's first row in the
sender's stream and the stream's rows. Later rounds' headers are the call's, with the
fields that may differ by sender (a scatter's dtype and shape) made equal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import buffers, wire
from ..channel import Channel
from ..comm import Comm
from ..errors import ProtocolError
from ..flows import NO_BYTES, Outflow, Segments, SizedInflow
from . import dissemination
from .blocks import Assembled, Check, sizes_of


def _stream(blocks: list[memoryview], r: int) -> tuple[list[int], int]:
    """Byte offset of each block in this rank's stream (its own block skipped), and its length."""
    at, pos = [0] * len(blocks), 0
    for p, block in enumerate(blocks):
        if p != r:
            at[p] = pos
            pos += len(block)
    return at, pos


def _declare(g: Comm, header: wire.Header, sizes: list[int], rows_at: list[int], rows_total: int, check: Check,
             follow: wire.Header, timeout: float | None) -> dict[int, tuple[int, int, int, int]]:
    """Round 0's signal when blocks may differ in size: to each peer the call's header with its
    block's rows and place; from each, (byte offset, bytes, stream bytes, rows) of this rank's
    block. A peer done with round 0 may already send round 1's header, `follow`."""
    mesh = g.mesh
    assert mesh is not None
    op = header.fields["op"]
    found: dict[int, tuple[int, int, int, int]] = {}
    inflows, outflows = [], []
    for p in mesh.order:
        fields = dict(header.fields, sizes=[sizes[p]], at=[rows_at[p], rows_total])
        outflows.append(Outflow(mesh.peers[p], Segments([]), op, wire.Header(fields)))

        def accept(theirs: dict[str, Any], ch: Channel, p: int = p) -> memoryview:
            unit = check(p, theirs, ch)
            (rows,) = sizes_of(theirs, ch, 1)
            at = theirs.get("at")
            if (not isinstance(at, list) or len(at) != 2
                    or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in at)
                    or at[0] + rows > at[1]):
                raise ProtocolError(f"rank {ch.me}: {ch.describe()} declares a block of {rows} rows at {at!r} "
                                    f"in its shared memory")
            found[p] = (at[0] * unit, rows * unit, at[1] * unit, rows)
            return NO_BYTES

        inflows.append(SizedInflow(mesh.peers[p], op, accept))
    g.run(op, inflows, outflows, timeout=timeout, header=follow)
    return found


def signal(g: Comm, op: str, header: wire.Header, timeout: float | None) -> None:
    """'My part of this round is in my segment', and back from every rank (every shared-memory
    round ends with it): through the control pages where the link signals there (`shmsignal`:
    no message); else the call's header to and from every peer over the mesh, or (more than 8
    ranks, no mesh) the dissemination barrier's ceil(log2 N) rounds, after which every rank has
    entered this signal too. Blocks in the kernel (after the usual spin); a peer that died or
    called something else raises."""
    signals = g._signals
    if signals is not None:
        signals.signal(g, op, header, timeout)
        return
    if g.mesh is None:
        dissemination.rounds(g, header, op, timeout)
        return
    k = g.size() - 1
    g.exchange(op, [NO_BYTES] * k, [NO_BYTES] * k, header, timeout=timeout)


def all_to_all(g: Comm, header: wire.Header, blocks: list[memoryview], sizes: list[int], check: Check,
               timeout: float | None, into: list[memoryview] | None = None) -> list[tuple[int, memoryview]]:
    """Block p (sizes[p] units) to rank p through shared memory. With `into` (every rank's
    blocks the same size) they land there; otherwise in one buffer, in source order
    (`Assembled`). Returns (units, bytes) of the block from each rank, by source."""
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    op = header.fields["op"]
    at, total = _stream(blocks, r)
    size = link.slot_size
    k = link.next_round()
    _write(link.slot(r, k), blocks, at, r, 0, size)
    if into is not None:  # every block m bytes: rank r's lies at (r or r-1) * m in each peer's stream
        follow = header
        signal(g, op, header, timeout)
        m = len(blocks[r])
        where = {p: ((r - (r > p)) * m, m, total, sizes[r]) for p in range(n) if p != r}
        dest = into
        got: list[tuple[int, memoryview]] = [(sizes[r], into[q]) for q in range(n)]
        got[r] = (sizes[r], blocks[r])
    else:
        # Later rounds' header: equal on every rank (a scatter's root's dtype and shape are not).
        follow = wire.Header(dict(header.fields, dtype="|u1", shape=[0]))
        rows_at, rows = [0] * n, 0
        for p in range(n):
            if p != r:
                rows_at[p] = rows
                rows += sizes[p]
        where = _declare(g, header, sizes, rows_at, rows, check, follow, timeout)
        lengths = [len(blocks[r]) if q == r else where[q][1] for q in range(n)]
        whole = buffers.cache.empty((sum(lengths),), np.dtype(np.uint8))
        view = memoryview(whole)
        dest, pos = [], 0
        for q in range(n):
            dest.append(view[pos:pos + lengths[q]])
            pos += lengths[q]
        dest[r][:] = blocks[r]
        got = Assembled((sizes[r] if q == r else where[q][3], dest[q]) for q in range(n))
        got.whole = whole
    longest = max([total] + [w[2] for w in where.values()])
    others = link.others
    a = 0
    while True:
        b = a + size
        for p in others:
            start, length = where[p][0], where[p][1]
            lo, hi = max(a, start), min(b, start + length)
            if lo < hi:
                dest[p][lo - start:hi - start] = link.slot(p, k)[lo - a:hi - a]
        a = b
        if a >= longest:
            return got
        k = link.next_round()
        _write(link.slot(r, k), blocks, at, r, a, size)
        signal(g, op, follow, timeout)


def _write(slot: memoryview, blocks: list[memoryview], at: list[int], r: int, a: int, size: int) -> None:
    """Bytes [a, a + size) of this rank's stream into its slot."""
    b = a + size
    for p, block in enumerate(blocks):
        if p == r:
            continue
        lo, hi = max(a, at[p]), min(b, at[p] + len(block))
        if lo < hi:
            slot[lo - a:hi - a] = block[lo - at[p]:hi - at[p]]
