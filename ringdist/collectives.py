"""Collective operations on numpy arrays, written against a group's ring of channels.

Every collective takes `timeout=` (seconds without progress; default RINGDIST_TIMEOUT).

Each function checks its arguments, lays the input and output out as byte streams
(`schedule` says which block goes where), and hands the flows to `Group.run`. Array
data is copied at most once into the output (gathers) or read straight from the
input (reductions); received bytes land with `recv_into` where they belong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import buffers, schedule, wire, world
from .group import Group
from .transfer import Inflow, Outflow, ReducingInflow, Segments


def _group(group: Group | None) -> Group:
    if group is None:
        return world.current()
    if not isinstance(group, Group):
        raise TypeError(f"group must be a ringdist Group or None, got {type(group).__name__}")
    return group


def as_array(x: Any) -> np.ndarray:
    """`x` as an array of a dtype ringdist can send: any dtype with a fixed item size."""
    arr = np.asarray(x)
    if arr.dtype.hasobject:
        raise TypeError("ringdist sends raw array bytes; object arrays are not supported")
    if arr.dtype.itemsize == 0:
        raise TypeError(f"dtype {arr.dtype} has no fixed item size")
    return arr


def as_rows(x: Any) -> np.ndarray:
    """The input of a gather: a 0-d array counts as shape (1,)."""
    arr = as_array(x)
    return arr.reshape(1) if arr.ndim == 0 else arr


def byte_view(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (no copy)."""
    try:
        return memoryview(arr).cast("B")  # a third of the time of the numpy route, on every small call
    except (TypeError, ValueError):  # dtypes without a buffer format (datetime64), empty N-d shapes
        return memoryview(arr.reshape(-1).view(np.uint8))


def _streams(group: Group, bounds: list[tuple[int, int]]):
    """(direction, lane, piece index, piece count) of every stream for blocks with these byte bounds."""
    ring = group.ring
    assert ring is not None
    largest = max(hi - lo for lo, hi in bounds)
    chosen = schedule.streams(largest, len(ring.right), group.both_ways)
    for index, (direction, lane) in enumerate(chosen):
        send_ch, recv_ch = ((ring.right[lane], ring.left[lane]) if direction == 1
                            else (ring.left[lane], ring.right[lane]))
        yield direction, send_ch, recv_ch, index, len(chosen)


