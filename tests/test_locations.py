"""all_maxloc and all_minloc (MPI's MAXLOC and MINLOC) against numpy's answer, on ranks as
threads over real connections: ties, NaNs, integers, bool, given indices; and their errors."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest

import ringdist as rd
from ringdist.errors import MismatchError, RingError

from harness import run_ranks


def _expected(blocks, which, indices):
    """numpy's extreme of each element over the ranks, and the least index of a rank holding it."""
    stack = np.stack(blocks)
    values = np.max(stack, axis=0) if which == "max" else np.min(stack, axis=0)
    held = stack == values
    if stack.dtype.kind not in "iub":  # NaN (of every float type) and NaT: where they are
        held |= (stack != stack) & (values != values)
    where = np.where(held, np.stack(indices), np.iinfo(np.int64).max).min(axis=0)
    return values, where


def _block(r, dtype, shape, seed):
    rng = np.random.default_rng(seed * 100 + r)
    x = rng.integers(0, 4, size=shape).astype(dtype)  # few values: many ties
    if np.dtype(dtype).kind not in "iub" and x.size:
        nan = np.timedelta64("NaT", "s") if np.dtype(dtype).kind == "m" else np.nan
        x.flat[rng.integers(0, x.size)] = nan if r % 2 else x.flat[0]
    return x


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("which", ["max", "min"])
@pytest.mark.parametrize("dtype, shape", [(np.float64, (40,)), (np.int16, (3, 7)), (np.bool_, (9,)),
                                          (np.float32, ()), (np.uint8, (70000,)), ("m8[s]", (30,)),
                                          (ml_dtypes.bfloat16, (30,))])
@pytest.mark.parametrize("given", [False, True])
def test_every_rank_gets_numpy_s_extremes_and_the_least_index_holding_each(n, which, dtype, shape, given):
    seed = n * 7 + len(shape)
    blocks = [_block(r, dtype, shape, seed) for r in range(n)]
    indices = [np.full(shape, r) if not given else (np.arange(int(np.prod(shape))).reshape(shape) * n + (n - 1 - r))
               for r in range(n)]
    call = rd.all_maxloc if which == "max" else rd.all_minloc

    def rank(g):
        r = g.rank()
        return call(blocks[r], indices[r] if given else None, group=g)

    values, where = _expected(blocks, which, indices)
    for got_values, got_where in run_ranks(n, rank):
        assert got_values.dtype == np.dtype(dtype) and got_where.dtype == np.int64
        if np.dtype(dtype).kind == "V":  # (numpy 1.x's comparison takes bfloat16's NaN for no NaN)
            got_values, values = got_values.astype(np.float32), values.astype(np.float32)
        np.testing.assert_array_equal(got_values, values)  # NaN where numpy has NaN
        np.testing.assert_array_equal(got_where, where)


def test_async_and_a_group_of_one():
    def rank(g):
        w = rd.all_minloc(np.array([g.rank(), -g.rank()]), async_op=True, group=g)
        values, where = w.wait()
        return values.tolist(), where.tolist()

    assert run_ranks(3, rank) == [([0, -2], [0, 2])] * 3
    assert run_ranks(1, lambda g: [a.tolist() for a in rd.all_maxloc(np.array([4.0]), 9, group=g)]) == [[[4.0], [9]]]


def test_all_maxloc_never_pairs_with_all_max():
    def rank(g):
        try:
            if g.rank() == 0:
                rd.all_maxloc(np.ones(3), group=g)
            else:
                rd.all_max(np.ones(3), group=g)
        except RingError as exc:
            return type(exc)
        return None

    outcomes = run_ranks(2, rank)
    assert MismatchError in outcomes and all(o is not None for o in outcomes), outcomes


@pytest.mark.parametrize("index, error", [("x", "index must be an integer or integers, got dtype <U1"),
                                          (True, "index must be an integer or integers, got True"),
                                          (np.zeros(4, int), r"index of shape \(4,\) does not fit x's shape \(3,\)"),
                                          (np.array([2**64 - 1] * 3, np.uint64), "index values must fit in int64")])
def test_a_bad_index_on_one_rank_fails_the_call_on_every_rank(index, error):
    def rank(g):
        try:
            rd.all_maxloc(np.ones(3), index if g.rank() == 1 else None, group=g, timeout=20)
        except (TypeError, ValueError, RingError) as exc:
            return str(exc)
        return "returned"

    outcomes = run_ranks(3, rank)
    assert re.search(f"rank 1: all_maxloc: {error}", outcomes[1]), outcomes
    assert all("aborted by rank 1" in o for o in (outcomes[0], outcomes[2])), outcomes


def test_a_dtype_that_cannot_be_compared_is_refused_on_every_rank():
    def rank(g):
        try:
            rd.all_minloc(np.array(["a"]) if g.rank() == 0 else np.array([1.0]), group=g)
        except (TypeError, RingError) as exc:
            return str(exc)
        return "returned"

    outcomes = run_ranks(2, rank)
    assert "rank 0: all_minloc: dtype <U1 is not numeric or bool" in outcomes[0], outcomes
    assert "aborted by rank 0" in outcomes[1], outcomes


def test_no_memory_between_the_two_steps_fails_every_rank_at_once(monkeypatch):
    # Rank 1 runs out of memory making its candidates (8 bytes an element): the others, in the
    # second all-reduce already, are told at once rather than waiting out their timeout.
    import threading
    import time

    from ringdist import locations

    real = np.where

    class Numpy:
        def __getattr__(self, name):
            return getattr(np, name)

        def where(self, *args):
            if threading.current_thread().name == "harness-rank-1":
                raise MemoryError("no memory for the candidates")
            return real(*args)

    monkeypatch.setattr(locations, "np", Numpy())

    def rank(g):
        began = time.monotonic()
        try:
            rd.all_maxloc(np.arange(1000.0), group=g, timeout=30)
        except (MemoryError, RingError) as exc:
            return type(exc).__name__, str(exc), time.monotonic() - began
        return "returned"

    outcomes = run_ranks(3, rank)
    assert outcomes[1][0] == "MemoryError", outcomes
    for r in (0, 2):
        assert "all_maxloc aborted by rank 1: MemoryError: no memory for the candidates" in outcomes[r][1], outcomes
        assert outcomes[r][2] < 10, outcomes
