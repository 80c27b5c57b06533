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
fields that may differ by sender (a scatter's dtype and shape) made equal. A group with no
mesh (more than 8 ranks) has no header between every pair: there each stream opens with its
layout instead (`layout_bytes`), read out of every peer's first slot after the first signal.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import msgpack
import numpy as np

from .. import crossmem, wire
from ..channel import Channel
from ..comm import Comm
from ..errors import MismatchError, ProtocolError, RingError
from ..flows import NO_BYTES, Outflow, Segments, SizedInflow
from . import dissemination
from .blocks import Assembled, Check, Gathered, declared_empty, dtype_from, sizes_of


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
               timeout: float | None, into: list[memoryview] | None = None,
               read: Read | None = None) -> list[tuple[int, memoryview]]:
    """Block p (sizes[p] units) to rank p through shared memory. With `into` (every rank's
    blocks the same size) they land there; otherwise in one buffer, in source order
    (`Assembled`). Returns (units, bytes) of the block from each rank, by source. `read`: a
    group with no mesh reads blocks straight out of the peers' memory where a stream takes
    more than one round (`_all_to_all_laid_out`)."""
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    op = header.fields["op"]
    at, total = _stream(blocks, r)
    size = link.slot_size
    k = link.next_round()
    if into is None and g.mesh is None:  # no header between every pair: the layout heads the stream
        return _all_to_all_laid_out(g, header, blocks, sizes, at, total, timeout, read)
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
        dest, got = _assembled(blocks, sizes, where, r)
    return _rounds(g, k, blocks, at, total, where, dest, follow, timeout, got)


def _assembled(blocks: list[memoryview], sizes: list[int], where: dict[int, tuple[int, int, int, int]],
               r: int) -> tuple[list[memoryview], Assembled]:
    """One buffer for every rank's block to this one, in source order (this rank's own copied in):
    where each lands, and the (units, bytes) by source that the call returns."""
    n = len(blocks)
    lengths = [len(blocks[r]) if q == r else where[q][1] for q in range(n)]
    whole = declared_empty((sum(lengths),), np.dtype(np.uint8), f"rank {r}: the blocks of its peers")
    view = memoryview(whole)
    dest, pos = [], 0
    for q in range(n):
        dest.append(view[pos:pos + lengths[q]])
        pos += lengths[q]
    dest[r][:] = blocks[r]
    got = Assembled((sizes[r] if q == r else where[q][3], dest[q]) for q in range(n))
    got.whole = whole
    return dest, got


def _rounds(g: Comm, k: int, blocks: list[memoryview], at: list[int], total: int,
            where: dict[int, tuple[int, int, int, int]], dest: list[memoryview], follow: wire.Header,
            timeout: float | None, got: list[tuple[int, memoryview]]) -> list[tuple[int, memoryview]]:
    """Round k's copies out of the peers' slots (its signal given), then the rounds left: this
    rank's stream written a slot at a time, each rank's block copied out of every stream
    (`where`: its byte offset, bytes and stream length per peer) into `dest`."""
    link = g.shm
    assert link is not None
    r, size, op = g.rank(), link.slot_size, follow.fields["op"]
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


def failed(g: Comm, op: str, exc: BaseException) -> BaseException:
    """`exc`, found in what a peer wrote into shared memory, after the group is marked broken and
    every peer told (an ABORT), as a failure inside an exchange would be: no peer waits on this
    rank's next signal until its timeout."""
    g._fail(op, g.channels, g._seq - 1, [], exc)
    return exc


# The longest stream a layout may declare: more is a corrupt layout, not a call (it would take
# rounds without end).
_STREAM_MAX = 1 << 48


_LAYOUT = 4  # int64s per rank in a layout


# With `read`, blocks past the first slot are read from their owners' memory where the longest
# stream is over this many slots; else the rounds run. 16 ranks (384 KiB slots), alternating call
# by call, every input rewritten first (2-core VM; time ratio reads / rounds): longest stream 2.5
# slots 1.10-1.15x, 3.75 slots 1.0x, 5 slots 0.83x, 7.5 slots 0.70x, 10 slots 0.63x, 40 slots 0.39-0.46x.
READ_SLOTS = 4


