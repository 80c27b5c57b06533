"""A new group's one yes/no: whether every rank can and will use a link (shared memory).

Every rank of the group votes, whatever its own settings, and every rank gets the same
answer: yes only if every rank said yes. It runs when the group is made, as call number
-1: before the group's first collective, which a peer that already has the answer may
have sent (its header, call #0, is no mismatch with this one).

- A group with a mesh (2 to 8 ranks): one byte to and from every peer over the mesh.
- A larger group (no mesh): round the ring, over the connections the group already has.
  Rank 0 sends its answer to its right neighbour; each rank in turn passes on the AND of
  what it received and its own; what comes back to rank 0 is every rank's AND, which goes
  round once more as the answer. Two messages in and two out per rank (2N hops in all).
  No link is opened for it: links past the ring's still open on first use (the
  shared-memory signals' dissemination rounds open theirs on the first shared-memory
  collective).
"""

from __future__ import annotations

import time

from . import deadlines, engine, wire
from .errors import RingTimeoutError
from .links import Links
from .mesh import MeshLinks

OP = "group setup (shared memory)"
# Seconds a vote waits past its caller's deadline: what the caller had left may be spent
# already (a peer that stopped while the links were made), and a peer whose step before the
# vote ran to that deadline (a dial to a rank out of open files that never got through) still
# votes while the others wait for it.
MIN_WAIT = 1.0


def _header() -> wire.Header:
    return wire.Header(wire.make_header("shm-setup", -1, "|u1", (1,)))


def _exchange(links: Links, to: list, recvs: list[memoryview], mine: memoryview, watched: list, rank: int,
              deadline: float, sources: list | None = None) -> None:
    engine.exchange(to, [mine] * len(to), recvs, _header(), outflows=[], watched=watched,
                    timeout=max(deadlines.left(deadline), 0.001), op=OP, me=rank, seq=-1, spin=0.0, yield_core=False,
                    poller=links.poller, sources=sources)


def vote(links: Links, yes: bool, timeout: float, began: float | None = None) -> bool:
    """Whether every rank of the group said yes (see the module's docstring); waits `timeout`
    seconds and MIN_WAIT more for the peers' answers (RingTimeoutError). `began`: when
    (`time.monotonic()`) the step the vote ends began, for the error to say how long it waited."""
    limit = max(timeout, 0.0) + MIN_WAIT
    start = time.monotonic() if began is None else began
    try:
        return _vote(links, yes, deadlines.after(limit))
    except RingTimeoutError as exc:
        if getattr(exc, "ringdist_origin", None) is not None:
            raise  # a peer's timeout, relayed as it was
        # The steps share one deadline: say how long the vote waited, not what its last step had left.
        detail = str(exc).partition(" s: ")[2] or str(exc)
        raise RingTimeoutError(f"rank {links.rank}: {OP} did not finish within {time.monotonic() - start:.1f} s: "
                               f"{detail}") from None


def _vote(links: Links, yes: bool, deadline: float) -> bool:
    rank, size = links.rank, links.size
    if isinstance(links, MeshLinks):
        # Only the mesh's channels are read: the group's first collective may already be
        # coming on the ring's others, from a peer that has its answer.
        theirs = [memoryview(bytearray(1)) for _ in links.order]
        _exchange(links, links.ordered, theirs, memoryview(b"\x01" if yes else b"\x00"), links.ordered,
                  rank, deadline)
        return yes and all(v[0] == 1 for v in theirs)
    right, left = links.peers[(rank + 1) % size], links.peers[(rank - 1) % size]
    watched = [right, left]

    def send(flag: bool) -> None:
        _exchange(links, [right], [], memoryview(b"\x01" if flag else b"\x00"), watched, rank, deadline)

    def receive() -> bool:
        theirs = memoryview(bytearray(1))
        _exchange(links, [], [theirs], memoryview(b""), watched, rank, deadline, sources=[left])
        return theirs[0] == 1

    if rank == 0:  # starts the tally round the ring, then sends the answer round after it
        send(yes)
        answer = receive()
        send(answer)
        receive()  # the answer, back round
        return answer
    send(receive() and yes)
    answer = receive()
    send(answer)
    return answer
