"""Exchanges of blocks whose sizes the receiver learns from the sender's header.

For the collectives where a receiver cannot know what comes: all_to_all with splits, an
uneven all_gather, scatter (non-roots learn the root's shape and dtype), the object
collectives. Every stream's header carries `sizes`, the lengths of the parts it carries
(in units of the call: rows of an array, bytes of an object); the receiver's
`check(src, fields, ch)` compares the sender's call with its own (MismatchError), bounds
what it accepts and returns the unit's bytes, all before anything is allocated. Used by the
direct algorithm (one step over the mesh, every pair exchanging a stream, so every rank
checks every other rank's call) and the ring's (N-1 hops, store and forward: at hop s a
rank receives from its left neighbour the stream of the rank s places to its left, so
it too checks every other rank's call, in the origin's own header, which relayers pass on).
"""

from __future__ import annotations

import ast
import threading
from typing import Any, Callable

import numpy as np

from .. import buffers, wire
from ..channel import Channel
from ..comm import Comm
from ..errors import MismatchError, ProtocolError
from ..flows import Outflow, Segments, SizedInflow

# (source rank, its header's fields, the channel) -> bytes per unit of `sizes`; raises if refused.
# It compares the call before it reads `sizes`: a header of another call may have none.
Check = Callable[[int, dict[str, Any], Channel], int]
Parts = tuple[list[memoryview], dict[str, Any]]  # a stream's payload parts, and its header's fields (with sizes)


class Assembled(list):
    """An all-to-all's (units, bytes) by source whose blocks lie in order in `whole`, one
    uint8 array: the result itself, no copy needed."""

    whole: np.ndarray


class Gathered(dict):
    """A gather_v's (its header's fields, its bytes) by source whose bytes, this rank's own
    between them, lie in rank order in `whole`, one uint8 array: an uneven all_gather's result
    itself, no copy needed."""

    whole: np.ndarray


def sizes_of(fields: dict[str, Any], ch: Channel, count: int | None = None) -> list[int]:
    """The `sizes` a header declares: non-negative ints (`count` of them when given)."""
    sizes = fields.get("sizes")
    if (not isinstance(sizes, list) or (count is not None and len(sizes) != count)
            or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in sizes)):
        raise ProtocolError(f"rank {ch.me}: {ch.describe()} sent a header whose sizes are {sizes!r}")
    return sizes


def dtype_of(tag: Any, ch: Channel) -> np.dtype:
    """A dtype from a header's tag (`wire.dtype_tag`)."""
    return dtype_from(tag, f"rank {ch.me}: {ch.describe()}")


def dtype_from(tag: Any, sender: str) -> np.dtype:
    """A dtype from a tag (`wire.dtype_tag`) that `sender` sent; MismatchError naming it if numpy
    here does not know it."""
    dt = _parsed.get(tag) if isinstance(tag, str) else None
    if dt is not None:
        return dt
    try:
        if tag.startswith("["):
            # A structured dtype's descr names its padding '' (`wire.dtype_tag`): numpy's own reader
            # keeps it padding, where np.dtype() would make it fields.
            with _parse_lock:
                descr = ast.literal_eval(tag)
            dt = np.lib.format.descr_to_dtype(descr)
        else:
            dt = np.dtype(tag)
    except (TypeError, ValueError, SyntaxError, AttributeError, RecursionError, MemoryError, SystemError):
        raise MismatchError(f"{sender} sends dtype {tag!r}, which numpy here does not know "
                            f"(an extension dtype: import its package, e.g. ml_dtypes)") from None
    if dt.hasobject or dt.itemsize == 0 or dt.subdtype is not None:
        # No rank sends these (`arrays.as_array`): object references, no fixed item size, or a
        # shape inside the dtype. Their bytes landed as such could crash this process.
        raise ProtocolError(f"{sender} sends dtype {tag!r}, which no ringdist rank sends (objects, no fixed "
                            f"item size, or a subarray)")
    if len(_parsed) >= PARSED_KEPT:
        _parsed.clear()
    _parsed[tag] = dt
    return dt


