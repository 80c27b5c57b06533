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

from typing import Any

import msgpack
import numpy as np

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


# A step's header lists the fields of each block it carries; past this many bytes of them the
# step's blocks go in several frames, each header under the control frame limit (an object of
# thousands of buffers lists thousands of sizes, and a step carries up to N/2 blocks).
EACH_BYTES_MAX = wire.MAX_CONTROL // 2


def _frames(weights: list[int]) -> list[tuple[int, int]]:
    """[a, b): the blocks of each frame of a step, as many to a frame as their fields' encoded
    sizes (`weights`) allow."""
    cuts, a, used = [], 0, 0
    for i, size in enumerate(weights):
        if i > a and used + size > EACH_BYTES_MAX:
            cuts.append((a, i))
            a, used = i, 0
        used += size
    cuts.append((a, len(weights)))
    return cuts


def _weight(own: dict[str, Any]) -> int:
    return len(msgpack.packb(own, use_bin_type=True))


def gather_v(g: Comm, header: wire.Header, mine: Parts, check: Check,
             timeout: float | None) -> dict[int, tuple[dict[str, Any], memoryview]]:
    """Every rank's parts, of any size, by source: ceil(log2 N) steps, in step k the first
    min(k, N-k) blocks this rank holds (its own first, then ranks r+1, ...) to rank r-k and as
    many from rank r+k, each block landing in a buffer of its own (an object keeps no other
    rank's bytes alive). Step 1 goes over the ring's own connections, so a rank in another
    call is found before any rank waits for a link."""
    n, r, op = g.size(), g.rank(), header.fields["op"]
    parts, extra = mine
    fields: list[dict[str, Any]] = [extra]  # fields[i], payload[i], weights[i]: rank (r+i)'s
    payload: list[list[memoryview]] = [list(parts)]
    weights = [_weight(extra)]  # its fields' encoded bytes, for cutting a step into frames
    k = 1
    while k < n:
        count = min(k, n - k)
        to, source = (r - k) % n, (r + k) % n
        send, receive = g.open_links(op, [to, source], timeout)
        frames = _frames(weights[:count])
        due = len(fields) + count  # blocks held once this step's have come
        while frames or len(fields) < due:
            inflows, outflows = [], []
            if len(fields) < due:
                first = (r + len(fields)) % n  # the first rank whose block the next frame has
                inflows.append(SizedInflow(receive, op, _accepting(check, fields, payload, weights, first,
                                                                   due - len(fields), n, op)))
            if frames:
                a, b = frames.pop(0)
                outflows.append(Outflow(send, Segments([p for ps in payload[a:b] for p in ps]), op,
                                        wire.Header(dict(header.fields, each=fields[a:b]))))
            g.run(op, inflows, outflows, timeout=timeout)
        k <<= 1
    return {(r + i) % n: ({**header.fields, **fields[i]}, payload[i][0]) for i in range(1, n)}


def _accepting(check: Check, fields: list[dict[str, Any]], payload: list[list[memoryview]], weights: list[int],
               first: int, left: int, n: int, op: str) -> Any:
    """The check of a step's frame that carries the blocks of ranks first, first+1, ... (at most
    `left`): each block's fields checked as a relayed header is, each block given a buffer of its
    own; the fields, buffers and fields' sizes appended to `fields`, `payload` and `weights`."""
    def accept(theirs: dict[str, Any], ch: Channel) -> list[memoryview]:
        each = theirs.get("each")
        base = {key: v for key, v in theirs.items() if key != "each"}
        if not (isinstance(each, list) and 0 < len(each) <= left and all(isinstance(e, dict) for e in each)):
            check(first, base, ch)  # another call's header: MismatchError naming both
            raise ProtocolError(f"rank {ch.me}: {ch.describe()} sent a step of {op} whose blocks' fields are "
                                f"{str(each)[:200]}, where up to {left} blocks were due")
        landed = []
        for i, own in enumerate(each):
            theirs_i = {**base, **own}
            unit = check((first + i) % n, theirs_i, ch)
            landed.append(_landing(sum(sizes_of(theirs_i, ch)) * unit))
        fields.extend(each)
        payload.extend([view] for view in landed)
        weights.extend(_weight(own) for own in each)
        return landed
    return accept


ALGORITHM = Algorithm("bruck", gather=gather, all_to_all_even=all_to_all_even, gather_v=gather_v, fits=_fits)
