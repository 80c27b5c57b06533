"""Pairwise exchange: an all-to-all in N-1 steps; in step k rank r sends its block for rank
r+k and receives rank r-k's block for it, over links opened on first use.

For groups of more than 8 ranks (no mesh) over TCP, where the ring relays the blocks hop by
hop: at hop s it passes on the N-s blocks still to go, N(N-1)/2 blocks a rank in all (64
ranks: 32 times the bytes), and holds two hops of them. Here every block crosses once,
straight to its rank, and lands in its place: (N-1)α + (N-1)bβ each way, no scratch. The
price is links: by the first call's end a rank has one to every other rank (MPICH's long
all-to-all; Open MPI's TCP transport also connects each pair on first use). Step 1 goes
over the ring's own connections, so ranks in another call are found before any rank waits
for a link; every rank hears every other rank's header, so ranks that disagree all raise.
A rank waits for a link only from a lower rank, which dials without waiting for anyone:
no step can wait in a circle.

Blocks of one size (`all_to_all_even`) need no sizes: each rank's header is the call's,
compared byte for byte. Blocks of any sizes (splits, a scatter) declare their rows in the
header (`sizes`, `blocks.py`).
"""

from __future__ import annotations

from typing import Any

from .. import wire
from ..channel import Channel
from ..comm import Comm
from ..flows import Outflow, Segments, SizedInflow
from .base import Algorithm
from .blocks import Check, _landing, sizes_of


def all_to_all_even(g: Comm, data: memoryview, out: memoryview, header: wire.Header, timeout: float | None) -> None:
    n, r = g.size(), g.rank()
    m = len(data) // n
    op = header.fields["op"]
    out[r * m:(r + 1) * m] = data[r * m:(r + 1) * m]
    for k in range(1, n):
        to, source = (r + k) % n, (r - k) % n
        g.exchange(op, [data[to * m:(to + 1) * m]], [out[source * m:(source + 1) * m]], header, timeout=timeout,
                   peers=[to], sources=None if source == to else [source])


def all_to_all(g: Comm, header: wire.Header, blocks: list[memoryview], sizes: list[int], check: Check,
               timeout: float | None, into: list[memoryview] | None = None) -> list[tuple[int, memoryview]]:
    """Block p (sizes[p] units) to rank p, its rows in its header; the block from each rank
    lands in `into[source]` where given and of the declared size, else in a buffer of its own.
    Returns (units, bytes) by source."""
    n, r = g.size(), g.rank()
    op = header.fields["op"]
    got: list[Any] = [None] * n
    got[r] = (sizes[r], blocks[r])
    for k in range(1, n):
        to, source = (r + k) % n, (r - k) % n
        send, receive = g.open_links(op, [to, source], timeout)

        def accept(theirs: dict[str, Any], ch: Channel, source: int = source) -> memoryview:
            unit = check(source, theirs, ch)
            (rows,) = sizes_of(theirs, ch, 1)
            got[source] = rows
            if into is not None and len(into[source]) == rows * unit:
                return into[source]
            return _landing(rows * unit)

        inflow = SizedInflow(receive, op, accept, hint=len(blocks[to]))
        outflow = Outflow(send, Segments([blocks[to]]), op, wire.Header(dict(header.fields, sizes=[sizes[to]])))
        g.run(op, [inflow], [outflow], timeout=timeout)
        assert inflow.dest is not None
        got[source] = (got[source], inflow.dest)
    return got


ALGORITHM = Algorithm("pairwise-exchange", all_to_all=all_to_all, all_to_all_even=all_to_all_even)
