"""A new group's one yes/no: whether every rank can and will use a link (shared memory).

Every rank of the group votes, whatever its own settings, and every rank gets the same
answer: yes only if every rank said yes. It runs when the group is made, as call number
-1: before the group's first collective, which a peer that already has the answer may
have sent (its header, call #0, is no mismatch with this one).

- A group with a mesh (2 to 8 ranks): one byte to and from every peer over the mesh.
- A larger group (no mesh): round the ring, over the connections the group already has.
  In each of N-1 steps a rank sends its right neighbour the AND of every answer it has
  heard so far and ANDs in its left neighbour's; after step j it has heard from the j
  ranks to its left, so after N-1 steps from every rank. No link is opened for it: links
  past the ring's still open on first use (the shared-memory signals' dissemination
  rounds open theirs on the first shared-memory collective).
"""

from __future__ import annotations

from . import deadlines, engine, wire
from .links import Links
from .mesh import MeshLinks

OP = "group setup (shared memory)"


def _header() -> wire.Header:
    return wire.Header(wire.make_header("shm-setup", -1, "|u1", (1,)))


def _exchange(links: Links, to: list, recvs: list[memoryview], mine: memoryview, watched: list, rank: int,
              deadline: float, sources: list | None = None) -> None:
    engine.exchange(to, [mine] * len(to), recvs, _header(), outflows=[], watched=watched,
                    timeout=deadlines.left(deadline), op=OP, me=rank, seq=-1, spin=0.0, yield_core=False,
                    poller=links.poller, sources=sources)


def vote(links: Links, yes: bool, timeout: float) -> bool:
    """Whether every rank of the group said yes (see the module's docstring)."""
    deadline = deadlines.after(timeout)
    rank, size = links.rank, links.size
    if isinstance(links, MeshLinks):
        # Only the mesh's channels are read: the group's first collective may already be
        # coming on the ring's others, from a peer that has its answer.
        theirs = [memoryview(bytearray(1)) for _ in links.order]
        _exchange(links, links.ordered, theirs, memoryview(b"\x01" if yes else b"\x00"), links.ordered,
                  rank, deadline)
        return yes and all(v[0] == 1 for v in theirs)
    right, left = links.peers[(rank + 1) % size], links.peers[(rank - 1) % size]
    heard = yes
    for _ in range(size - 1):
        theirs = memoryview(bytearray(1))
        _exchange(links, [right], [theirs], memoryview(b"\x01" if heard else b"\x00"), [right, left], rank,
                  deadline, sources=[left])
        heard = heard and theirs[0] == 1
    return heard
