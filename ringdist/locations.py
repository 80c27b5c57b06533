"""all_maxloc and all_minloc: MPI's MAXLOC and MINLOC on arrays. Each element's maximum (or
minimum) over the group, and where it is: the least index among the ranks that hold it, a
rank's index being its rank unless it passes its own (a global position, say).

Two all-reduces under the call's own name, so a rank in all_maxloc never pairs with one in
all_max: the extreme (all_max or all_min's algorithm, its header naming all_maxloc), then the
least index where each rank's element equals it (all_min's). Both are exact, so every rank
gets the same bits. A NaN is the maximum and the minimum where any rank has one, as all_max
and all_min make it, and is found where it is.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import work
from .arrays import as_array, reducible
from .calls import _comm
from .collectives import _all_reduce
from .comm import Comm

NOWHERE = np.iinfo(np.int64).max  # a rank's index where its element is not the extreme


def all_maxloc(x: Any, index: Any = None, *, group: Comm | None = None, timeout: float | None = None,
               async_op: bool = False) -> Any:
    """`(values, where)`: all_max(x), and for each element the least index (int64) among the ranks
    whose `x` holds that maximum; a rank's `index` (an integer, or integers of x's shape) is its
    rank unless given (MPI's MAXLOC)."""
    return _located(x, index, "max", group, timeout, async_op)


def all_minloc(x: Any, index: Any = None, *, group: Comm | None = None, timeout: float | None = None,
               async_op: bool = False) -> Any:
    """`(values, where)`: all_min(x), and where each minimum is, as all_maxloc (MPI's MINLOC)."""
    return _located(x, index, "min", group, timeout, async_op)


def _located(x: Any, index: Any, which: str, group: Comm | None, timeout: float | None, async_op: bool) -> Any:
    call = f"all_{which}loc"
    if async_op is not False or work.active:
        r = work.route(call, group, async_op, lambda g: _located(x, index, which, g, timeout, False))
        if r is not work.HERE:
            return r
    g = _comm(group, timeout, call)
    try:
        arr = as_array(x, call, g)
        arr = reducible(arr, f"all_{which}", call, g)
        mine = _index(index, arr, g, call)
    except Exception as exc:
        g.refuse(call, exc)
        raise
    values = _all_reduce(arr, g, f"all_{which}", timeout, name=call)
    try:  # between the two steps (8 bytes an element, and a mask): no memory fails every rank at once
        held = values == arr
        if arr.dtype.kind not in "iub":  # a NaN (of any float type, ml_dtypes' too) or NaT is where it is
            held |= (values != values) & (arr != arr)
        candidates = np.where(held, mine, NOWHERE)
    except Exception as exc:
        g.refuse(call, exc)
        raise
    where = _all_reduce(candidates, g, "all_min", timeout, name=call)
    return values, where


def _index(index: Any, arr: np.ndarray, g: Comm, call: str) -> np.ndarray:
    """This rank's index of each element, as int64 of `arr`'s shape."""
    if index is None:
        return np.full(arr.shape, g.rank(), dtype=np.int64)
    if isinstance(index, (bool, np.bool_)):
        raise TypeError(f"rank {g.rank()}: {call}: index must be an integer or integers, got {index!r}")
    if isinstance(index, numbers.Integral):
        index = np.int64(index) if -2**63 <= int(index) < 2**63 else index
    got = np.asarray(index)
    if got.dtype.kind not in "iu":
        raise TypeError(f"rank {g.rank()}: {call}: index must be an integer or integers, got dtype {got.dtype}")
    if got.dtype.kind == "u" and got.size and int(got.max()) > NOWHERE:
        raise ValueError(f"rank {g.rank()}: {call}: index values must fit in int64")
    try:
        return np.broadcast_to(got.astype(np.int64), arr.shape)
    except ValueError:
        raise ValueError(f"rank {g.rank()}: {call}: index of shape {got.shape} does not fit x's shape "
                         f"{arr.shape}") from None
