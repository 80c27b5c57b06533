"""Reductions of numpy extension dtypes (ml_dtypes' bfloat16 and float8) across ranks, and the
dtypes no reduction accepts: strings, objects, structured and raw-bytes dtypes."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import ringdist as rd

from harness import RankFailed, run_ranks

EXTENSION = [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]
SIZES = [1, 33, 70_000]  # one element; the direct paths; the ring's (past the whole-array reductions)


def values(rank: int, count: int, dtype) -> np.ndarray:
    """Small integers, exact in every one of these dtypes and in any sum of up to 5 of them."""
    return ((np.arange(count) * 3 + rank) % 4).astype(dtype)


@pytest.mark.parametrize("variant", [{}, {"direct_max": 0}], ids=["default", "ring"])
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_bfloat16_and_float8_sum_and_max_across_ranks(n, variant):
    def rank(g):
        out = []
        for dtype in EXTENSION:
            for count in SIZES:
                x = values(g.rank(), count, dtype)
                out.append((rd.all_sum(x, group=g), rd.all_max(x, group=g)))
        return out

    results = run_ranks(n, rank, **variant)
    i = 0
    for dtype in EXTENSION:
        for count in SIZES:
            inputs = [values(r, count, np.float32) for r in range(n)]
            want_sum = np.sum(inputs, axis=0).astype(dtype)
            want_max = np.max(inputs, axis=0).astype(dtype)
            for r in range(n):
                got_sum, got_max = results[r][i]
                where = f"{np.dtype(dtype).name} x{count}, N={n}, rank {r}"
                assert got_sum.dtype == np.dtype(dtype) and got_max.dtype == np.dtype(dtype), where
                assert got_sum.tobytes() == want_sum.tobytes(), where
                assert got_max.tobytes() == want_max.tobytes(), where
                assert got_sum.tobytes() == results[0][i][0].tobytes(), where
            i += 1


@pytest.mark.parametrize("dtype,word", [("U3", "<U3"), ("S2", "|S2"), ("V4", "|V4"),
                                        ([("a", "<i4")], "('a', '<i4')"), (object, "object")])
def test_strings_objects_structured_and_raw_bytes_are_refused(dtype, word):
    x = np.zeros(3, dtype=dtype)
    for call in (rd.all_sum, rd.all_max):
        with pytest.raises(TypeError, match=r"all_(sum|max): dtype .* not numeric or bool|object arrays") as info:
            call(x)
        assert word in str(info.value) or dtype is object


def test_timedelta64_sums_and_compares_and_its_product_and_datetime64_are_refused():
    # As numpy: durations add, compare and average nowhere; dates do not add.
    def rank(g):
        x = np.array([1, -2, 3], "m8[s]") * (g.rank() + 1)
        out = [rd.all_sum(x, group=g), rd.all_max(x, group=g), rd.all_min(x, group=g)]
        for bad in (lambda: rd.all_prod(x, group=g), lambda: rd.all_reduce(x, "avg", group=g),
                    lambda: rd.all_sum(np.array(["2026-12-07"], "M8[D]"), group=g)):
            with pytest.raises(TypeError) as info:
                bad()
            out.append(str(info.value))
        return out

    for r, (total, most, least, prod, avg, dates) in enumerate(run_ranks(3, rank)):
        assert total.dtype == np.dtype("m8[s]") and total.astype(int).tolist() == [6, -12, 18], r
        assert most.astype(int).tolist() == [3, -2, 9] and least.astype(int).tolist() == [1, -6, 3], r
        assert f"rank {r}: all_prod: numpy cannot reduce dtype timedelta64[s] with multiply" == prod, prod
        assert "cannot hold an average" in avg and "datetime64[D] is not numeric or bool" in dates, (avg, dates)


def test_ranks_passing_different_extension_dtypes_of_one_size_disagree():
    # Both float8 formats' array-protocol string is raw '|V1': the header names the dtype, so
    # neither rank folds the other's bits as if they were its own format.
    def rank(g):
        dtype = ml_dtypes.float8_e4m3fn if g.rank() == 0 else ml_dtypes.float8_e4m3b11fnuz
        rd.all_sum(np.ones(8, dtype=dtype), group=g)

    with pytest.raises(RankFailed) as info:
        run_ranks(2, rank)
    errors = info.value.errors
    assert all(isinstance(e, rd.MismatchError) for e in errors), errors
    assert "float8_e4m3fn" in str(errors[0]) and "float8_e4m3b11fnuz" in str(errors[0]), errors[0]


ALGORITHM_NAMES = sorted(__import__("ringdist.algorithms", fromlist=["ALGORITHMS"]).ALGORITHMS)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 9])
def test_a_one_element_sum_of_nans_of_both_signs_has_the_same_bits_on_every_rank(n):
    # numpy runs a one-element add whose output is its first input as a reduction, which keeps
    # the other NaN: recursive doubling's lower and upper rank (and a pair's exchange) folded the
    # same two operands with the output on different ones, and got +NaN on some ranks, -NaN on others.
    nans = np.array([0x7FF8000000000000, 0xFFF8000000000000], np.uint64).view(np.float64)

    for name in ALGORITHM_NAMES:
        if name == "hier":
            continue  # hosts of their own (test_hier)
        got = run_ranks(n, lambda g: _one_element_nan_sum(g, nans), algo=(("all_reduce", name),))
        runs = [r for r in got if r is not None]
        if not runs:
            continue
        assert len(runs) == n, (name, got)
        every = {r[0] for r in runs}
        assert len(every) == 1, (name, n, [bytes(b).hex() for b in every])
        for q in range(n):  # the rooted reduce gives the root all_sum's bits
            assert got[q][1 + q] == runs[0][0], (name, n, q)


def _one_element_nan_sum(g: rd.Group, nans: np.ndarray):
    """A one-element sum of NaNs of both signs and a one-element complex product (which numpy
    rounds otherwise in place), then the rooted reduce of both at every root: their bytes."""
    x = nans[g.rank() % 2:g.rank() % 2 + 1]
    z = np.array([(g.rank() + 1.37) * 1e3 + 1j * (g.rank() - 2.71) * 1e3])
    with np.errstate(invalid="ignore"):
        try:
            return [rd.all_sum(x, group=g).tobytes() + rd.all_prod(z, group=g).tobytes()] + [
                (lambda y, w: None if y is None else y.tobytes() + w.tobytes())(
                    rd.reduce(x, root=q, group=g), rd.reduce(z, root=q, op="prod", group=g))
                for q in range(g.size())]
        except rd.ConfigError:
            return None