def layout_bytes(n: int) -> int:
    """Bytes at the head of a rank's stream where its blocks' layout lies (groups with no mesh):
    for each rank the offset of its block in the stream, the block's bytes, its rows and its
    address in this rank's memory (for `read`), then the stream's length; int64s, 64-aligned."""
    return -(-8 * (_LAYOUT * n + 1) // 64) * 64


# Reads rank p's bytes at an address in its memory into a buffer (`shm_cma`): (g, p, into, address, op).
Read = Callable[[Comm, int, memoryview, int, str], None]


def _all_to_all_laid_out(g: Comm, header: wire.Header, blocks: list[memoryview], sizes: list[int],
                         at: list[int], total: int, timeout: float | None,
                         read: Read | None) -> list[tuple[int, memoryview]]:
    """Blocks of any sizes in a group with no mesh (no header between every pair to declare
    them): each rank's stream opens with its layout, which every rank reads out of every peer's
    first slot after the first signal. Every round's signal is the call's header, the same on
    every rank (op, dtype, trailing dims: a scatter, whose ranks' differ, has its own path);
    every rank then knows every stream's length, so all run as many rounds. With `read`, where
    the longest stream is over READ_SLOTS slots, every rank instead copies what the
    first slots hold and reads the rest of its blocks out of the peers' memory, and a second
    signal ends the call (the inputs may change): every rank sees the same lengths, so all
    choose alike."""
    link = g.shm
    assert link is not None
    n, r = g.size(), g.rank()
    head = layout_bytes(n)
    at = [a + head for a in at]
    total += head
    k = link.rounds - 1  # the round `all_to_all` took
    slot = link.slot(r, k)
    # Peers read from this rank's memory only what lies past its first slot: addresses where there is some.
    _write_layout(slot, r, blocks, sizes, at, total, read is not None and total > link.slot_size)
    _write(slot, blocks, at, r, 0, link.slot_size)
    op = header.fields["op"]
    signal(g, op, header, timeout)
    fields = header.fields
    unit = dtype_from(fields["dtype"], f"rank {r}").itemsize * math.prod(fields["shape"][1:])
    where: dict[int, tuple[int, int, int, int]] = {}
    addresses = {}
    for p in link.others:
        theirs = np.frombuffer(link.slot(p, k), np.int64, _LAYOUT * n + 1)
        start, length, rows, addresses[p] = (int(v) for v in theirs[_LAYOUT * r:_LAYOUT * (r + 1)])
        stream = int(theirs[_LAYOUT * n])
        if not head <= stream <= _STREAM_MAX or start < head or rows < 0 or start + length > stream \
                or length != rows * unit:
            raise failed(g, op, ProtocolError(
                f"rank {r}: rank {p}'s all_to_all layout in shared memory declares a block of {rows} rows, "
                f"{length} bytes, at {start} of a {stream}-byte stream, for rows of {unit} bytes (group {g.gid!r})"))
        where[p] = (start, length, stream, rows)
    dest, got = _assembled(blocks, sizes, where, r)
    size = link.slot_size
    if read is not None and max([total] + [w[2] for w in where.values()]) > READ_SLOTS * size:
        for p in link.others:
            start, length = where[p][0], where[p][1]
            cut = min(max(size - start, 0), length)  # the block's bytes in the first slot
            if cut:
                dest[p][:cut] = link.slot(p, k)[start:start + cut]
            if cut < length:
                read(g, p, dest[p][cut:], addresses[p] + cut, op)
        signal(g, op, header, timeout)  # every rank has its blocks: the inputs may change
        return got
    return _rounds(g, k, blocks, at, total, where, dest, header, timeout, got)


class _Peer:
    """Who wrote a stream in shared memory, as a header check names the connection a header came on."""

    def __init__(self, g: Comm, p: int):
        self.me, self.peer, self.group = g.rank(), p, g.gid
        self.world_ranks = g.world_ranks  # (errors say "(world rank W)" in a sub-group, as over TCP)

    def describe(self) -> str:
        return f"rank {self.peer} (shared memory of group {self.group!r})"


_HEAD = 16  # a gather_v stream's head: the bytes of its fields (msgpack), then of its payload; int64s


def gather_v(g: Comm, header: wire.Header, mine: Any, check: Check,
             timeout: float | None, whole: bool = False) -> dict[int, tuple[dict[str, Any], memoryview]]:
    """This rank's parts to every rank, of any size (uneven all_gather, the object collectives),
    through the segments: each rank's stream opens with its head and its header's extra fields
    (`sizes`, and what the objects' calls add), then its parts. After the first signal (the
    call's header, the same on every rank) every rank reads every peer's head and fields out of
    its first slot and checks them as a header over TCP would be; all then know the longest
    stream, so all run as many rounds. With `whole`, every stream lands in place in one buffer,
    this rank's parts copied into theirs (`Gathered`): an uneven all_gather's result, where
    buffers of their own and a copy into the result took twice the output's memory."""
    link = g.shm
    assert link is not None
    r, op = g.rank(), header.fields["op"]
    parts, extra = mine
    body = msgpack.packb(extra, use_bin_type=True)
    head = -(-(_HEAD + len(body)) // 8) * 8
    size = link.slot_size
    if head > size:
        raise failed(g, op, ProtocolError(f"rank {r}: {op} on group {g.gid!r}: its header's fields take {len(body)} "
                                          f"bytes, over a slot of shared memory ({size})"))
    payload = sum(len(part) for part in parts)
    k = link.next_round()
    slot = link.slot(r, k)
    np.frombuffer(slot, np.int64, 2)[:] = (len(body), payload)
    slot[_HEAD:_HEAD + len(body)] = body
    items = [memoryview(b"")] * (r + 1) + list(parts)  # stream order; `_write` skips the item at index r
    at, pos = [], head
    for item in items:
        at.append(pos)
        pos += len(item)
    _write(slot, items, at, r, 0, size)
    signal(g, op, header, timeout)
    where: dict[int, tuple[int, int, int, int]] = {}
    got: dict[int, tuple[dict[str, Any], memoryview]] = Gathered() if whole else {}
    dest: list[Any] = [None] * g.size()
    for p in link.others:
        theirs = link.slot(p, k)
        length, bytes_ = (int(v) for v in np.frombuffer(theirs, np.int64, 2))
        try:
            if not 0 <= length <= size - _HEAD or not 0 <= bytes_ <= _STREAM_MAX:
                raise ValueError(length)
            fields = dict(header.fields, **msgpack.unpackb(bytes(theirs[_HEAD:_HEAD + length]), raw=False))
        except (ValueError, TypeError, msgpack.UnpackException):
            raise failed(g, op, ProtocolError(f"rank {r}: rank {p}'s {op} head in shared memory is unreadable "
                                              f"(group {g.gid!r})")) from None
        peer: Any = _Peer(g, p)
        try:
            unit = check(p, fields, peer)
            declared = sum(sizes_of(fields, peer)) * unit
            if declared != bytes_:
                raise ProtocolError(f"rank {r}: rank {p}'s {op} declares {declared} bytes in its fields and "
                                    f"{bytes_} in its shared memory (group {g.gid!r})")
            if not whole:
                dest[p] = memoryview(declared_empty((bytes_,), np.dtype(np.uint8), f"rank {r}: rank {p}'s {op}"))
        except (ProtocolError, MismatchError, RingError, MemoryError) as exc:
            raise failed(g, op, exc) from None
        their_head = -(-(_HEAD + length) // 8) * 8
        where[p] = (their_head, bytes_, their_head + bytes_, 0)
        got[p] = (fields, dest[p])
    if whole:
        _land_in_place(g, op, got, where, dest, parts, payload)
    _rounds(g, k, items, at, pos, where, dest, header, timeout, got)  # type: ignore[arg-type]
    return got


def _land_in_place(g: Comm, op: str, got: Any, where: dict[int, tuple[int, int, int, int]], dest: list[Any],
                   parts: list[memoryview], payload: int) -> None:
    """One buffer for every rank's bytes in rank order, this rank's parts copied in: where each
    peer's stream lands (`dest`), and `got`'s bytes, views of it."""
    r = g.rank()
    lengths = [payload if q == r else where[q][1] for q in range(g.size())]
    largest = max(g.shm.others, key=lambda q: lengths[q])
    try:
        buffer = declared_empty((sum(lengths),), np.dtype(np.uint8),
                                f"rank {r}: {op}'s result (rank {largest}'s stream the largest, {lengths[largest]} bytes)")
    except (ProtocolError, MemoryError) as exc:
        raise failed(g, op, exc) from None
    view, pos = memoryview(buffer), 0
    for q, length in enumerate(lengths):
        dest[q] = view[pos:pos + length]
        pos += length
    pos = 0
    for part in parts:
        dest[r][pos:pos + len(part)] = part
        pos += len(part)
    for p in g.shm.others:
        got[p] = (got[p][0], dest[p])
    got.whole = buffer


def _write_layout(slot: memoryview, r: int, blocks: list[memoryview], sizes: list[int], at: list[int], total: int,
                  addresses: bool) -> None:
    """This rank's layout (`layout_bytes`) at the head of its first slot."""
    n = len(blocks)
    layout = np.frombuffer(slot, np.int64, _LAYOUT * n + 1)
    for p, block in enumerate(blocks):
        if p != r:
            layout[_LAYOUT * p:_LAYOUT * (p + 1)] = (at[p], len(block), sizes[p],
                                                    crossmem.address(block) if addresses else 0)
    layout[_LAYOUT * n] = total


def _write(slot: memoryview, blocks: list[memoryview], at: list[int], r: int, a: int, size: int) -> None:
    """Bytes [a, a + size) of this rank's stream into its slot."""
    b = a + size
    for p, block in enumerate(blocks):
        if p == r:
            continue
        lo, hi = max(a, at[p]), min(b, at[p] + len(block))
        if lo < hi:
            slot[lo - a:hi - a] = block[lo - at[p]:hi - at[p]]
