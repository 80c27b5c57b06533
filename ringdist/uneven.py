"""Collectives whose receivers learn block sizes from the senders' headers: all_to_all (with
or without splits), scatter (non-roots learn the root's shape and dtype), all_gather,
gather and scatter of uneven row counts (MPI's Allgatherv, Gatherv and Scatterv), and a
reduce-scatter of uneven row counts (MPI's Reduce_scatter with recvcounts).

Every stream's header declares its rows (`algorithms/blocks.py`), so no round is spent
exchanging counts. A receiver compares every sender's call with its own: the op, root,
dtype, trailing shape, whether splits were given, and (without splits) the whole shape;
ranks that disagree raise MismatchError, and the group is broken on every rank.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import msgpack
import numpy as np

from . import buffers, comm as comm_module, schedule, tuning, wire, work
from .algorithms import ring
from .algorithms.blocks import Assembled, Gathered, common, dtype_from, dtype_of, sizes_of
from .arrays import NOTHING, REDUCERS, as_rows, byte_view, check_rows_divide, fold_piece
from .calls import _comm, _header, check_flag, check_root
from .channel import Channel, peer_name
from .comm import Comm
from .errors import MismatchError, ProtocolError
from .flows import REDUCE_BLOCK, check_same



def _rows_check(header: wire.Header, unit: int, expect: Callable[[int], int | None],
                drop: tuple[str, ...] = (), what: str = "rows") -> Callable[[int, dict[str, Any], Channel], int]:
    """A check of the senders' headers: the same call as this rank's (but for `drop`), and
    the rows (`what`: the units counted) `expect(source)` where it is not None. Returns the
    bytes of one row."""
    made: list[dict[str, Any]] = []  # this rank's common fields, made on the first check (the
    # direct path compares whole headers as bytes and never calls it)

    def check(src: int, fields: dict[str, Any], ch: Channel) -> int:
        if not made:
            made.append(common(header.fields, drop))
        mine = made[0]
        theirs = common(fields, drop)
        if theirs != mine:
            check_same(mine, theirs, ch)
        want = expect(src)
        sizes = sizes_of(fields, ch, 1)
        if want is not None and sizes != [want]:
            raise MismatchError(f"rank {ch.me}: {wire.describe_header(mine)}: {peer_name(ch, src)} sends {sizes[0]} {what} "
                                f"where this rank expects {want} (group {ch.group!r})")
        return unit
    return check


def _row_bytes(arr: np.ndarray) -> int:
    return arr.itemsize * math.prod(arr.shape[1:])


def _row_blocks(data: np.ndarray, counts: list[int], unit: int) -> list[memoryview]:
    """`data`'s bytes cut into consecutive blocks of `counts` rows of `unit` bytes each."""
    view = byte_view(data)
    blocks, at = [], 0
    for k in counts:
        blocks.append(view[at:at + k * unit])
        at += k * unit
    return blocks


def _counts(splits: Any, rows: int, n: int, rank: int, call: str = "all_to_all", name: str = "splits") -> list[int]:
    """all_to_all's `splits` (or another call's row counts, `name`) as N row counts; ValueError
    naming what is wrong with them."""
    try:
        given = list(splits)  # once: a generator is read once
        shown = repr(given if iter(splits) is splits else splits)  # an iterator's repr says nothing
    except TypeError:
        given, shown = None, repr(splits)
    ok = given is not None and all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in given)
    counts = [int(k) for k in given] if ok else []  # type: ignore[union-attr]
    if not ok or len(counts) != n or any(k < 0 for k in counts) or sum(counts) != rows:
        raise ValueError(f"rank {rank}: {call}: {name} must be {n} non-negative integers summing to x.shape[0] "
                         f"= {rows}, "
                         f"got {shown if len(shown) <= 200 else shown[:200] + '...'}")
    return counts


