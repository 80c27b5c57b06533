"""Bruck's all-gather (and all-to-all of blocks of one size, below): ceil(log2 N) steps for any N; in step k rank r sends the first
min(2^k, N-2^k) blocks it holds to rank r-2^k and appends as many from rank r+2^k.

A rank holds its blocks rotated (its own first), so every send and receive is one
contiguous run of scratch; one copy puts them in rank order at the end. Cost
ceil(log2 N)α + (N-1)mβ plus that copy: recursive doubling's latency without its two
extra steps (folding in and out) when N is not a power of two. Links on first use: at
most 2·ceil(log2 N) per rank.

Blocks of any size (`gather_v`: uneven all_gather, the object collectives) go the same
way: a step's header lists, for each rank whose block it carries, that rank's own fields
(`each`: its rows, its object's buffer sizes), and the receiver checks each as the ring
checks a relayed header. A rank passes on only blocks whose call it has checked against
its own, so every rank checks every other rank's call, directly or through others.
"""

from __future__ import annotations

import numpy as np

from typing import Any

from .. import buffers, wire
from ..arrays import byte_view
from ..channel import Channel
from ..comm import Comm
from ..errors import ProtocolError
from ..flows import Outflow, Segments, SizedInflow
from .base import Algorithm
from .blocks import Check, Parts, _landing, sizes_of
from .common import own_rows
from .dissemination import neighbours


def _fits(comm: Comm, kind: str, nbytes: int) -> str | None:
    if kind == "all_to_all" and nbytes < 0:
        return "its all_to_all needs blocks of one size (no splits; not a scatter)"
    return None


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


def all_to_all_even(g: Comm, data: memoryview, out: memoryview, header: wire.Header, timeout: float | None) -> None:
    """Bruck's all-to-all of blocks of one size: ceil(log2 N) steps. A rank holds its blocks
    rotated (row i: the block for rank r+i); in step k it sends the rows whose index has bit k
    set to rank r+k and takes rank r-k's in their place. After the last step row i holds the
    block rank r-i sent to it. About N/2 blocks a step: ceil(log2 N)α + (N/2)ceil(log2 N)bβ,
    against pairwise exchange's (N-1)α + (N-1)bβ, for small blocks; scratch of twice the input."""
    n, r, op = g.size(), g.rank(), header.fields["op"]
    m = len(data) // n
    if g.mesh is None:
        neighbours(g, header, op, timeout)
    held = buffers.cache.empty((n, m), np.uint8, min_bytes=buffers.SCRATCH_MIN_BYTES)
    rows = np.frombuffer(data, np.uint8).reshape(n, m)
    held[:n - r] = rows[r:]
    held[n - r:] = rows[:r]
    k = 1
    while k < n:
        picked = [i for i in range(n) if i & k]
        sent = np.ascontiguousarray(held[picked])
        came = buffers.cache.empty(sent.shape, np.uint8, min_bytes=buffers.SCRATCH_MIN_BYTES)
        g.exchange(op, [byte_view(sent)], [byte_view(came)], header, timeout=timeout,
                   peers=[(r + k) % n], sources=[(r - k) % n])
        held[picked] = came
        k <<= 1
    result = np.frombuffer(out, np.uint8).reshape(n, m)
    result[(r - np.arange(n)) % n] = held


def gather_v(g: Comm, header: wire.Header, mine: Parts, check: Check,
             timeout: float | None) -> dict[int, tuple[dict[str, Any], memoryview]]:
    """Every rank's parts, of any size, by source: ceil(log2 N) steps, in step k the first
    min(k, N-k) blocks this rank holds (its own first, then ranks r+1, ...) to rank r-k and as
    many from rank r+k. Step 1 goes over the ring's own connections, so a rank in another call
    is found before any rank waits for a link."""
    n, r, op = g.size(), g.rank(), header.fields["op"]
    parts, extra = mine
    fields: list[dict[str, Any]] = [extra]  # fields[i], payload[i]: rank (r+i)'s
    payload: list[list[memoryview]] = [list(parts)]
    k = 1
    while k < n:
        count = min(k, n - k)
        to, source = (r - k) % n, (r + k) % n
        send, receive = g.open_links(op, [to, source], timeout)
        took: list[tuple[list[dict[str, Any]], list[int]]] = []

        def accept(theirs: dict[str, Any], ch: Channel, source: int = source, count: int = count) -> memoryview:
            each = theirs.get("each")
            base = {key: v for key, v in theirs.items() if key != "each"}
            if not (isinstance(each, list) and len(each) == count and all(isinstance(e, dict) for e in each)):
                check(source, base, ch)  # another call's header: MismatchError naming both
                raise ProtocolError(f"rank {ch.me}: {ch.describe()} sent {op}'s step {count} blocks' fields as "
                                    f"{str(each)[:200]}")
            sizes = []
            for i, own in enumerate(each):
                theirs_i = dict(base, **own)
                unit = check((source + i) % n, theirs_i, ch)
                sizes.append(sum(sizes_of(theirs_i, ch)) * unit)
            took.append((each, sizes))
            return _landing(sum(sizes))

        inflow = SizedInflow(receive, op, accept, hint=sum(len(p) for ps in payload[:count] for p in ps))
        sent = wire.Header(dict(header.fields, each=fields[:count]))
        g.run(op, [inflow], [Outflow(send, Segments([p for ps in payload[:count] for p in ps]), op, sent)],
              timeout=timeout)
        assert inflow.dest is not None
        (each, sizes), = took
        at = 0
        for own, size in zip(each, sizes):
            fields.append(own)
            payload.append([inflow.dest[at:at + size]])
            at += size
        k <<= 1
    return {(r + i) % n: (dict(header.fields, **fields[i]), payload[i][0]) for i in range(1, n)}


ALGORITHM = Algorithm("bruck", gather=gather, all_to_all_even=all_to_all_even, gather_v=gather_v, fits=_fits)
