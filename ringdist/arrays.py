"""numpy arrays as ringdist sends them: what dtypes it accepts, byte views, and the reductions."""

from __future__ import annotations

from typing import Any

import numpy as np

from .ops import REDUCE_OPS

_RAW_BYTES = type(np.dtype("V1"))  # numpy's own void dtype; extension dtypes (bfloat16) have their own class
NOTHING = np.empty(0, dtype=np.uint8)  # what a rank that contributes no array (a scatter's non-root) passes
# The element-wise reductions, by the `op` a call names them with (MPI_SUM ... MPI_BXOR); the
# bitwise ones take integers and bool (on bool: logical and, or, xor).
REDUCE_UFUNCS = dict(zip(REDUCE_OPS, (np.add, np.maximum, np.minimum, np.multiply,
                                       np.bitwise_and, np.bitwise_or, np.bitwise_xor)))
REDUCERS = {f"all_{op}": ufunc for op, ufunc in REDUCE_UFUNCS.items()}  # by the all-reduce's call name


# What a call that got None where it needs an array says besides (a port of mpi4py's `bcast`).
NONE_HINTS = {"broadcast": " (every rank passes an array of the root's shape and dtype, which the root's "
                           "overwrites; `broadcast_object` for Python objects)"}


def as_array(x: Any, op: str | None = None, g: Any = None) -> np.ndarray:
    """`x` as an array of a dtype ringdist can send: any dtype with a fixed item size (a
    TypeError naming the call `op`, and the rank of communicator `g`, otherwise)."""
    arr = np.asarray(x)
    if arr.dtype.hasobject or arr.dtype.itemsize == 0:
        why = ("ringdist sends raw array bytes; object arrays are not supported" if arr.dtype.hasobject else
               f"dtype {arr.dtype} has no fixed item size")
        if x is None:
            why = f"None is not an array{NONE_HINTS.get(op, '')}"
        if op:
            why = f"{op}: {why}"
        raise TypeError(f"rank {g.rank()}: {why}" if g is not None else why)
    return arr


def as_rows(x: Any, op: str | None = None, g: Any = None) -> np.ndarray:
    """The input of a gather: a 0-d array counts as shape (1,)."""
    arr = as_array(x, op, g)
    return arr.reshape(1) if arr.ndim == 0 else arr


def check_rows_divide(arr: np.ndarray, x: Any, call: str, rank: int, n: int) -> None:
    """ValueError unless the group size `n` divides the rows of `arr` (`as_rows` of `x`)."""
    if arr.shape[0] % n:
        zero_d = " (x is 0-d: it counts as shape (1,))" if arr.shape == (1,) and np.ndim(x) == 0 else ""
        raise ValueError(f"rank {rank}: {call}: x.shape[0] = {arr.shape[0]} is not divisible by the "
                         f"group size {n}{zero_d}")