def _assemble(got: list[tuple[int, memoryview]], trailing: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Blocks of rows (row count, bytes) concatenated in source order, in a new array. Blocks
    that an algorithm landed in order in one array (`Assembled`) are that array, viewed."""
    if isinstance(got, Assembled):
        return got.whole.view(dtype).reshape((sum(rows for rows, _ in got),) + trailing)
    out = buffers.cache.empty((sum(rows for rows, _ in got),) + trailing, dtype)
    data = byte_view(out)
    at = 0
    for _, block in got:
        data[at:at + len(block)] = block
        at += len(block)
    return out


def all_to_all(x: Any, *, splits: Any = None, group: Comm | None = None, timeout: float | None = None,
               async_op: bool = False) -> Any:
    """x's rows cut into N blocks, block j to rank j; the blocks received, concatenated in
    source-rank order. Without `splits` x.shape[0] must divide by N (every rank's x the
    same shape); with `splits` (N row counts summing to x.shape[0]) ranks send any counts,
    and receivers learn them from the headers. Dtype and trailing dims equal everywhere."""
    if async_op is not False or work.active:
        r = _route_all_to_all(x, splits, group, timeout, async_op)
        if r is not work.HERE:
            return r
    g = comm_module.default_made if group is None and timeout is None else None  # the common case
    if g is None:
        g = _comm(group, timeout, "all_to_all")
    try:
        return _all_to_all(g, x, splits, timeout)
    except Exception as exc:
        g.refuse("all_to_all", exc)  # failed here before (or outside) the algorithm's guard: it fails on every rank
        raise


def _all_to_all(g: Comm, x: Any, splits: Any, timeout: float | None) -> np.ndarray:
    n = g.size()
    arr = as_rows(x, "all_to_all", g)
    if splits is not None:
        return _all_to_all_splits(g, arr, _counts(splits, arr.shape[0], n, g.rank()), timeout)
    check_rows_divide(arr, x, "all_to_all", g.rank(), n)
    out = buffers.cache.empty(arr.shape, arr.dtype)
    if n == 1:
        g.check_usable("all_to_all")
        np.copyto(out, arr)
        return out
    # Every rank's x has the same shape (the header says so, and is compared whole), so the same size.
    algorithm = tuning.choose(g, "all_to_all", arr.nbytes)
    header = g.next_header("all_to_all", arr, algorithm.name)
    data = byte_view(np.ascontiguousarray(arr))
    if algorithm.all_to_all_even is not None:
        algorithm.all_to_all_even(g, data, byte_view(out), header, timeout)
    else:  # every block's size is known: shared memory lands them in place, the ring in its own buffers
        step = len(data) // n
        ends = range(0, (n + 1) * step, step) if step else [0] * (n + 1)
        whole = byte_view(out)
        into = [whole[ends[p]:ends[p + 1]] for p in range(n)]
        rows = arr.shape[0] // n
        got = algorithm.all_to_all(g, header, [data[ends[p]:ends[p + 1]] for p in range(n)], [rows] * n,
                                   _rows_check(header, _row_bytes(arr), lambda src: rows), timeout, into=into)
        for q, (_, block) in enumerate(got):
            if block is not into[q]:
                into[q][:] = block
    g.finish("all_to_all")
    return out


def _route_all_to_all(x: Any, splits: Any, group: Comm | None, timeout: float | None, async_op: bool) -> Any:
    # Apart from all_to_all, so that its variables stay plain locals (no closure cells) on the common path.
    return work.route("all_to_all", group, async_op,
                      lambda g: all_to_all(x, splits=splits, group=g, timeout=timeout))


def _all_to_all_splits(g: Comm, arr: np.ndarray, counts: list[int], timeout: float | None) -> np.ndarray:
    """all_to_all with `counts` rows to each rank: blocks of any row counts, which receivers
    learn from the headers."""
    n = g.size()
    data = np.ascontiguousarray(arr)
    if n == 1:
        g.check_usable("all_to_all")
        return _assemble([(arr.shape[0], byte_view(data))], arr.shape[1:], arr.dtype)
    algorithm = tuning.choose(g, "all_to_all", tuning.UNKNOWN)
    header = _header(g, "all_to_all", arr[:0], algorithm.name, splits=True)
    unit = _row_bytes(arr)
    blocks = _row_blocks(data, counts, unit)
    got = algorithm.all_to_all(g, header, blocks, counts, _rows_check(header, unit, lambda src: None), timeout)
    g.finish("all_to_all")
    return _assemble(got, arr.shape[1:], arr.dtype)


def reduce_scatter_counts(g: Comm, arr: np.ndarray, op: str, counts: Any, timeout: float | None,
                          call: str | None = None) -> np.ndarray:
    """Rank r gets rows [sum(counts[:r]), sum(counts[:r + 1])) of every rank's `arr` reduced
    with `op` ('sum', ...), folded in rank order. The counts, the same on every rank, ride in
    the header: ranks that disagree raise MismatchError. The algorithm's own reduce-scatter of
    blocks of any lengths where it has one (shared memory: the input, the output and the slots);
    else each rank sends block j of its rows to rank j (all_to_alls of blocks of any counts, in
    windows) and folds the N pieces it receives. `call`: the call's name, if not <op>_scatter."""
    n, r = g.size(), g.rank()
    call = call or op + "_scatter"
    counts = _counts(counts, arr.shape[0], n, r, wire.called_as(call), "counts")
    data = np.ascontiguousarray(arr)
    if n == 1:
        g.check_usable(call)
        return np.array(data, copy=True)
    algorithm = tuning.choose(g, "reduce_scatter_counts", tuning.UNKNOWN)
    # The counts as text: a header field that arrives as it went (a list would come back from a
    # tuple), and a key of the group's header cache.
    header = _header(g, call, arr[:0], algorithm.name, splits=True, counts=",".join(map(str, counts)))
    unit = _row_bytes(arr)
    mine = counts[r]
    trailing = arr.shape[1:]
    if algorithm.reduce_scatter_v is not None:
        try:
            out = buffers.cache.empty((mine,) + trailing, arr.dtype)
        except MemoryError:
            raise MemoryError(f"rank {r}: {wire.called_as(call)}: no memory for its result, {mine} rows of "
                              f"{unit} bytes (counts={counts})"[:400]) from None
        per_row = math.prod(trailing)
        algorithm.reduce_scatter_v(g, data.reshape(-1), [count * per_row for count in counts], out.reshape(-1),
                                   "all_" + op, header, timeout)
        g.finish(call)
        return out
    out = buffers.cache.empty((mine,) + trailing, arr.dtype)
    _exchange_and_fold(g, algorithm, header, data.reshape(-1), counts, math.prod(trailing), out.reshape(-1),
                       REDUCERS["all_" + op], timeout)
    g.finish(call)
    return out


def _exchange_and_fold(g: Comm, algorithm: Any, header: wire.Header, flat: np.ndarray, counts: list[int],
                       per_row: int, out: np.ndarray, ufunc: Any, timeout: float | None) -> None:
    """Block j of `flat` (counts[j] rows of `per_row` elements) to rank j, and this rank's block
    of every rank's folded into `out` in rank order, in windows: each run an all_to_all of a
    span of every block (in elements, spans cut as the ring's reduce-scatter cuts them), so the
    pieces received meanwhile stay within `ring.SCRATCH_WINDOW` bytes, not N times the result."""
    n, r, itemsize = g.size(), g.rank(), flat.itemsize
    ends = [0]
    for count in counts:
        ends.append(ends[-1] + count * per_row)
    bounds = list(zip(ends, ends[1:]))
    fold_block = max(1, REDUCE_BLOCK // itemsize)
    span = max(fold_block, ring.SCRATCH_WINDOW // n // itemsize // fold_block * fold_block)
    view, base = byte_view(flat), bounds[r][0]
    for spans in schedule.window_spans(bounds, span, fold_block):
        lo, hi = spans[r]
        check = _rows_check(header, itemsize, lambda src: hi - lo, what="elements")
        got = algorithm.all_to_all(g, header, [view[a * itemsize:b * itemsize] for a, b in spans],
                                   [b - a for a, b in spans], check, timeout)
        # Each piece folded where it landed (no copy of them all into one array first).
        pieces = [np.frombuffer(block, flat.dtype, hi - lo) for _, block in got]
        fold_piece(pieces, ufunc, out[lo - base:hi - base])  # (a one-element result as shared memory folds it)
        del got, pieces  # (before the next run lands its pieces)


def scatter(x: Any, root: int = 0, *, uneven: bool = False, group: Comm | None = None,
            timeout: float | None = None, async_op: bool = False) -> Any:
    """Root's `x` cut into N equal row blocks: rank r gets block r. Non-roots pass None (or
    anything; it is ignored) and learn the shape and dtype from the root's header. With
    `uneven=True` (on every rank) the root's `x` is a list of N arrays, block r for rank r,
    of any row counts (the dtype and the other dims alike)."""
    if async_op is not False or work.active:
        r = work.route("scatter", group, async_op,
                       lambda g: scatter(x, root, uneven=uneven, group=g, timeout=timeout))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, "scatter")
    try:
        check_flag(uneven, "uneven", g, "scatter")
        return _scatter_uneven(g, x, root, timeout) if uneven else _scatter(g, x, root, timeout)
    except Exception as exc:
        # Only the root may see it, and the others already wait for its blocks: they are told
        # (an ABORT of this call), so they raise at once instead of waiting out their timeout.
        g.refuse("scatter", exc)
        raise


def _scatter(g: Comm, x: Any, root: Any, timeout: float | None) -> np.ndarray:
    n, r = g.size(), g.rank()
    root = check_root(root, g, "scatter")
    if r == root and x is None:
        raise TypeError(f"rank {r}: scatter: the root passes the array to scatter, got None")
    arr = as_rows(x, "scatter", g) if r == root else NOTHING
    if r == root:
        check_rows_divide(arr, x, "scatter", r, n)
        wire.header_dtype("scatter", arr.dtype)  # the others learn it from the header
    if n == 1:
        g.check_usable("scatter")
        return _assemble([(arr.shape[0], byte_view(np.ascontiguousarray(arr)))], arr.shape[1:], arr.dtype)
    # Only the root knows the size: the table sees the size of the group's previous scatter,
    # which every rank learned alike (a loop of same-sized scatters gets its row from the second call).
    algorithm = tuning.choose(g, "scatter", g.plans.get("scatter-size", tuning.ROOTED))
    header = _header(g, "scatter", arr, algorithm.name, root=root)
    if algorithm.scatter is not None:
        out = algorithm.scatter(g, arr, root, header, timeout)
        g.finish("scatter")
        g.plans["scatter-size"] = out.nbytes * n  # the root's whole array
        return out
    learned: dict[str, Any] = {}
    if r == root:
        per = arr.shape[0] // n
        view = byte_view(np.ascontiguousarray(arr))
        unit = _row_bytes(arr)
        blocks, counts = [view[p * per * unit:(p + 1) * per * unit] for p in range(n)], [per] * n
    else:
        blocks, counts = [byte_view(NOTHING)] * n, [0] * n
    mine = common(header.fields, wire.ROLE_FIELDS["scatter"])

    def check(src: int, fields: dict[str, Any], ch: Channel) -> int:
        theirs = common(fields, wire.ROLE_FIELDS["scatter"])
        if theirs != mine:  # named with their dtypes and shapes, which the comparison leaves out
            check_same(common(header.fields), common(fields), ch)
        sizes = sizes_of(fields, ch, 1)
        if src != root:
            if sizes != [0]:
                raise ProtocolError(f"rank {ch.me}: {ch.describe()} sends scatter data but is not its root")
            return 0
        shape = tuple(fields["shape"])
        dtype = dtype_of(fields["dtype"], ch)
        if r == root or not shape or shape[0] % n or sizes != [shape[0] // n]:
            raise ProtocolError(f"rank {ch.me}: root {src} of scatter sends {sizes} rows of shape {shape}")
        learned.update(shape=shape, dtype=dtype)
        return dtype.itemsize * math.prod(shape[1:])

    got = algorithm.all_to_all(g, header, blocks, counts, check, timeout)
    g.finish("scatter")
    mine = got if isinstance(got, Assembled) else [got[root]]  # every other block is empty
    if r == root:
        out = _assemble(mine, arr.shape[1:], arr.dtype)
    else:
        out = _assemble(mine, learned["shape"][1:], learned["dtype"])
    g.plans["scatter-size"] = out.nbytes * n  # the root's whole array
    return out


def all_gather_uneven(x: Any, g: Comm, timeout: float | None) -> np.ndarray:
    """all_gather of any row counts: every rank's rows concatenated in rank order."""
    try:
        return _all_gather_uneven(x, g, timeout)
    except Exception as exc:
        g.refuse("all_gather", exc)
        raise


def _all_gather_uneven(x: Any, g: Comm, timeout: float | None) -> np.ndarray:
    arr = as_rows(x, "all_gather", g)
    if g.size() == 1:
        g.check_usable("all_gather")
        return _assemble([(arr.shape[0], byte_view(np.ascontiguousarray(arr)))], arr.shape[1:], arr.dtype)
    return _gathered_rows(g, arr, "all_gather", "all_gather_uneven", timeout)


def _gathered_rows(g: Comm, arr: np.ndarray, op: str, table_op: str, timeout: float | None,
                   **extra: Any) -> np.ndarray:
    """Every rank's rows, of any counts, concatenated in rank order on every rank, as the call
    `op` (chosen as `table_op`; `extra`: more header fields, which every rank must pass alike)."""
    n, r = g.size(), g.rank()
    data = np.ascontiguousarray(arr)
    algorithm = tuning.choose(g, table_op, 0)
    header = _header(g, op, arr[:0], algorithm.name, uneven=True, **extra)
    got = algorithm.gather_v(g, header, ([byte_view(data)], {"sizes": [arr.shape[0]]}),
                             _rows_check(header, _row_bytes(arr), lambda src: None), timeout,
                             **({"whole": True} if algorithm.gather_v_whole else {}))
    g.finish(op)
    blocks = [(arr.shape[0], byte_view(data)) if q == r else (got[q][0]["sizes"][0], got[q][1]) for q in range(n)]
    if isinstance(got, Gathered):  # landed in place, in rank order
        blocks = Assembled(blocks)
        blocks.whole = got.whole
    return _assemble(blocks, arr.shape[1:], arr.dtype)


def _blocks_for_ranks(x: Any, g: Comm) -> list[np.ndarray]:
    """An uneven scatter's `x` on the root: N arrays alike but for their rows, C-contiguous."""
    n, r = g.size(), g.rank()
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"rank {r}: scatter: with uneven=True the root passes a list of {n} arrays, one for each "
                        f"rank, got {type(x).__name__}")
    if len(x) != n:
        raise ValueError(f"rank {r}: scatter: the root passes {n} arrays, one for each rank, got {len(x)}")
    blocks = [np.ascontiguousarray(as_rows(b, "scatter", g)) for b in x]
    first = blocks[0]
    for q, b in enumerate(blocks):
        if wire.dtype_tag(b.dtype) != wire.dtype_tag(first.dtype) or b.shape[1:] != first.shape[1:]:
            raise ValueError(f"rank {r}: scatter: the block for rank {q} is {b.dtype} of shape {b.shape}, the one "
                             f"for rank 0 {first.dtype} of shape {first.shape}: blocks may differ in rows only")
    return blocks


def _scatter_uneven(g: Comm, x: Any, root: Any, timeout: float | None) -> np.ndarray:
    """scatter of the root's N blocks of any row counts (MPI_Scatterv), in two steps. First the
    root's dtype and other dims, to every rank (`SCATTER_LAYOUT`): every rank's header for the
    blocks is then the same, as algorithms that signal through shared memory need. Then each
    block crosses once, as a block of an all_to_all whose rows ride in the headers."""
    n, r = g.size(), g.rank()
    root = check_root(root, g, "scatter")
    if r == root:
        parts = _blocks_for_ranks(x, g)
        try:
            tag = wire.header_dtype("scatter", parts[0].dtype)  # the others' headers will say it too
        except ValueError as exc:
            raise ValueError(f"rank {r}: {exc}") from None
        layout = msgpack.packb([tag, list(parts[0].shape[1:])])
    else:
        parts, layout = [], b""
    if n == 1:
        g.check_usable("scatter")
        return _assemble([(parts[0].shape[0], byte_view(parts[0]))], parts[0].shape[1:], parts[0].dtype)
    algorithm = tuning.choose(g, "scatter_uneven", tuning.UNKNOWN)  # a forced one that cannot run: before any step
    said = _gathered_rows(g, np.frombuffer(layout, np.uint8), SCATTER_LAYOUT, SCATTER_LAYOUT, timeout, root=root)
    if r == root:
        like = parts[0][:0]
        counts, blocks = [b.shape[0] for b in parts], [byte_view(b) for b in parts]
    else:
        like = _layout(said, root, r)
        counts, blocks = [0] * n, [byte_view(NOTHING)] * n
    header = _header(g, "scatter", like, algorithm.name, root=root, uneven=True)
    got = algorithm.all_to_all(g, header, blocks, counts,
                               _rows_check(header, _row_bytes(like), lambda src: None if src == root else 0), timeout)
    g.finish("scatter")
    return _assemble(got if isinstance(got, Assembled) else [got[root]], like.shape[1:], like.dtype)


SCATTER_LAYOUT = "scatter (agreement step)"  # an uneven scatter's first step: the root's dtype and other dims


def _layout(said: np.ndarray, root: int, r: int) -> np.ndarray:
    """An empty array of the dtype and other dims the root of an uneven scatter said."""
    try:
        tag, trailing = msgpack.unpackb(said.tobytes(), raw=False)
        dims = tuple(trailing)
        if not isinstance(tag, str) or not all(isinstance(d, int) and d >= 0 for d in dims):
            raise ValueError(tag, dims)
        return np.empty((0,) + dims, dtype_from(tag, f"rank {r}: scatter's root, rank {root},"))
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ProtocolError(f"rank {r}: scatter's root, rank {root}, said no readable dtype and shape "
                            f"({len(said)} bytes)") from None


def gather_uneven(x: Any, root: Any, g: Comm, timeout: float | None) -> np.ndarray | None:
    """gather of any row counts (MPI_Gatherv): every rank's rows concatenated in rank order on
    the root, None elsewhere. Each rank's rows cross once, as its block to the root of an
    all_to_all whose sizes ride in the headers. (The caller refuses what raises.)"""
    n, r = g.size(), g.rank()
    root = check_root(root, g, "gather")
    arr = as_rows(x, "gather", g)
    data = np.ascontiguousarray(arr)
    if n == 1:
        g.check_usable("gather")
        return _assemble([(arr.shape[0], byte_view(data))], arr.shape[1:], arr.dtype)
    algorithm = tuning.choose(g, "gather_uneven", tuning.UNKNOWN)
    header = _header(g, "gather", arr[:0], algorithm.name, root=root, uneven=True)
    blocks, counts = [byte_view(NOTHING)] * n, [0] * n
    blocks[root], counts[root] = byte_view(data), arr.shape[0]
    got = algorithm.all_to_all(g, header, blocks, counts,
                               _rows_check(header, _row_bytes(arr), lambda src: None if r == root else 0), timeout)
    g.finish("gather")
    return _assemble(got, arr.shape[1:], arr.dtype) if r == root else None
