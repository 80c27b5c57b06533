"""The ring: every rank sends to its right neighbour and receives from its left, N-1 steps.

Bandwidth-optimal: each rank sends and receives (N-1)/N of the data of an all-gather
(twice that for an all-reduce, a reduce-scatter followed by an all-gather) whatever N,
and forwards each chunk as soon as it lands. Large blocks may go half each way round
the ring (`comm.both_ways`) and over several lanes. Cost (α latency, β seconds per
byte): all-gather (N-1)α + (N-1)/N·Nmβ for blocks of m bytes; all-reduce of n bytes
2(N-1)α + 2(N-1)/N·nβ; broadcast (a pipelined chain) (N-1)α + nβ, plus an
acknowledgement back along the chain; scan (a pipelined chain from rank 0) (N-1)α + nβ.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import buffers, schedule, wire
from ..arrays import REDUCERS, byte_view
from ..comm import Comm
from ..flows import REDUCE_BLOCK, Inflow, Outflow, ReducingInflow, Segments
from .base import Algorithm
from .blocks import all_to_all_ring, gather_ring
from .common import gather_flows, own_rows, row_bounds, streams

# A ring all-gather of blocks from this size sends its own block straight from the input and
# copies it into the output piece by piece while it waits for the network, instead of before
# it starts. Measured with both variants alternating call by call in one run: 16-64 MiB 2-6%
# faster on 2 and 4 ranks, 8 MiB 1%, 2-4 MiB no gain.
IDLE_COPY_MIN = 8 << 20

# The partial sums a reduce-scatter's run holds at most (and a fold block a block more, where a
# last span takes the rest): larger calls take several runs, each reducing the same span of
# every block (`reduce_scatter`, `reduce_root`).
SCRATCH_WINDOW = 8 << 20


def gather(g: Comm, arr: np.ndarray, out: np.ndarray, header: wire.Header, timeout: float | None) -> None:
    mine = own_rows(g, arr, out)
    bounds = row_bounds(g, arr)
    op = header.fields["op"]
    if arr.nbytes >= IDLE_COPY_MIN and arr.flags.c_contiguous:
        copy = buffers.ChunkedCopy(byte_view(mine), byte_view(arr))  # while waiting for the network
        g.run(op, *gather_flows(g, byte_view(out), bounds, op, header, own=copy.src), timeout=timeout,
              idle=copy.step)
        copy.finish()
    else:
        np.copyto(mine, arr)
        g.run(op, *gather_flows(g, byte_view(out), bounds, op, header), timeout=timeout)


def gather_root(g: Comm, arr: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> np.ndarray | None:
    """The ring all-gather, kept on the root: its cost is the root's own receive, (N-1) blocks
    in N-1 pipelined steps, and every rank checks its neighbour's call."""
    out = buffers.cache.empty((g.size() * arr.shape[0],) + arr.shape[1:], arr.dtype)
    gather(g, arr, out, header, timeout)
    return out if g.rank() == root else None


