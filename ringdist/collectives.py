"""The collectives: check the arguments, allocate the result, look up the algorithm, run it.

Every collective takes `timeout=` (seconds without progress; default RINGDIST_TIMEOUT).
Which algorithm runs is the tuning table's choice (`tuning.choose`); its name goes into
the call's header. Results are new C-contiguous arrays (large ones from the buffer
cache); inputs are never modified. After the algorithm, `Comm.finish` raises an ABORT a
peer already sent for this call (a peer that gave up on it before this rank came).

Every collective takes `async_op=` too: True returns a `work.Work` at once (the operation
runs on the progress thread; its input must not change until `wait()` returns).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import buffers, comm as comm_module, tuning, uneven as uneven_module, wire, work
from .arrays import as_array, as_rows, check_rows_divide, clear_padding, reducible
from .calls import _comm, _header, check_flag, check_reduce_op, check_root
from .comm import Comm
from .ops import REDUCE_OPS


def gather_rows(x: Any, *, group: Comm | None = None, op: str = "all_gather",
                timeout: float | None = None) -> np.ndarray:
    """all_gather under a given op name (split's exchange cannot pair with a user's all_gather)."""
    g = comm_module.default_made if group is None and timeout is None else None  # the common case
    if g is None:
        g = _comm(group, timeout, op)
    try:
        arr = as_rows(x, op, g)
        n = g.size()
        out = buffers.cache.empty((n * arr.shape[0],) + arr.shape[1:], arr.dtype)
        if n == 1:
            g.check_usable(op)
            np.copyto(out, arr)
            return out
        algorithm = tuning.choose(g, op, arr.nbytes)
        algorithm.gather(g, arr, out, g.next_header(op, arr, algorithm.name), timeout)
        g.finish(op)
    except Exception as exc:
        g.refuse(op, exc)  # failed here before (or outside) the algorithm's guard: it fails on every rank
        raise
    return out


def all_gather(x: Any, *, uneven: bool = False, group: Comm | None = None,
               timeout: float | None = None, async_op: bool = False) -> Any:
    """Every rank's `x` concatenated along axis 0, in rank order (a 0-d `x` counts as shape (1,)).

    All ranks must pass the same shape and dtype; otherwise every rank raises MismatchError.
    With `uneven=True` ranks may pass different numbers of rows (the other dims and the
    dtype still equal everywhere).
    """
    if async_op is not False or work.active:
        r = _route_all_gather(x, uneven, group, timeout, async_op)
        if r is not work.HERE:
            return r
    if uneven is not False:
        g = _comm(group, timeout, "all_gather")
        try:
            check_flag(uneven, "uneven", g, "all_gather")
        except Exception as exc:
            g.refuse("all_gather", exc)
            raise
        if uneven:
            return uneven_module.all_gather_uneven(x, g, timeout)
    return gather_rows(x, group=group, op="all_gather", timeout=timeout)


def _route_all_gather(x: Any, uneven: bool, group: Comm | None, timeout: float | None, async_op: bool) -> Any:
    # Apart from all_gather, so that its variables stay plain locals (no closure cells) on the common path.
    return work.route("all_gather", group, async_op, lambda g: all_gather(x, uneven=uneven, group=g, timeout=timeout))


def gather(x: Any, root: int = 0, *, uneven: bool = False, group: Comm | None = None,
           timeout: float | None = None, async_op: bool = False) -> Any:
    """all_gather's result on the root; None on every other rank. Same shape and dtype on
    every rank (`uneven=True`: row counts may differ); the root is in the header, so ranks
    that disagree on it fail."""
    if async_op is not False or work.active:
        r = work.route("gather", group, async_op, lambda g: gather(x, root, uneven=uneven, group=g, timeout=timeout))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, "gather")
    try:
        check_flag(uneven, "uneven", g, "gather")
        if uneven:
            return uneven_module.gather_uneven(x, root, g, timeout)
        root = check_root(root, g, "gather")
        arr = as_rows(x, "gather", g)
        if g.size() == 1:
            return gather_rows(arr, group=g, op="gather", timeout=timeout)
        algorithm = tuning.choose(g, "gather", arr.nbytes)
        out = algorithm.gather_root(g, arr, root, _header(g, "gather", arr, algorithm.name, root=root), timeout)
        g.finish("gather")
    except Exception as exc:
        g.refuse("gather", exc)
        raise
    return out


def reduce(x: Any, root: int = 0, *, op: str = "sum", group: Comm | None = None,
           timeout: float | None = None, async_op: bool = False) -> Any:
    """The element-wise reduction (`op`: as all_reduce's, avg too) on the root, bitwise
    identical to all_<op>'s (it runs the same algorithm); None on every other rank."""
    if async_op is not False or work.active:
        r = work.route("reduce", group, async_op, lambda g: reduce(x, root, op=op, group=g, timeout=timeout))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, "reduce")
    average = op == "avg"
    try:
        if average:
            x = _averageable(x, "reduce", g)
        else:
            check_reduce_op(op, g, "reduce")
        root = check_root(root, g, "reduce")
    except Exception as exc:
        g.refuse("reduce", exc)
        raise
    out = _all_reduce(x, g, "all_sum" if average else f"all_{op}", timeout, name="reduce", root=root,
                      reduce=op)  # (avg: all_sum's, divided on the root alone, as all_avg divides it)
    if g.rank() != root:
        return None  # where the algorithm ran the whole all-reduce
    if average:
        np.divide(out, g.size(), out=out)
    return out