def gather_flows(group: Group, out: memoryview, bounds: list[tuple[int, int]], op: str,
                 header: wire.Header | None, unit: int = 1,
                 own: memoryview | None = None) -> tuple[list[Inflow], list[Outflow]]:
    """Flows of a ring all-gather into `out`, block i at byte range bounds[i]; own block in
    place, or sent from `own` (its bytes, not yet copied into `out`).

    Each received byte is forwarded as soon as it lands. `unit` keeps pieces whole elements.
    """
    n, r = group.size(), group.rank()
    inflows, outflows = [], []
    base = bounds[r][0]
    for direction, send_ch, recv_ch, index, parts in _streams(group, bounds):
        if parts == 1:
            pieces = [out[lo:hi] for lo, hi in bounds]
            mine = own
        else:
            pieces = []
            for lo, hi in bounds:
                a, b = schedule.piece_bounds(lo // unit, hi // unit, parts, index)
                pieces.append(out[a * unit:b * unit])
            a, b = schedule.piece_bounds(bounds[r][0] // unit, bounds[r][1] // unit, parts, index)
            mine = None if own is None else own[a * unit - base:b * unit - base]
        send, recv = schedule.gather_order(r, n, direction)
        inflow = Inflow(recv_ch, Segments([pieces[i] for i in recv]), op, header)
        sent = [pieces[i] for i in send]
        if mine is not None:
            sent[0] = mine  # the stream starts with this rank's own block
        outflow = Outflow(send_ch, Segments(sent), op, header, source=inflow, head=len(pieces[r]))
        inflows.append(inflow)
        outflows.append(outflow)
    return inflows, outflows


def direct_parts(group: Group, out: memoryview, bounds: list[tuple[int, int]]) -> tuple[list[memoryview], list[memoryview]]:
    """A direct all-gather's views of `out`: this rank's block (sent to every rank), and the
    block of each rank in the mesh's order (received from it). One step instead of the
    ring's N-1: small messages pay one wake-up, not N-1 in a row."""
    mesh = group.mesh
    assert mesh is not None
    lo, hi = bounds[group.rank()]
    return [out[lo:hi]] * len(mesh.order), [out[bounds[p][0]:bounds[p][1]] for p in mesh.order]


def _header(g: Group, op: str, arr: np.ndarray, direct: bool) -> wire.Header:
    # The path is in the header: ranks configured differently fail with MismatchError, never hang.
    return g.next_header(op, arr, path="direct") if direct else g.next_header(op, arr)


def gather_rows(x: Any, *, group: Group | None = None, op: str = "all_gather",
                timeout: float | None = None) -> np.ndarray:
    """all_gather under a given op name (split's exchange cannot pair with a user's all_gather)."""
    g = _group(group)
    arr = as_rows(x)
    rows = arr.shape[0]
    out = buffers.cache.empty((g.size() * rows,) + arr.shape[1:], arr.dtype)
    n = g.size()
    direct = g.direct(arr.nbytes)
    mine = out[g.rank() * rows:(g.rank() + 1) * rows]
    copy = None
    if n > 1 and not direct and arr.nbytes >= IDLE_COPY_MIN and arr.flags.c_contiguous:
        copy = buffers.ChunkedCopy(byte_view(mine), byte_view(arr))  # while waiting for the network
    else:
        np.copyto(mine, arr)
    doubling = direct and n > 2 and n & (n - 1) == 0 and arr.nbytes <= DOUBLING_GATHER_MAX
    header = g.next_header(op, arr, path="doubling") if doubling else _header(g, op, arr, direct)
    if n > 1:
        bounds = [(i * arr.nbytes, (i + 1) * arr.nbytes) for i in range(n)]
        if doubling:
            _doubling_gather(g, byte_view(out), arr.nbytes, op, header, timeout)
        elif direct:
            g.exchange(op, *direct_parts(g, byte_view(out), bounds), header, timeout=timeout)
        elif copy is None:
            g.run(op, *gather_flows(g, byte_view(out), bounds, op, header), timeout=timeout)
        else:
            g.run(op, *gather_flows(g, byte_view(out), bounds, op, header, own=copy.src),
                  timeout=timeout, idle=copy.step)
            copy.finish()
        g.finish(op)
    return out


# A ring all-gather of blocks from this size sends its own block straight from the input and
# copies it into the output piece by piece while it waits for the network, instead of before
# it starts. Measured with both variants alternating call by call in one run: 16-64 MiB 2-6%
# faster on 2 and 4 ranks, 8 MiB 1%, 2-4 MiB no gain.
IDLE_COPY_MIN = 8 << 20


# Blocks up to this size gather by recursive doubling on 4 or 8 ranks. Measured on 4 ranks
# (alternating runs, barrier before each call): 4-32 KiB 20-40% faster than one exchange with
# every rank; 64 KiB 25% slower.
DOUBLING_GATHER_MAX = 32 * 1024


def _doubling_gather(g: Group, data: memoryview, size: int, op: str, header: wire.Header,
                     timeout: float | None) -> None:
    """All-gather by recursive doubling: at step k, the 2^k blocks this rank holds (a
    contiguous run of `data`) go to rank r XOR 2^k, whose run comes back."""
    n, r = g.size(), g.rank()
    k = 1
    while k < n:
        base, partner = r & ~(k - 1), r ^ k
        other = partner & ~(k - 1)
        g.exchange(op, [data[base * size:(base + k) * size]], [data[other * size:(other + k) * size]],
                   header, timeout=timeout, peers=[partner])
        k <<= 1


def all_gather(x: Any, *, group: Group | None = None, timeout: float | None = None) -> np.ndarray:
    """Every rank's `x` concatenated along axis 0, in rank order (a 0-d `x` counts as shape (1,)).

    All ranks must pass the same shape and dtype; otherwise every rank raises MismatchError.
    """
    return gather_rows(x, group=group, op="all_gather", timeout=timeout)


# ---- reductions ------------------------------------------------------------------------------


def _reduce_flows(g: Group, own: np.ndarray, dest: np.ndarray, bounds: list[tuple[int, int]],
                  ufunc: Any, op: str, header: wire.Header,
                  out: np.ndarray | None = None) -> tuple[list[Inflow], list[Outflow]]:
    """Ring reduce-scatter of flat `own` (element bounds per block) leaving block r reduced in `dest`.

    Partial sums travel in scratch buffers; a partial is forwarded as soon as it is reduced.
    With `out` (flat, `dest` being its block r) each stream goes on into the all-gather of
    the reduced blocks into `out`, with no pause between the two: the all-gather sends this
    rank's block as it is reduced and forwards the others as they land. Either way a
    stream's outflow is its own first piece followed by its inflow, one segment behind.
    """
    n, r = g.size(), g.rank()
    itemsize = own.itemsize
    inflows, outflows = [], []
    byte_bounds = [(lo * itemsize, hi * itemsize) for lo, hi in bounds]
    streams = list(_streams(g, byte_bounds))

    def piece(i: int, parts: int, index: int) -> slice:
        return slice(*schedule.piece_bounds(bounds[i][0], bounds[i][1], parts, index))

    def partials(direction: int, parts: int, index: int) -> list[slice]:
        """The pieces this stream receives as partial sums, to reduce and pass on (N-2 of them)."""
        return [piece(i, parts, index) for i in schedule.reduce_scatter_order(r, n, direction)[1][:-1]]

    # One scratch array holds every partial sum of the call; a large one is reused call after call.
    need = sum(p.stop - p.start for direction, _, _, index, parts in streams for p in partials(direction, parts, index))
    scratch = buffers.cache.empty((need,), own.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
    used = 0
    for direction, send_ch, recv_ch, index, parts in streams:
        send, recv = schedule.reduce_scatter_order(r, n, direction)
        accs = []
        for p in partials(direction, parts, index):
            accs.append(scratch[used:used + p.stop - p.start])
            used += p.stop - p.start
        mine = piece(r, parts, index)
        accs.append(dest[mine.start - bounds[r][0]:mine.stop - bounds[r][0]])
        pairs: list[tuple[np.ndarray, np.ndarray | None]] = [(acc, own[piece(i, parts, index)])
                                                             for acc, i in zip(accs, recv)]
        if out is not None:
            pairs += [(out[piece(i, parts, index)], None) for i in schedule.gather_order(r, n, direction)[1]]
        inflow = ReducingInflow(recv_ch, pairs, ufunc, op, header)
        first = own[piece(send[0], parts, index)]
        out_views = [byte_view(first)] + [byte_view(acc) for acc, _ in pairs[:-1]]
        outflows.append(Outflow(send_ch, Segments(out_views), op, header, source=inflow, head=first.nbytes))
        inflows.append(inflow)
    return inflows, outflows


# A reduction exchanges whole arrays only up to this size. Measured on 4 ranks (alternating runs,
# barrier before each call): recursive doubling beat one step with every rank from 4 KiB to
# 256 KiB (by 15-60%), and lost to the two-step block exchange at 1 MiB.
ONE_SHOT_MAX = 256 * 1024

_REDUCERS = {"all_sum": np.add, "all_max": np.maximum, "all_min": np.minimum, "all_prod": np.multiply}


def _check_reducible(arr: np.ndarray, op: str) -> None:
    if arr.dtype.kind not in "biufc":  # strings would "add" by concatenation, truncated: refuse
        raise TypeError(f"{op}: dtype {arr.dtype} is not numeric or bool; only those can be reduced")
    probe = np.zeros(1, dtype=arr.dtype)
    try:
        _REDUCERS[op](probe, probe, out=probe)
    except TypeError:
        raise TypeError(f"{op}: numpy cannot reduce dtype {arr.dtype} with {_REDUCERS[op].__name__}") from None


def _all_reduce(x: Any, group: Group | None, op: str, timeout: float | None) -> np.ndarray:
    g = _group(group)
    arr = as_array(x)
    _check_reducible(arr, op)
    out = _reduce(g, arr, op, timeout)
    if g.size() > 1:
        g.finish(op)
    return out


def _reduce(g: Group, arr: np.ndarray, op: str, timeout: float | None) -> np.ndarray:
    """all_reduce of `arr` on the path its size selects."""
    n, r = g.size(), g.rank()
    if n == 2 and arr.nbytes <= PAIR_EXCHANGE_MAX and g.direct(arr.nbytes) and not g.both_ways:
        # One connection between the pair: one exchange on it, the other's array landing in the
        # result, and one fold. Measured call by call on that connection against what it replaced:
        # 512 KiB 24-32% faster than the two-step exchange of half arrays, 64-256 KiB 9-16% and
        # 4 KiB 5% faster than recursive doubling when that still copied the input first.
        return _doubling_reduce(g, arr, op, g.next_header(op, arr, path="pairwise"), timeout)
    if arr.nbytes <= ONE_SHOT_MAX and g.direct(arr.nbytes):  # small: whole arrays, directly
        if n & (n - 1) == 0:  # 2, 4 or 8 ranks: log2(N) pairwise steps
            return _doubling_reduce(g, arr, op, g.next_header(op, arr, path="doubling"), timeout)
        return _direct_reduce(g, arr, op, g.next_header(op, arr, path="direct"), timeout)  # one step
    if g.direct(-(-arr.nbytes // n)):  # medium: two steps of one block each way
        return _two_shot_reduce(g, arr, op, g.next_header(op, arr, path="two-shot"), timeout)
    if n == 2 and arr.nbytes <= PAIR_EXCHANGE_MAX:
        # Its own path name: the pair's exchange on the direct connection sends the same bytes on
        # another connection, and a rank whose settings chose the other would wait for nothing.
        return _pair_reduce(g, arr, op, g.next_header(op, arr, path="pairwise-ring"), timeout)
    header = g.next_header(op, arr)
    out = buffers.cache.empty(arr.shape, arr.dtype)
    if n == 1:
        np.copyto(out, arr)
        return out
    # Every block of `out` is written by the transfer: block r as it is reduced, the rest as they arrive.
    own = np.ascontiguousarray(arr).reshape(-1)
    flat = out.reshape(-1)
    bounds = schedule.block_bounds(flat.size, n)
    lo, hi = bounds[r]
    g.run(op, *_reduce_flows(g, own, flat[lo:hi], bounds, _REDUCERS[op], op, header, out=flat), timeout=timeout)
    return out


# Two ranks exchange whole arrays up to this size. Measured with both variants alternating
# call by call in one run (barrier before each call): 1 MiB 17-24% and 2 MiB 14-16% faster
# than the ring's reduce-scatter and all-gather, 3 MiB 4% faster, 4-8 MiB 7-9% slower.
PAIR_EXCHANGE_MAX = 2 << 20


def _pair_reduce(g: Group, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    """Two ranks, on the ring's connections: each sends its whole array (split over both of
    the pair's connections when the ring goes both ways) and folds the other's into the
    output as it lands, rank 0's operand first on both ranks. (Up to RINGDIST_DIRECT_MAX,
    going one way, the pair exchanges on its direct connection instead: `_doubling_reduce`;
    at 1 MiB the two tie, in separate launches.)"""
    own = np.ascontiguousarray(arr).reshape(-1)
    out = buffers.cache.empty(arr.shape, arr.dtype)
    flat = out.reshape(-1)
    ufunc = _REDUCERS[op]
    inflows, outflows = [], []
    for direction, send_ch, recv_ch, index, parts in _streams(g, [(0, own.nbytes)]):
        a, b = schedule.piece_bounds(0, own.size, parts, index)
        inflows.append(ReducingInflow(recv_ch, [(flat[a:b], own[a:b])], ufunc, op, header,
                                      own_first=g.rank() == 0))
        outflows.append(Outflow(send_ch, Segments([byte_view(own[a:b])]), op, header))
    g.run(op, inflows, outflows, timeout=timeout)
    return out


def _doubling_reduce(g: Group, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    """Recursive doubling (N a power of two): log2(N) exchanges of the whole array with rank
    r XOR 2^k, each followed by a reduction with the lower rank's operand first.

    The first step sends the input itself and receives straight into the result, folded in
    place; later steps send the result so far and receive into scratch."""
    n, r = g.size(), g.rank()
    ufunc = _REDUCERS[op]
    if arr.flags.c_contiguous:
        mine, acc = arr, buffers.cache.empty(arr.shape, arr.dtype)  # an array even when 0-d
    else:
        mine = acc = np.array(arr, order="C", copy=True)  # a copy is needed anyway: fold into it
    theirs = None
    k = 1
    while k < n:
        partner = r ^ k
        if mine is acc:  # the result so far is being sent: the partner's array lands in scratch
            if theirs is None:
                theirs = buffers.cache.empty(arr.shape, arr.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
            into = theirs
        else:
            into = acc
        g.exchange(op, [byte_view(mine)], [byte_view(into)], header, timeout=timeout, peers=[partner])
        if r < partner:
            ufunc(mine, into, out=acc)
        else:
            ufunc(into, mine, out=acc)
        mine = acc
        k <<= 1
    return acc


def _two_shot_reduce(g: Group, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    """Reduce-scatter then all-gather, each one direct exchange: rank p gets block p of every
    rank's array, reduces them in rank order, and sends the result to every rank.

    The ring's bytes (2(N-1)/N of the array each way) in 2 steps instead of 2(N-1).
    """
    n, r = g.size(), g.rank()
    mesh = g.mesh
    assert mesh is not None
    own = np.ascontiguousarray(arr).reshape(-1)
    out = buffers.cache.empty(arr.shape, arr.dtype)
    flat = out.reshape(-1)
    bounds = schedule.block_bounds(flat.size, n)
    lo, hi = bounds[r]
    stack = buffers.cache.empty((n, hi - lo), arr.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)  # row q: rank q's block r
    g.exchange(op, [byte_view(own[bounds[p][0]:bounds[p][1]]) for p in mesh.order],
               [byte_view(stack[p]) for p in mesh.order], header, timeout=timeout)
    mine = flat[lo:hi]
    _fold([own[lo:hi] if q == r else stack[q] for q in range(n)], _REDUCERS[op], mine)
    g.exchange(op, [byte_view(mine)] * len(mesh.order),
               [byte_view(flat[bounds[p][0]:bounds[p][1]]) for p in mesh.order], header, timeout=timeout)
    return out


def _direct_reduce(g: Group, arr: np.ndarray, op: str, header: wire.Header, timeout: float | None) -> np.ndarray:
    """Gather every rank's array directly, then reduce them in rank order (the same on every rank)."""
    n = g.size()
    stack = buffers.cache.empty((n,) + arr.shape, arr.dtype, min_bytes=buffers.SCRATCH_MIN_BYTES)
    stack[g.rank()] = arr
    size = arr.nbytes
    g.exchange(op, *direct_parts(g, byte_view(stack), [(i * size, (i + 1) * size) for i in range(n)]), header,
               timeout=timeout)
    out = np.empty(arr.shape, arr.dtype)  # an array even when 0-d
    _fold(list(stack), _REDUCERS[op], out)
    return out


def _fold(rows: list[np.ndarray], ufunc: Any, out: np.ndarray) -> None:
    """out = rows[0] op rows[1] op ... in rank order, so every rank computing it gets the same bits."""
    np.copyto(out, rows[0])
    for row in rows[1:]:
        ufunc(out, row, out=out)


def all_sum(x: Any, *, group: Group | None = None, timeout: float | None = None) -> np.ndarray:
    """Element-wise sum over the group; every rank gets a bitwise-identical result (bool: logical or)."""
    return _all_reduce(x, group, "all_sum", timeout)


def all_max(x: Any, *, group: Group | None = None, timeout: float | None = None) -> np.ndarray:
    """Element-wise maximum over the group."""
    return _all_reduce(x, group, "all_max", timeout)


def all_min(x: Any, *, group: Group | None = None, timeout: float | None = None) -> np.ndarray:
    """Element-wise minimum over the group."""
    return _all_reduce(x, group, "all_min", timeout)


def all_prod(x: Any, *, group: Group | None = None, timeout: float | None = None) -> np.ndarray:
    """Element-wise product over the group."""
    return _all_reduce(x, group, "all_prod", timeout)


def sum_scatter(x: Any, *, group: Group | None = None, timeout: float | None = None) -> np.ndarray:
    """Reduce-scatter: rank r gets rows [r*c, (r+1)*c) of all_sum(x), c = x.shape[0] // N."""
    g = _group(group)
    arr = as_rows(x)
    _check_reducible(arr, "all_sum")
    n = g.size()
    if arr.shape[0] % n:
        raise ValueError(f"sum_scatter: x.shape[0] = {arr.shape[0]} is not divisible by the group size {n}")
    header = g.next_header("sum_scatter", arr)
    c = arr.shape[0] // n
    if n == 1:
        return np.array(arr, order="C", copy=True)
    out = buffers.cache.empty((c,) + arr.shape[1:], arr.dtype)
    own = np.ascontiguousarray(arr).reshape(-1)
    per_rank = out.size
    bounds = [(i * per_rank, (i + 1) * per_rank) for i in range(n)]
    g.run("sum_scatter", *_reduce_flows(g, own, out.reshape(-1), bounds, np.add, "sum_scatter", header),
          timeout=timeout)
    g.finish("sum_scatter")
    return out


# ---- broadcast and barrier -------------------------------------------------------------------


def broadcast(x: Any, root: int = 0, *, group: Group | None = None, timeout: float | None = None) -> np.ndarray:
    """Root's `x` on every rank. Every rank passes an array of the root's shape and dtype.

    Every rank checks a header from a peer and returns only once every rank has agreed on
    the call (op, root, shape, dtype, path): ranks that disagree all raise MismatchError.
    Small arrays go directly from the root to every rank, every other rank sending its
    header to every rank; large ones down a pipelined chain from the root (half each way
    round the ring going both ways), acknowledged back along it.
    """
    g = _group(group)
    arr = as_array(x)
    n, r = g.size(), g.rank()
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < n:
        raise ValueError(f"broadcast: root {root!r} is not a rank of a group of size {n}")
    root = int(root)
    direct = g.direct(arr.nbytes)
    header = (g.next_header("broadcast", arr, root=root, path="direct") if direct
              else g.next_header("broadcast", arr, root=root))
    out = buffers.cache.empty(arr.shape, arr.dtype)
    if r == root:
        np.copyto(out, arr)
    if n == 1:
        return out
    if direct:
        _direct_broadcast(g, byte_view(out), root, header, timeout)
    else:
        _chain_broadcast(g, byte_view(out), arr.itemsize, root, header, timeout)
    g.finish("broadcast")
    return out


_NOTHING = memoryview(bytearray())  # a header-only stream's payload


def _direct_broadcast(g: Group, data: memoryview, root: int, header: wire.Header, timeout: float | None) -> None:
    """One exchange with every rank: the root's data to each, every other rank's header to
    each (no payload), so every rank compares its call with every other rank's."""
    mesh = g.mesh
    assert mesh is not None
    if g.rank() == root:
        sends, recvs = [data] * len(mesh.order), [_NOTHING] * len(mesh.order)
    else:
        sends, recvs = [_NOTHING] * len(mesh.order), [data if p == root else _NOTHING for p in mesh.order]
    g.exchange("broadcast", sends, recvs, header, timeout=timeout)


def _chain_broadcast(g: Group, data: memoryview, itemsize: int, root: int, header: wire.Header,
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
    g.run("broadcast", inflows, outflows, timeout=timeout)
    ack = wire.Header(dict(header.fields, step="ack"))
    if pos < n - 1:
        g.run("broadcast", [Inflow(ring.right[0], Segments([]), "broadcast", ack)], [], timeout=timeout)
    if pos > 0:
        g.run("broadcast", [], [Outflow(ring.left[0], Segments([]), "broadcast", ack)], timeout=timeout)


def barrier(*, group: Group | None = None, timeout: float | None = None) -> None:
    """Return only after every rank of the group has entered the barrier."""
    g = _group(group)
    # One byte per rank around the whole ring: a rank leaves only once it has every rank's byte.
    gather_rows(np.zeros(1, dtype=np.uint8), group=g, op="barrier", timeout=timeout)
