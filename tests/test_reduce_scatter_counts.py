"""reduce_scatter with `counts` (MPI's Reduce_scatter with recvcounts) against numpy's fold in
rank order, on ranks as threads over real connections, over shared memory and TCP; and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import ringdist as rd
from ringdist.errors import MismatchError, RingError

from harness import run_ranks

UFUNCS = {"sum": np.add, "max": np.maximum, "bxor": np.bitwise_xor, "prod": np.multiply}


def _counts(n, rows, seed):
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, rows + 1, size=n - 1))
    return np.diff(np.concatenate([[0], cuts, [rows]])).tolist()


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("shm", [True, False])
@pytest.mark.parametrize("op, dtype, trailing, rows", [("sum", np.float64, (3,), 50), ("max", np.int16, (), 7),
                                                      ("bxor", np.uint8, (2, 2), 0), ("sum", np.float32, (), 300000),
                                                      ("prod", np.bool_, (), 11)])
def test_each_rank_gets_its_rows_folded_in_rank_order(n, shm, op, dtype, trailing, rows):
    counts = _counts(n, rows, seed=n * 31 + rows)
    rng = np.random.default_rng(rows)
    blocks = [rng.integers(0, 50, size=(rows,) + trailing).astype(dtype) for _ in range(n)]

    def rank(g):
        return rd.reduce_scatter(blocks[g.rank()], op, counts=counts, group=g)

    whole = blocks[0].copy()
    for b in blocks[1:]:
        UFUNCS[op](whole, b, out=whole)
    ends = np.cumsum([0] + counts)
    for r, got in enumerate(run_ranks(n, rank, shm=shm)):
        assert got.dtype == np.dtype(dtype) and got.shape == (counts[r],) + trailing
        assert got.tobytes() == whole[ends[r]:ends[r + 1]].tobytes(), r  # the same bits as the fold in rank order


def test_async_a_generator_of_counts_and_a_group_of_one():
    def rank(g):
        x = np.arange(6) * (g.rank() + 1)
        return rd.reduce_scatter(x, counts=(k for k in [1, 5, 0]), async_op=True, group=g).wait().tolist()

    assert run_ranks(3, rank) == [[0], [6, 12, 18, 24, 30], []]
    assert run_ranks(1, lambda g: rd.reduce_scatter(np.arange(3), "max", counts=[3], group=g).tolist()) == [[0, 1, 2]]


def test_ranks_that_disagree_on_the_counts_all_raise():
    def rank(g):
        counts = [2, 2] if g.rank() == 0 else [1, 3]
        try:
            rd.reduce_scatter(np.ones(4), counts=counts, group=g)
        except RingError as exc:
            return type(exc), str(exc)
        return None

    outcomes = run_ranks(2, rank)
    assert all(o is not None and o[0] is MismatchError for o in outcomes), outcomes
    assert "counts=[2, 2]" in outcomes[1][1] and "counts=[1, 3]" in outcomes[1][1], outcomes


def test_counts_against_even_blocks_is_a_mismatch_and_bad_counts_fail_every_rank():
    def rank(g):
        try:
            if g.rank() == 0:
                rd.reduce_scatter(np.ones(4), counts=[2, 2], group=g)
            else:
                rd.reduce_scatter(np.ones(4), group=g)
        except RingError as exc:
            return type(exc)
        return None

    assert MismatchError in run_ranks(2, rank)

    def bad(g):
        try:
            rd.reduce_scatter(np.ones(4), counts=[2, 3] if g.rank() == 1 else [2, 2], group=g, timeout=20)
        except (ValueError, RingError) as exc:
            return str(exc)
        return "returned"

    outcomes = run_ranks(2, bad)
    assert outcomes[1] == ("rank 1: sum_scatter: counts must be 2 non-negative integers summing to x.shape[0] = 4, "
                           "got [2, 3]"), outcomes
    assert "aborted by rank 1" in outcomes[0], outcomes


@pytest.mark.parametrize("n, counts", [(3, [43691, 3, 2]), (3, [1, 1, 43691]), (10, [65537] + [5] * 9),
                                       (10, [1] * 9 + [40000])])
def test_complex_products_in_pieces_have_the_whole_folds_bits(n, counts):
    # Shared memory folds a block a piece at a time (a slot's share, or a read's piece); numpy
    # rounds a one-element piece folded into its first operand otherwise (AVX-512), so a block's
    # last element came out unlike numpy's fold of the whole rows.
    from ringdist.arrays import fold
    rng = np.random.default_rng(sum(counts))
    rows = sum(counts)
    xs = [(rng.standard_normal(rows) + 1j * rng.standard_normal(rows)).astype(np.complex128) for _ in range(n)]
    whole = np.empty(rows, np.complex128)
    fold(xs, np.multiply, whole)
    ends = np.cumsum([0] + counts)
    got = run_ranks(n, lambda g: rd.reduce_scatter(xs[g.rank()], "prod", counts=counts, group=g))
    for r in range(n):
        assert got[r].tobytes() == whole[ends[r]:ends[r + 1]].tobytes(), r


@pytest.mark.parametrize("rows", [40, 1 << 20, None])
def test_past_8_ranks_on_one_machine_small_and_large_blocks(rows):
    # No mesh past 8 ranks: one round through the segments where every block fits it, else
    # each rank reads its block of every peer's rows from the peer's memory (where it can).
    # rows None: one rank's counts differ (rows of 2 large blocks, or of small ones): every rank
    # raises MismatchError naming the counts.
    n = 10
    counts = _counts(n, rows or 1 << 20, seed=rows or 5)
    rng = np.random.default_rng(7)
    blocks = [rng.standard_normal(rows or 1 << 20).astype(np.float32) for _ in range(n)]

    def rank(g):
        if rows is not None:
            return rd.reduce_scatter(blocks[g.rank()], counts=counts, group=g)
        try:
            rd.reduce_scatter(blocks[g.rank()], counts=counts if g.rank() != 3 else [1] * (n - 1) + [(1 << 20) - 9],
                              group=g)
        except MismatchError as exc:
            return str(exc)
        return None

    results = run_ranks(n, rank, timeout=120)
    if rows is None:
        assert all(m is not None and "counts=[1, 1, 1" in m for m in results), results
        return
    whole = blocks[0].copy()
    for b in blocks[1:]:
        np.add(whole, b, out=whole)
    ends = np.cumsum([0] + counts)
    for r, got in enumerate(results):
        assert got.tobytes() == whole[ends[r]:ends[r + 1]].tobytes(), r


def test_a_one_element_complex_product_over_tcp_has_the_whole_folds_bits():
    # Over TCP the blocks that landed are folded in place: a one-element result went through
    # numpy's one-element reduction, which rounds a complex product otherwise (AVX-512), unlike
    # the same call through shared memory.
    from ringdist.arrays import fold
    rng = np.random.default_rng(11)
    n = 3
    xs = [(rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex128) for _ in range(n)]
    whole = np.empty(3, np.complex128)
    fold(xs, np.multiply, whole)
    for shm in (False, True):
        got = run_ranks(n, lambda g: rd.reduce_scatter(xs[g.rank()], "prod", counts=[1, 1, 1], group=g), shm=shm)
        assert [got[r].tobytes() for r in range(n)] == [whole[r:r + 1].tobytes() for r in range(n)], shm


@pytest.mark.parametrize("n", [2, 3, 5])
def test_over_tcp_in_windows_the_bits_are_the_fold_in_rank_order(n, monkeypatch):
    # Over SCRATCH_WINDOW (here 64 KiB, to keep the arrays small) the exchange and fold run a
    # span of every block at a time (whole blocks held N times the result). Spans start on whole
    # fold blocks and a block's last takes a short rest with it: NaN signs and complex products'
    # last bits as one fold of the whole block; empty and one-row blocks too.
    from ringdist.algorithms import ring
    monkeypatch.setattr(ring, "SCRATCH_WINDOW", 64 << 10)
    nans = np.array([0x7FC00000, 0xFFC00000], np.uint32).view(np.float32)
    rows = 50_003
    counts = _counts(n, rows, seed=n)
    counts[0], counts[-1] = counts[0] + counts[-1] - 1, 1  # a one-row block
    if n > 2:
        counts[1], counts[0] = 0, counts[0] + counts[1]  # an empty one
    xs, cs = [], []
    for q in range(n):
        rng = np.random.default_rng(q)
        x = rng.standard_normal((rows, 2)).astype(np.float32)
        x[rng.integers(0, rows, 5000)] = nans[q % 2]
        xs.append(x)
        cs.append((rng.standard_normal(rows) + 1j * rng.standard_normal(rows)).astype(np.complex64))

    def rank(g):
        return rd.reduce_scatter(xs[g.rank()], counts=counts, group=g), \
            rd.reduce_scatter(cs[g.rank()], "prod", counts=counts, group=g)

    with np.errstate(invalid="ignore"):
        got = run_ranks(n, rank, shm=False)
        sums, prods = np.add(xs[0], xs[1]), np.multiply(cs[0], cs[1])  # as `arrays.fold`: the first pair
        for q in range(2, n):                                            # into a new array, then in place
            np.add(sums, xs[q], out=sums)
            np.multiply(prods, cs[q], out=prods)
    ends = np.cumsum([0] + counts)
    for r, (total, product) in enumerate(got):
        assert total.tobytes() == sums[ends[r]:ends[r + 1]].tobytes(), r
        assert product.tobytes() == prods[ends[r]:ends[r + 1]].tobytes(), r