def byte_view(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (no copy)."""
    try:
        return memoryview(arr).cast("B")  # a third of the time of the numpy route, on every small call
    except (TypeError, ValueError):  # dtypes without a buffer format (datetime64), empty N-d shapes
        return memoryview(arr.reshape(-1).view(np.uint8))


def reducible(arr: np.ndarray, op: str, call: str | None = None, g: Any = None) -> np.ndarray:
    """`arr` as a reduction folds it: aligned, a copy where it is not (an algorithm's own
    contiguous copy of a strided one is, and is its working copy too). TypeError
    unless numpy's ufunc for `op` reduces this dtype: numbers, bool, and numeric extension dtypes
    such as ml_dtypes' bfloat16 and float8 (kind 'V' without fields). Strings would "add" by
    concatenation, truncated; objects and structured dtypes are not numbers.

    Aligned, as every peer's copy of it is: numpy picks its loop by the operands' alignment
    too, and a buffered loop over an unaligned one (an array at an odd offset in a buffer)
    picked the other NaN in the last elements, on the input's own rank alone."""
    dt = arr.dtype
    why = _unreducible.get((dt, op), "")
    if why == "":  # not asked yet for this dtype and op
        why = _unreducible[(dt, op)] = _why_unreducible(dt, op)
    if why is not None:
        raise TypeError(f"{'' if g is None else f'rank {g.rank()}: '}{call or op}: {why}")
    return arr if arr.flags.aligned else arr.copy(order="C")


_unreducible: dict[tuple[np.dtype, str], str | None] = {}  # (dtype, op) -> why it cannot be reduced, or None


def _why_unreducible(dt: np.dtype, op: str) -> str | None:
    if dt.kind in "SUOM" or dt.fields is not None or type(dt) is _RAW_BYTES:
        return f"dtype {dt} is not numeric or bool; only those can be reduced"
    probe = np.zeros(1, dtype=dt)
    try:
        REDUCERS[op](probe, probe, out=probe)
    except TypeError:
        return f"numpy cannot reduce dtype {dt} with {REDUCERS[op].__name__}"
    return None


def combine(ufunc: Any, first: np.ndarray, second: np.ndarray, out: np.ndarray) -> None:
    """out = first op second, with the bits of numpy's fold in place into `first` (as
    `fold_in_place` folds) whatever `out` aliases. numpy runs a one-element call whose output is
    its first input as a reduction, which keeps the other NaN (+NaN + -NaN) and rounds complex
    products otherwise: two ranks folding the same pair, the output on a different operand on
    each, disagreed. (Longer arrays get the same bits either way.)"""
    if out.size == 1 and not np.may_share_memory(out, first):
        acc = np.array(first, copy=True)
        ufunc(acc, second, out=acc)
        np.copyto(out, acc)
    else:
        ufunc(first, second, out=out)


def fold_piece(rows: list[np.ndarray], ufunc: Any, out: np.ndarray) -> None:
    """`fold` of a piece of longer rows, with the bits the whole rows' fold gives it: a
    one-element piece is folded as two elements (numpy runs a one-element call into its first
    operand as a reduction, which rounds complex products and keeps NaNs otherwise)."""
    if out.size == 1 and len(rows) > 2:
        pair = np.empty(2, out.dtype)
        fold([np.repeat(row.reshape(-1), 2) for row in rows], ufunc, pair)
        out.reshape(-1)[0] = pair[0]
        return
    fold(rows, ufunc, out)


def fold_in_place(rows: list[np.ndarray], ufunc: Any, out: np.ndarray) -> None:
    """out = rows[0], then out = out op row for each next row, in place: a scan's fold. Every
    step in place, as the chain folds a prefix into what landed (`flows.ReducingInflow`): numpy
    may round complex products differently into a separate array (AVX-512), so every scan
    algorithm folds this one way and their bits agree."""
    np.copyto(out, rows[0])
    for row in rows[1:]:
        ufunc(out, row, out=out)


# x87's 80-bit long double, stored in 16 bytes (a complex one in 32): an operation writes the first
# 10 of each; the rest of a result is whatever its buffer held before, different on every rank.
_X87 = np.finfo(np.longdouble).nmant == 63 and np.dtype(np.longdouble).itemsize == 16


def clear_padding(out: Any) -> Any:
    """A reduction's result (None passes) with the unused bytes of each x87 long double zeroed,
    so that every rank's result is the same bytes, not only the same values."""
    if _X87 and out is not None and out.dtype.char in "gG":
        units = out.reshape(-1).view(np.uint8).reshape(-1, 16)
        if out.dtype.isnative:
            units[:, 10:] = 0
        else:  # byte-swapped (">f16" here): the 10 bytes of the number are the last ones
            units[:, :6] = 0
    return out


def fold(rows: list[np.ndarray], ufunc: Any, out: np.ndarray) -> None:
    """out = rows[0] op rows[1] op ... in rank order, so every rank computing it gets the same bits.

    The first op reads both rows and writes `out` in one pass (no copy of rows[0] first)."""
    if len(rows) == 1:
        np.copyto(out, rows[0])
        return
    ufunc(rows[0], rows[1], out=out)
    for row in rows[2:]:
        ufunc(out, row, out=out)