def _all_reduce(x: Any, group: Comm | None, op: str, timeout: float | None, name: str | None = None,
                async_op: bool = False, **extra: Any) -> Any:
    """all_<op> (queued as `work.route` says); under the op `name` (with `extra` header
    fields) for a rooted reduce, which has been routed already."""
    if async_op is not False or work.active:
        r = _route_all_reduce(x, group, op, timeout, async_op)
        if r is not work.HERE:
            return r
    g = comm_module.default_made if group is None and timeout is None else None  # the common case
    call = name or op
    if g is None:
        g = _comm(group, timeout, call)
    try:
        shown = wire.called_as(call)  # (messages name all_band as the all_reduce(op='band') it was)
        arr = as_array(x, shown, g)
        arr = reducible(arr, op, shown, g)
        if name is not None:
            extra.setdefault("reduce", op.removeprefix("all_"))
        if g.size() == 1:
            g.check_usable(call)
            out = buffers.cache.empty(arr.shape, arr.dtype)
            np.copyto(out, arr)
            return out
        algorithm = tuning.choose(g, call, arr.nbytes, op if name is not None else None)  # (all_<op>'s bits)
        header = g.next_header(call, arr, algorithm.name, **extra)
        if name == "reduce" and algorithm.reduce_root is not None:  # the same bits, on the root only
            out = algorithm.reduce_root(g, arr, op, extra["root"], header, timeout)
        else:
            out = algorithm.reduce(g, arr, op, header, timeout)
        g.finish(call)
    except Exception as exc:
        g.refuse(call, exc)
        raise
    return clear_padding(out)


def _route_all_reduce(x: Any, group: Comm | None, op: str, timeout: float | None, async_op: bool) -> Any:
    # Apart from _all_reduce, so that its variables stay plain locals (no closure cells) on the common path.
    return work.route(op, group, async_op, lambda g: _all_reduce(x, g, op, timeout))


def all_sum(x: Any, *, group: Comm | None = None, timeout: float | None = None,
            async_op: bool = False) -> Any:
    """Element-wise sum over the group; every rank gets a bitwise-identical result (bool: logical or)."""
    return _all_reduce(x, group, "all_sum", timeout, async_op=async_op)


def all_max(x: Any, *, group: Comm | None = None, timeout: float | None = None,
            async_op: bool = False) -> Any:
    """Element-wise maximum over the group."""
    return _all_reduce(x, group, "all_max", timeout, async_op=async_op)


def all_min(x: Any, *, group: Comm | None = None, timeout: float | None = None,
            async_op: bool = False) -> Any:
    """Element-wise minimum over the group."""
    return _all_reduce(x, group, "all_min", timeout, async_op=async_op)