def reduce_flows(g: Comm, own: np.ndarray, dest: np.ndarray, bounds: list[tuple[int, int]],
                  ufunc: Any, op: str, header: wire.Header, out: np.ndarray | None = None,
                  shift: list[int] | None = None) -> tuple[list[Inflow], list[Outflow]]:
    """Ring reduce-scatter of flat `own` (element bounds per block) leaving block r reduced in `dest`.

    A partial is forwarded as soon as it is reduced. With `out` (flat, `dest` being its block r)
    each stream goes on into the all-gather of the reduced blocks into `out`, with no pause
    between the two: the all-gather sends this rank's block as it is reduced and forwards the
    others as they land; the partial sums land in `out` too, in the blocks the all-gather fills
    later (a block's reduced bytes come only once this rank's partial of them has gone on: they
    are made from it), so no scratch holds them. Without `out` they travel in a scratch array.
    Either way a stream's outflow is its own first piece followed by its inflow, one segment behind.
    `shift[i]`: where `out` is a window of the array, block i's elements lie that much lower in
    it than in `own`.
    """
    n, r = g.size(), g.rank()
    itemsize = own.itemsize
    inflows, outflows = [], []
    byte_bounds = [(lo * itemsize, hi * itemsize) for lo, hi in bounds]
    chosen = list(streams(g, byte_bounds))

    def piece(i: int, parts: int, index: int) -> slice:
        return slice(*schedule.piece_bounds(bounds[i][0], bounds[i][1], parts, index))

    def out_piece(i: int, parts: int, index: int) -> np.ndarray:
        p = piece(i, parts, index)
        lower = shift[i] if shift is not None else 0
        return out[p.start - lower:p.stop - lower]  # type: ignore[index]

    def partials(direction: int, parts: int, index: int) -> list[slice]:
        """The pieces this stream receives as partial sums, to reduce and pass on (N-2 of them)."""
        return [piece(i, parts, index) for i in schedule.reduce_scatter_order(r, n, direction)[1][:-1]]

    # Without `out`, one scratch array holds every partial sum of the call (reused call after call).
    need = 0 if out is not None else \
        sum(p.stop - p.start for direction, _, _, index, parts in chosen for p in partials(direction, parts, index))
    scratch = buffers.cache.empty((need,), own.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
    used = 0
    for direction, send_ch, recv_ch, index, parts in chosen:
        send, recv = schedule.reduce_scatter_order(r, n, direction)
        accs = []
        for i, p in zip(recv, partials(direction, parts, index)):
            if out is not None:
                accs.append(out_piece(i, parts, index))
                continue
            accs.append(scratch[used:used + p.stop - p.start])
            used += p.stop - p.start
        mine = piece(r, parts, index)
        accs.append(dest[mine.start - bounds[r][0]:mine.stop - bounds[r][0]])
        pairs: list[tuple[np.ndarray, np.ndarray | None]] = [(acc, own[piece(i, parts, index)])
                                                             for acc, i in zip(accs, recv)]
        if out is not None:
            pairs += [(out_piece(i, parts, index), None) for i in schedule.gather_order(r, n, direction)[1]]
        inflow = ReducingInflow(recv_ch, pairs, ufunc, op, header)
        first = own[piece(send[0], parts, index)]
        out_views = [byte_view(first)] + [byte_view(acc) for acc, _ in pairs[:-1]]
        outflows.append(Outflow(send_ch, Segments(out_views), op, header, source=inflow, head=first.nbytes))
        inflows.append(inflow)
    return inflows, outflows


def reduce(g: Comm, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    """Ring reduce-scatter running straight on into the ring all-gather of the reduced blocks.

    Every block of the output is written by the engine: block r as it is reduced, the
    rest as they arrive."""
    n, r = g.size(), g.rank()
    out = buffers.cache.empty(arr.shape, arr.dtype)
    own = np.ascontiguousarray(arr).reshape(-1)
    flat = out.reshape(-1)
    bounds = schedule.block_bounds(flat.size, n)
    lo, hi = bounds[r]
    name = header.fields["op"]
    g.run(name, *reduce_flows(g, own, flat[lo:hi], bounds, REDUCERS[op], name, header, out=flat), timeout=timeout)
    return out


def reduce_root(g: Comm, arr: np.ndarray, op: str, root: int, header: wire.Header,
                timeout: float | None) -> np.ndarray | None:
    """The all-reduce's runs, in windows: each run reduces and gathers the same span of every
    block, the root landing it in its output, every other rank in one window reused run after
    run (the blocks' spans side by side), so a rank off the root holds its input and
    SCRATCH_WINDOW bytes, not a whole result. Spans start on whole fold blocks
    (`flows.REDUCE_BLOCK`) and every element stays in its block, folded in the ring's order, so
    the root gets the all-reduce's bits. Where several streams would cut the blocks (lanes, both
    directions) the all-reduce runs whole."""
    n, r = g.size(), g.rank()
    own = np.ascontiguousarray(arr).reshape(-1)
    bounds = schedule.block_bounds(own.size, n)
    ring = g.ring
    assert ring is not None
    largest = max(hi - lo for lo, hi in bounds) * own.itemsize
    if own.nbytes <= SCRATCH_WINDOW or len(schedule.streams(largest, len(ring.right), g.both_ways)) > 1:
        out = reduce(g, arr, op, header, timeout)
        return out if r == root else None
    fold = max(1, REDUCE_BLOCK // own.itemsize)
    span = max(fold, SCRATCH_WINDOW // n // own.itemsize // fold * fold)
    result = buffers.cache.empty(arr.shape, arr.dtype) if r == root else None
    width = span + fold  # (a block's last span takes a rest under a fold block too)
    window = None if result is not None else buffers.cache.empty((n * width,), own.dtype)
    flat = result.reshape(-1) if result is not None else None
    name, ufunc = header.fields["op"], REDUCERS[op]
    for spans in schedule.window_spans(bounds, span, fold):
        lo, hi = spans[r]
        if flat is not None:
            flows = reduce_flows(g, own, flat[lo:hi], spans, ufunc, name, header, out=flat)
        else:
            shift = [s_lo - i * width for i, (s_lo, _) in enumerate(spans)]
            flows = reduce_flows(g, own, window[r * width:r * width + hi - lo], spans, ufunc, name, header,  # type: ignore[index]
                                 out=window, shift=shift)
        g.run(name, *flows, timeout=timeout)
    return result


def reduce_scatter(g: Comm, own: np.ndarray, out: np.ndarray, op: str, header: wire.Header,
                   timeout: float | None) -> None:
    """The ring reduce-scatter, in windows: each run reduces the same span of every block, so its
    partial sums' scratch, (N-2) spans, stays within SCRATCH_WINDOW bytes where one run of whole
    blocks held (N-2)/N of the input."""
    n, r, per_rank = g.size(), g.rank(), out.size
    fold = max(1, REDUCE_BLOCK // own.itemsize)
    span = max(fold, SCRATCH_WINDOW // max(1, n - 2) // own.itemsize // fold * fold)
    name = header.fields["op"]
    for spans in schedule.window_spans([(i * per_rank, (i + 1) * per_rank) for i in range(n)], span, fold):
        lo, hi = spans[r]
        g.run(name, *reduce_flows(g, own, out[lo - r * per_rank:hi - r * per_rank], spans, REDUCERS[op], name, header),
              timeout=timeout)


def broadcast(g: Comm, out: np.ndarray, root: int, header: wire.Header, timeout: float | None) -> None:
    _chain(g, byte_view(out), out.itemsize, root, header, timeout)


def _chain(g: Comm, data: memoryview, itemsize: int, root: int, header: wire.Header,
           timeout: float | None) -> None:
    """A chain from the root round the ring, each rank forwarding bytes as they land.

    The chain's last rank (clockwise) also sends its header to the root, so every rank
    checks its left neighbour's call before any data moves. Then an acknowledgement goes
    back along the chain (lane 0, clockwise order): a rank sends it to its left once it has
    the whole array and its right neighbour's acknowledgement, so a rank returns only once
    every rank after it has its data, and the root once every rank has.
    """
    n, r = g.size(), g.rank()
    ring = g.ring
    assert ring is not None
    total = len(data)
    chosen = schedule.streams(total, len(ring.right), g.both_ways)
    inflows, outflows = [], []
    for index, (direction, lane) in enumerate(chosen):
        a, b = schedule.piece_bounds(0, total // itemsize, len(chosen), index)
        part = data[a * itemsize:b * itemsize]
        upstream, downstream = schedule.chain_order(r, n, root, direction)
        to_right = direction == 1
        inflow = None
        if upstream is not None:
            inflow = Inflow((ring.left if to_right else ring.right)[lane], Segments([part]), "broadcast", header)
            inflows.append(inflow)
        if downstream is not None:
            outflows.append(Outflow((ring.right if to_right else ring.left)[lane], Segments([part]),
                                    "broadcast", header, source=inflow, head=0 if inflow else None))
    pos = (r - root) % n  # clockwise hops from the root
    closing = wire.Header(dict(header.fields, step="close"))
    if pos == n - 1:  # right[0] carries nothing else of this call from here
        outflows.append(Outflow(ring.right[0], Segments([]), "broadcast", closing))
    elif pos == 0:  # nor left[0] to the root
        inflows.append(Inflow(ring.left[0], Segments([]), "broadcast", closing))
    # Every step spins (or not) as the call's size says: the root only sends, and the acknowledgement
    # back along the chain waits on the bandwidth of the bytes after it.
    g.run("broadcast", inflows, outflows, timeout=timeout, size=total)
    ack = wire.Header(dict(header.fields, step="ack"))
    if pos < n - 1:
        g.run("broadcast", [Inflow(ring.right[0], Segments([]), "broadcast", ack)], [], timeout=timeout, size=total)
    if pos > 0:
        g.run("broadcast", [], [Outflow(ring.left[0], Segments([]), "broadcast", ack)], timeout=timeout, size=total)


def scan(g: Comm, arr: np.ndarray, op: str, exclusive: bool, header: wire.Header,
         timeout: float | None) -> np.ndarray | None:
    """A pipelined chain from rank 0 to rank N-1 round the ring: rank r folds its array into the
    prefix from its left as it lands, and passes the fold on to its right as it is made (an
    exclusive scan keeps what landed and passes on the fold, made in a scratch window: over
    SCRATCH_WINDOW bytes the chain runs once per window, each run a span of the array). Rank
    N-1 sends its header alone on to rank 0, so every rank checks its left neighbour's call."""
    n, r = g.size(), g.rank()
    own = np.ascontiguousarray(arr).reshape(-1)
    out = buffers.cache.empty(arr.shape, arr.dtype) if r or not exclusive else None
    flat = out.reshape(-1) if out is not None else None
    if not exclusive:  # the prefix lands in the result and becomes this rank's (rank 0's is its own)
        if r == 0:
            np.copyto(flat, own)
        _scan_run(g, own, None if r == 0 else flat, None if r == 0 else flat, op, header, timeout)
        return out
    fold = max(1, REDUCE_BLOCK // own.itemsize)
    span = max(own.size, 1) if own.nbytes <= SCRATCH_WINDOW else max(fold, SCRATCH_WINDOW // own.itemsize // fold * fold)
    passed = buffers.cache.empty((min(own.size, span + fold),), own.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES) \
        if 0 < r < n - 1 else None
    for ((lo, hi),) in schedule.window_spans([(0, own.size)], span, fold):
        _scan_run(g, own[lo:hi], None if flat is None else flat[lo:hi], None if passed is None else passed[:hi - lo],
                  op, header, timeout)
    return out


def _scan_run(g: Comm, own: np.ndarray, landed: np.ndarray | None, passed: np.ndarray | None, op: str,
              header: wire.Header, timeout: float | None) -> None:
    """One run of the scan's chain over flat `own` (rank 0: `landed` None): the prefix from
    the left lands in `landed` and is folded with `own` into `passed` (`landed` itself for an
    inclusive scan; None on the last rank of an exclusive one), which goes on to the right."""
    n, r = g.size(), g.rank()
    ring = g.ring
    assert ring is not None
    name = header.fields["op"]
    inflows: list[Inflow] = []
    outflows: list[Outflow] = []
    closing = wire.Header(dict(header.fields, step="close"))
    inflow = None
    if r == 0:
        sent = own
        inflows.append(Inflow(ring.left[0], Segments([]), name, closing))
    else:
        pair: tuple[Any, ...] = (landed, own) if passed is landed else (landed, own, passed) if passed is not None \
            else (landed, None)  # (the last rank of an exclusive scan keeps the prefix as it lands)
        sent = passed if passed is not None else landed
        inflow = ReducingInflow(ring.left[0], [pair], REDUCERS[op], name, header)
        inflows.append(inflow)
    if r < n - 1:
        outflows.append(Outflow(ring.right[0], Segments([byte_view(sent)]), name, header, source=inflow,
                                head=0 if inflow is not None else None))
    else:
        outflows.append(Outflow(ring.right[0], Segments([]), name, closing))
    g.run(name, inflows, outflows, timeout=timeout)


ALGORITHM = Algorithm("ring", gather=gather, reduce=reduce, reduce_scatter=reduce_scatter, broadcast=broadcast,
                      all_to_all=all_to_all_ring, gather_v=gather_ring, gather_root=gather_root, reduce_root=reduce_root,
                      scan=scan)
