"""Dissemination barrier: ceil(log2 N) rounds; in round k rank r tells rank r+2^k and hears from r-2^k.

Any N, over links opened on first use (2·ceil(log2 N) per rank at most). Each message is
the call's header alone; a rank hears, directly or through others, from every rank by
the last round, and checks each header it receives, so it returns only once every rank
has entered the same call. Cost ceil(log2 N)α, against (N-1)α for a gather round the ring.
"""

from __future__ import annotations

from .. import wire
from ..comm import Comm
from ..flows import NO_BYTES
from .base import Algorithm


def barrier(g: Comm, header: wire.Header, timeout: float | None) -> None:
    rounds(g, header, "barrier", timeout)


def rounds(g: Comm, header: wire.Header, op: str, timeout: float | None, last: int | None = None) -> None:
    """The same rounds for another collective's agreement: every rank has then checked,
    directly or through others, that every rank made this call. `last`: stop after the
    round of that distance."""
    n, r = g.size(), g.rank()
    k = 1
    while k < n and (last is None or k <= last):
        g.exchange(op, [NO_BYTES], [NO_BYTES], header, timeout=timeout, peers=[(r + k) % n], sources=[(r - k) % n])
        k <<= 1


def neighbours(g: Comm, header: wire.Header, op: str, timeout: float | None) -> None:
    """The first round alone, where a group has no mesh: each rank sends its header to its
    right neighbour and checks its left neighbour's before anything else. Where ranks
    disagree on the call, some rank's left neighbour is in another call, so that rank
    raises MismatchError at once and its ABORT reaches the rest. Without it, ranks of
    algorithms that first wait (to receive, or for a peer to open a link) could all wait
    on ranks that are in another call and will never send to them."""
    rounds(g, header, op, timeout, last=1)


ALGORITHM = Algorithm("dissemination", barrier=barrier)