def all_prod(x: Any, *, group: Comm | None = None, timeout: float | None = None,
             async_op: bool = False) -> Any:
    """Element-wise product over the group."""
    return _all_reduce(x, group, "all_prod", timeout, async_op=async_op)


def all_reduce(x: Any, op: str = "sum", *, group: Comm | None = None, timeout: float | None = None,
               async_op: bool = False) -> Any:
    """Element-wise `op` over the group (sum, max, min, prod; band, bor, bxor on integers and
    bool; avg on floating and complex dtypes): the call all_<op>, so `all_reduce(x, "max")` on one
    rank pairs with `all_max(x)` on another."""
    if isinstance(op, str) and op in REDUCE_OPS:
        return _all_reduce(x, group, "all_" + op, timeout, async_op=async_op)
    if op == "avg":
        return _all_average(x, group, timeout, async_op)
    return _bad_op(x, op, "all_reduce", group, timeout, async_op)


def _averages(dt: np.dtype) -> bool:
    """Whether an array of dtype `dt` can hold its average: floating and complex dtypes, and
    numeric extension ones that hold a half (bfloat16, float8; not int4, which older ml_dtypes
    divide in place, truncating)."""
    if dt.kind in "fc":
        return True
    if dt.kind != "V":
        return False
    probe = np.ones(1, dtype=dt)
    try:
        with np.errstate(all="ignore"):
            np.divide(probe, 2, out=probe)
    except TypeError:
        return False
    return float(probe[0]) == 0.5


def _averageable(x: Any, call: str, g: Comm, rows: bool = False) -> np.ndarray:
    """`x` as an array to sum and then divide by the group's size (`rows`: as a reduce-scatter's);
    TypeError unless its dtype holds an average."""
    shown = wire.called_as(call)
    arr = as_rows(x, shown, g) if rows else as_array(x, shown, g)
    arr = reducible(arr, "all_sum", shown, g)
    if not _averages(arr.dtype):
        raise TypeError(f"rank {g.rank()}: {shown}: dtype {arr.dtype} cannot hold an average; pass a "
                        f"floating dtype, or sum and divide")
    return arr


def _all_average(x: Any, group: Comm | None, timeout: float | None, async_op: bool) -> Any:
    """all_reduce's "avg" (torch's ReduceOp.AVG): all_sum's result, under the call's own name
    all_avg (a rank averaging never pairs with one summing), divided by the group's size on
    every rank alike, so every rank gets the same bits."""
    call = "all_avg"
    if async_op is not False or work.active:
        r = work.route(call, group, async_op, lambda g: _all_average(x, g, timeout, False))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, call)
    try:
        arr = _averageable(x, call, g)
    except Exception as exc:
        g.refuse(call, exc)
        raise
    out = _all_reduce(arr, g, "all_sum", timeout, name=call)
    np.divide(out, g.size(), out=out)
    return out


def _bad_op(x: Any, op: Any, call: str, group: Comm | None, timeout: float | None, async_op: bool) -> Any:
    """An all_reduce or reduce_scatter naming no reduction: ValueError, on every rank."""
    if async_op is not False or work.active:
        r = work.route(call, group, async_op, lambda g: _bad_op(x, op, call, g, timeout, False))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, call)
    try:
        check_reduce_op(op, g, call)
    except Exception as exc:
        g.refuse(call, exc)
        raise
    raise AssertionError("_bad_op with a good op")


def sum_scatter(x: Any, *, group: Comm | None = None, timeout: float | None = None,
                async_op: bool = False) -> Any:
    """Reduce-scatter: rank r gets rows [r*c, (r+1)*c) of all_sum(x), c = x.shape[0] // N."""
    return _reduce_scatter(x, "sum", group, timeout, async_op)


def reduce_scatter(x: Any, op: str = "sum", *, counts: Any = None, group: Comm | None = None,
                   timeout: float | None = None, async_op: bool = False) -> Any:
    """Rank r gets rows [r*c, (r+1)*c) of all_reduce(x, op), c = x.shape[0] // N: the call
    <op>_scatter (`reduce_scatter(x)` is `sum_scatter(x)`). With `counts` (N row counts summing
    to x.shape[0], the same on every rank; MPI's Reduce_scatter): rows [sum(counts[:r]),
    sum(counts[:r + 1])), reduced in rank order."""
    if isinstance(op, str) and (op in REDUCE_OPS or op == "avg"):
        return _reduce_scatter(x, op, group, timeout, async_op, counts)
    return _bad_op(x, op, "reduce_scatter", group, timeout, async_op)