PARSED_KEPT = 256  # dtypes `dtype_from` keeps, by tag
_parsed: dict[str, np.dtype] = {}
# Python's parser is not safe for two threads at once (3.11: "SystemError: AST constructor
# recursion depth mismatch"), and every group's runner may read a structured dtype's tag.
_parse_lock = threading.Lock()


def common(fields: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A header's fields that every rank of the call must agree on."""
    return {k: v for k, v in fields.items() if k not in wire.PER_SENDER_FIELDS and k not in drop}


def declared_empty(shape: tuple[int, ...], dtype: np.dtype, who: str) -> np.ndarray:
    """An array for what `who` (a peer, as errors name it) declares: a MemoryError naming it where
    there is no memory; a ProtocolError where no array can be so large (numpy's own limits)."""
    try:
        return buffers.cache.empty(shape, dtype)
    except MemoryError:
        exc = MemoryError(f"{who} declares shape={shape}, dtype={dtype}: no memory for it here")
        exc.ringdist_named = True  # type: ignore[attr-defined]  (`SizedInflow` leaves it as it is)
        raise exc from None
    except (ValueError, OverflowError) as exc:
        raise ProtocolError(f"{who} declares shape={shape}, dtype={dtype}, which no array can have: {exc}") from None


def _landing(nbytes: int) -> memoryview:
    """Where a stream lands: reused memory from 256 KiB (held while anything views it)."""
    return memoryview(buffers.cache.empty((nbytes,), np.dtype(np.uint8)))


def direct(g: Comm, header: wire.Header, sends: dict[int, Parts], check: Check,
           timeout: float | None) -> dict[int, tuple[dict[str, Any], memoryview]]:
    """One step over the mesh: `sends[p]` to every other rank p, one stream from each.
    Returns, per source, its header's fields and its payload."""
    mesh = g.mesh
    assert mesh is not None
    op = header.fields["op"]
    inflows, outflows = [], []
    for p in mesh.order:
        parts, extra = sends[p]
        outflows.append(Outflow(mesh.peers[p], Segments(parts), op, wire.Header(dict(header.fields, **extra))))

        def accept(theirs: dict[str, Any], ch: Channel, p: int = p) -> memoryview:
            unit = check(p, theirs, ch)
            return _landing(sum(sizes_of(theirs, ch)) * unit)

        inflows.append(SizedInflow(mesh.peers[p], op, accept, hint=sum(map(len, parts))))
    g.run(op, inflows, outflows, timeout=timeout)
    return {p: (flow.fields, flow.dest) for p, flow in zip(mesh.order, inflows)}


def shift(g: Comm, header: wire.Header, first: Parts,
          accept: Callable[[int, dict[str, Any], Channel], int],
          forward: Callable[[int, dict[str, Any], memoryview], Parts],
          timeout: float | None) -> None:
    """N-1 hops round the ring (lane 0, clockwise). At hop s (1..N-1) a rank sends a stream to
    its right neighbour and receives one from its left: the stream of rank r-s, relayed.
    `first` is what this rank sends at hop 1 (its header fields: its own call's, with sizes);
    `accept(origin, fields, ch)` checks a received stream's header and returns its unit's
    bytes; `forward(origin, fields, payload)` takes what this rank needs and returns what to
    send at the next hop (with the origin's fields: every rank sees every other rank's call)."""
    n, r = g.size(), g.rank()
    ring = g.ring
    assert ring is not None
    op = header.fields["op"]
    parts, fields = first
    for s in range(1, n):
        origin = (r - s) % n

        def land(theirs: dict[str, Any], ch: Channel, origin: int = origin) -> memoryview:
            unit = accept(origin, theirs, ch)
            return _landing(sum(sizes_of(theirs, ch)) * unit)

        inflow = SizedInflow(ring.left[0], op, land, hint=sum(map(len, parts)))
        sent = wire.Header(dict(fields, hop=s))
        g.run(op, [inflow], [Outflow(ring.right[0], Segments(parts), op, sent)], timeout=timeout)
        assert inflow.fields is not None and inflow.dest is not None
        parts, fields = forward(origin, inflow.fields, inflow.dest)


def all_to_all_direct(g: Comm, header: wire.Header, blocks: list[memoryview], sizes: list[int], check: Check,
                      timeout: float | None, into: list[memoryview] | None = None) -> list[tuple[int, memoryview]]:
    """Block p (sizes[p] units) to rank p, one step over the mesh. Returns (size, bytes) of
    the block from each rank, by source (this rank's own: its block for itself). (`into` is
    for shared memory; blocks of one size known everywhere go by `direct.all_to_all_even`.)"""
    r = g.rank()
    got = direct(g, header, {p: ([blocks[p]], {"sizes": [sizes[p]]}) for p in range(g.size()) if p != r},
                 check, timeout)
    return [(sizes[q], blocks[q]) if q == r else (got[q][0]["sizes"][0], got[q][1]) for q in range(g.size())]


def all_to_all_ring(g: Comm, header: wire.Header, blocks: list[memoryview], sizes: list[int], check: Check,
                    timeout: float | None, into: list[memoryview] | None = None) -> list[tuple[int, memoryview]]:
    """Round the ring: at hop 1 a rank sends the blocks for ranks r+1, ..., r+N-1; at each hop
    it keeps the first block of what arrives (its own) and passes the rest on. Its block is
    copied out of the hop's buffer at once (into `into[origin]` where given), so each hop's
    buffer goes once its rest is passed on: a view kept in it would hold all N-1 buffers,
    N(N-1)/2 blocks, until the call ends (64 ranks with 1 MiB blocks: 2 GiB a rank)."""
    n, r = g.size(), g.rank()
    out: list[Any] = [None] * n
    out[r] = (sizes[r], blocks[r])
    order = [(r + k) % n for k in range(1, n)]
    units: dict[int, int] = {}

    def accept(origin: int, fields: dict[str, Any], ch: Channel) -> int:
        declared = fields.get("sizes")  # the call is checked first: another call's header has none
        units[origin] = unit = check(origin, dict(fields, sizes=declared[:1] if isinstance(declared, list) else None), ch)
        sizes_of(fields, ch, n - (r - origin) % n)
        return unit

    def forward(origin: int, fields: dict[str, Any], payload: memoryview) -> Parts:
        declared = fields["sizes"]
        k = declared[0] * units[origin]
        if into is not None and len(into[origin]) == k:
            into[origin][:] = payload[:k]
            kept = into[origin]
        else:
            kept = memoryview(bytearray(payload[:k]))
        out[origin] = (declared[0], kept)
        return [payload[k:]], dict(common(fields), sizes=declared[1:])

    shift(g, header, ([blocks[p] for p in order], dict(header.fields, sizes=[sizes[p] for p in order])),
          accept, forward, timeout)
    return out


def gather_direct(g: Comm, header: wire.Header, mine: Parts, check: Check,
                  timeout: float | None) -> dict[int, tuple[dict[str, Any], memoryview]]:
    """This rank's parts to every rank, one step over the mesh; every other rank's, by source."""
    return direct(g, header, {p: mine for p in range(g.size()) if p != g.rank()}, check, timeout)


def gather_ring(g: Comm, header: wire.Header, mine: Parts, check: Check,
                timeout: float | None) -> dict[int, tuple[dict[str, Any], memoryview]]:
    """Round the ring: each rank's parts travel N-1 hops, every rank keeping them and passing them on."""
    got: dict[int, tuple[dict[str, Any], memoryview]] = {}

    def accept(origin: int, fields: dict[str, Any], ch: Channel) -> int:
        unit = check(origin, fields, ch)
        sizes_of(fields, ch)
        return unit

    def forward(origin: int, fields: dict[str, Any], payload: memoryview) -> Parts:
        got[origin] = (fields, payload)
        return [payload], {k: v for k, v in fields.items() if k != "hop"}

    parts, extra = mine
    shift(g, header, (parts, dict(header.fields, **extra)), accept, forward, timeout)
    return got
