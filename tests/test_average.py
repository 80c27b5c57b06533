"""all_reduce(x, "avg") (torch's ReduceOp.AVG): all_sum's bits divided by the group's size, the
same on every rank, under its own call name; refused for dtypes that cannot hold an average.
A rooted reduce and a reduce-scatter take avg too. Ranks as threads over real connections."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import ringdist as rd

from harness import RankFailed, run_ranks


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("dtype, size", [(np.float32, 7), (np.float64, 1 << 18), (np.complex64, 5), (np.float16, 9),
                                         (ml_dtypes.bfloat16, 6)])
def test_avg_is_all_sum_divided_by_the_size_with_the_same_bits_everywhere(n, dtype, size):
    def rank(g):
        x = (np.arange(size) * (g.rank() + 1) + 0.25).astype(dtype)
        avg = rd.all_reduce(x, "avg", group=g)
        total = rd.all_sum(x, group=g)
        assert avg.dtype == np.dtype(dtype) and avg.shape == x.shape
        np.testing.assert_array_equal(avg, total / np.asarray(n, dtype=total.real.dtype))
        return avg.tobytes()

    got = run_ranks(n, rank)
    assert len(set(got)) == 1


def test_avg_async_and_on_a_group_of_one():
    got = run_ranks(3, lambda g: rd.all_reduce(np.full(4, float(g.rank())), "avg", group=g, async_op=True).wait())
    assert all(x.tolist() == [1.0] * 4 for x in got)
    alone = run_ranks(1, lambda g: rd.all_reduce(np.array([3.5]), "avg", group=g))
    assert alone[0].tolist() == [3.5]


@pytest.mark.parametrize("dtype", [np.int64, ml_dtypes.int4])
def test_an_integer_avg_is_refused_on_every_rank_naming_the_rank(dtype):
    def rank(g):
        x = np.arange(3).astype(dtype) if g.rank() == 1 else np.ones(3)
        with pytest.raises((TypeError, rd.RingError), match=rf"rank 1: all_reduce\(op='avg'\): dtype {np.dtype(dtype)} cannot hold an "
                                                             r"average; pass a floating dtype, or sum and divide"):
            rd.all_reduce(x, "avg", group=g)
        return "raised"

    assert run_ranks(3, rank) == ["raised"] * 3


@pytest.mark.parametrize("algorithm", ["ring", "rabenseifner"])
def test_an_algorithm_forced_for_all_sum_runs_avg_too(algorithm):
    def rank(g):
        x = np.random.default_rng(g.rank()).random(1000).astype(np.float32)
        return rd.all_reduce(x, "avg", group=g).tobytes() == (rd.all_sum(x, group=g) / np.float32(g.size())).tobytes()

    assert run_ranks(5, rank, algo=(("all_sum", algorithm),)) == [True] * 5


def test_avg_never_pairs_with_sum():
    def rank(g):
        if g.rank() == 0:
            return rd.all_reduce(np.ones(3), "avg", group=g)
        return rd.all_sum(np.ones(3), group=g)

    with pytest.raises(RankFailed) as failed:
        run_ranks(2, rank)
    assert all(isinstance(e, rd.MismatchError) for e in failed.value.errors)
    assert "rank 0 called all_reduce(shape=(3,), dtype=float64, op='avg')" in str(failed.value.errors[0])


def test_a_bad_op_names_avg_among_all_reduce_s():
    with pytest.raises(RankFailed) as failed:
        run_ranks(2, lambda g: rd.all_reduce(np.ones(2), "mean", group=g))
    for r, e in enumerate(failed.value.errors):
        assert isinstance(e, ValueError) and str(e) == (
            f"rank {r}: all_reduce: op must be one of sum, max, min, prod, band, bor, bxor, avg, got 'mean'"), e


@pytest.mark.parametrize("n", [2, 3])
def test_reduce_and_reduce_scatter_take_avg_as_all_reduce_does(n):
    # torch's reduce(op=AVG) and reduce_scatter(op=AVG): the root gets all_reduce avg's very bits,
    # each rank its rows of them (counts too); refused for integers on every rank alike.
    def rank(g):
        r = g.rank()
        x = np.random.default_rng(r).random((2 * n, 3)).astype(np.float32)
        avg = rd.all_reduce(x, "avg", group=g)
        rooted = rd.reduce(x, root=n - 1, op="avg", group=g)
        rows = rd.reduce_scatter(x, "avg", group=g)
        counts = [2 * n - 1, 1] + [0] * (n - 2)
        uneven = rd.reduce_scatter(x, "avg", counts=counts, group=g, async_op=True).wait()
        start = sum(counts[:r])
        try:
            rd.reduce(np.arange(3), root=0, op="avg", group=g)
        except TypeError as exc:
            refused = str(exc)
        return [rooted is None if r != n - 1 else rooted.tobytes() == avg.tobytes(),
                rows.tobytes() == avg[2 * r:2 * r + 2].tobytes(),
                np.allclose(uneven, avg[start:start + counts[r]]), refused]

    for r, got in enumerate(run_ranks(n, rank)):
        assert got[:3] == [True, True, True], got
        assert got[3] == f"rank {r}: reduce: dtype int64 cannot hold an average; pass a floating dtype, or sum and divide"


def test_a_reduce_scatter_avg_never_pairs_with_a_sum():
    def rank(g):
        return rd.reduce_scatter(np.ones(4), "avg" if g.rank() == 0 else "sum", group=g)

    with pytest.raises(RankFailed) as failed:
        run_ranks(2, rank)
    assert all(isinstance(e, rd.MismatchError) for e in failed.value.errors)
    assert "rank 0 called reduce_scatter(shape=(4,), dtype=float64, op='avg')" in str(failed.value.errors[0])


def test_an_average_of_integers_is_refused_naming_the_call_as_it_was_made():
    def rank(g):
        with pytest.raises(TypeError) as refused:
            rd.all_reduce(np.arange(3), "avg", group=g)
        return str(refused.value)

    for r, said in enumerate(run_ranks(2, rank)):
        assert said == (f"rank {r}: all_reduce(op='avg'): dtype int64 cannot hold an average; pass a floating "
                        f"dtype, or sum and divide"), said