def _reduce_scatter(x: Any, op: str, group: Comm | None, timeout: float | None, async_op: bool,
                    counts: Any = None) -> Any:
    call = op + "_scatter"  # (avg_scatter: sum_scatter's rows, divided by the group's size)
    if async_op is not False or work.active:
        r = work.route(call, group, async_op, lambda g: _reduce_scatter(x, op, g, timeout, False, counts))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, call)
    n = g.size()
    average = op == "avg"
    if average:
        op = "sum"
    try:
        shown = wire.called_as(call)  # (messages name max_scatter as the reduce_scatter(op='max') it was)
        if average:
            arr = _averageable(x, call, g, rows=True)
        else:
            arr = as_rows(x, shown, g)
            arr = reducible(arr, "all_" + op, shown, g)
        if counts is not None:
            out = uneven_module.reduce_scatter_counts(g, arr, op, counts, timeout, call=call)
            if average:
                np.divide(out, n, out=out)
            return clear_padding(out)
        check_rows_divide(arr, x, shown, g.rank(), n)
        if n == 1:
            g.check_usable(call)
            return np.array(arr, order="C", copy=True)
        algorithm = tuning.choose(g, call, arr.nbytes)
        header = _header(g, call, arr, algorithm.name)
        out = buffers.cache.empty((arr.shape[0] // n,) + arr.shape[1:], arr.dtype)
        algorithm.reduce_scatter(g, np.ascontiguousarray(arr).reshape(-1), out.reshape(-1), "all_" + op, header,
                                 timeout)
        g.finish(call)
    except Exception as exc:
        g.refuse(call, exc)
        raise
    if average:
        np.divide(out, n, out=out)
    return clear_padding(out)


def broadcast(x: Any, root: int = 0, *, group: Comm | None = None, timeout: float | None = None,
              async_op: bool = False) -> Any:
    """Root's `x` on every rank. Every rank passes an array of the root's shape and dtype.

    Every rank checks a header from a peer and returns only once every rank has agreed on
    the call (op, root, shape, dtype, algorithm): ranks that disagree all raise MismatchError.
    """
    if async_op is not False or work.active:
        r = work.route("broadcast", group, async_op, lambda g: broadcast(x, root, group=g, timeout=timeout))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, "broadcast")
    n, r = g.size(), g.rank()
    try:
        arr = as_array(x, "broadcast", g)
        root = check_root(root, g, "broadcast")
        out = buffers.cache.empty(arr.shape, arr.dtype)
        if r == root:
            np.copyto(out, arr)
        if n == 1:
            g.check_usable("broadcast")
            return out
        algorithm = tuning.choose(g, "broadcast", arr.nbytes)
        algorithm.broadcast(g, out, root, _header(g, "broadcast", arr, algorithm.name, root=root), timeout)
        g.finish("broadcast")
    except Exception as exc:
        g.refuse("broadcast", exc)
        raise
    return out


def barrier(*, group: Comm | None = None, timeout: float | None = None, async_op: bool = False) -> Any:
    """Return only after every rank of the group has entered the barrier."""
    if async_op is not False or work.active:
        r = work.route("barrier", group, async_op, lambda g: barrier(group=g, timeout=timeout))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, "barrier")
    token = np.zeros(1, dtype=np.uint8)
    if g.size() > 1:
        algorithm = tuning.choose(g, "barrier", 1)
        if algorithm.barrier is not None:
            try:
                algorithm.barrier(g, _header(g, "barrier", token, algorithm.name), timeout)
                g.finish("barrier")
            except Exception as exc:
                g.refuse("barrier", exc)
                raise
            return
    # Otherwise one byte per rank: a rank leaves only once it has every rank's byte.
    gather_rows(token, group=g, op="barrier", timeout=timeout)
