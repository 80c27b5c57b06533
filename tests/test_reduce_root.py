"""A rooted reduce: all_<op>'s very bits on the root (every reduction algorithm, every kind of
root), None elsewhere; and a leaf of the tree is done once it has sent, without waiting for
ranks it has nothing to do with."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import ringdist as rd

from harness import run_disagreement, run_ranks

# (group size, forced algorithm or None for the table's, shm)
CASES = [(2, None, True), (2, "pairwise", False), (2, "doubling", False), (3, None, True), (3, None, False),
         (3, "two-shot", False), (3, "shm", True), (4, None, True), (4, None, False), (4, "doubling", False),
         (4, "direct", False), (4, "two-shot", False), (4, "shm", True), (4, "ring", False),
         (5, "doubling", False), (5, None, False), (6, "two-shot", False), (7, "direct", False),
         (7, "shm", True), (8, "doubling", False), (10, None, False), (11, "doubling", False)]
SIZES = (1, 999, 20_001)  # elements: one, odd blocks, past the small-message rows


def _input(r: int, count: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(r * 7919 + count)
    x = rng.standard_normal(count) * 10 / 7
    if dtype == "zeros":  # signed zeros and NaN: max keeps whichever operand comes first
        x = np.where(rng.random(count) < 0.5, 0.0, -0.0)
        x[::97] = np.nan
        return x
    return x.astype(dtype)


@pytest.mark.parametrize("n,algo,shm", CASES)
def test_a_rooted_reduce_gives_all_ops_bits_on_the_root(n, algo, shm):
    p2 = 1 << (n.bit_length() - 1)
    roots = sorted({0, 1, n - 1, p2 % n})  # p2 % n: an extra rank past the power of two, where there is one
    ops = [("sum", "float32"), ("prod", "float64"), ("max", "zeros"), ("min", "float16"), ("bxor", "int32"),
           ("band", "bool")]

    def rank(g: rd.Group) -> list:
        out = []
        for count in SIZES:
            for op, dtype in ops:
                x = _input(g.rank(), count, dtype)
                every = rd.all_reduce(x, op, group=g)
                for root in roots:
                    got = rd.reduce(x, root=root, op=op, group=g)
                    out.append((count, op, root, every, got))
        x = _input(g.rank(), 2 * 301, "float64")[::2].reshape(7, 43)  # strided, 2-D
        out.append(("strided", "sum", 0, rd.all_sum(x, group=g), rd.reduce(x, root=0, group=g)))
        out.append(("0-d", "sum", n - 1, rd.all_sum(np.float64(g.rank() / 3), group=g),
                    rd.reduce(np.float64(g.rank() / 3), root=n - 1, group=g)))
        return out

    overrides = {"shm": shm}
    if algo is not None:
        overrides["algo"] = (("all_reduce", algo),)
    results = run_ranks(n, rank, **overrides)
    for r, rows in enumerate(results):
        for count, op, root, every, got in rows:
            where = (n, algo, count, op, root, r)
            if r != root:
                assert got is None, where
                continue
            assert got.dtype == every.dtype and got.shape == every.shape, where
            assert got.tobytes() == every.tobytes(), where


@pytest.mark.parametrize("algo", [None, "doubling"])
def test_a_leaf_of_the_tree_returns_before_the_far_ranks_call(algo):
    # 4 ranks, root 0: rank 1's array goes to rank 0 in the first step; ranks 2 and 3 enter
    # the call only once rank 1 has returned from it (or after 20 s, which fails the test).
    returned = threading.Event()

    def rank(g: rd.Group):
        x = np.full(8, g.rank() + 1.0)
        waited = True
        if g.rank() >= 2:
            waited = returned.wait(20)
        got = rd.reduce(x, root=0, group=g)
        if g.rank() == 1:
            returned.set()
        return waited, got

    # The TCP table's choice (on one machine shared memory reduces instead: every rank folds a
    # slice, so none returns before the others call).
    overrides = {"algo": (("all_reduce", algo),)} if algo else {"shm": False}
    results = run_ranks(4, rank, timeout=90, **overrides)
    assert [w for w, _ in results] == [True] * 4
    assert np.array_equal(results[0][1], np.full(8, 10.0)) and all(got is None for _, got in results[1:])


DISAGREEMENTS = {
    "root": lambda g: rd.reduce(np.ones(4), root=g.rank() % 2, group=g),
    "root_last": lambda g: rd.reduce(np.ones(4), root=g.size() - 1 if g.rank() == g.size() - 1 else 0, group=g),
    "op": lambda g: rd.reduce(np.ones(4), op="max" if g.rank() == 3 else "sum", group=g),
    "all_sum": lambda g: (rd.all_sum if g.rank() == 1 else rd.reduce)(np.ones(4), group=g),
}


@pytest.mark.parametrize("n", [4, 5])
@pytest.mark.parametrize("case", list(DISAGREEMENTS))
def test_ranks_that_disagree_on_a_rooted_reduce_all_raise(case, n):
    # A leaf whose partner agreed with it is done once it has sent: it learns of the failure
    # in its next call. Every other rank raises in this one.
    outcomes, errors = run_disagreement(n, DISAGREEMENTS[case], timeout=60, algo=(("all_reduce", "doubling"),))
    assert any(isinstance(o, rd.MismatchError) for o in outcomes), outcomes
    assert all(isinstance(o, rd.RingError) for o in outcomes if o != "returned"), outcomes
    assert all(isinstance(e, rd.RingError) for e in errors), errors


@pytest.mark.parametrize("n", [2, 3, 5])
def test_a_ring_rooted_reduce_in_windows_gives_the_all_reduces_bits(n, monkeypatch):
    # Over SCRATCH_WINDOW (here 64 KiB, to keep the arrays small) the ring's rooted reduce runs
    # the all-reduce a span of every block at a time; off the root each span lands in one reused
    # window. Spans start on whole fold blocks and keep every element in its block: the bits of
    # one run, NaN signs and signed zeros included (max), on every kind of root.
    from ringdist.algorithms import ring
    monkeypatch.setattr(ring, "SCRATCH_WINDOW", 64 << 10)
    ops = [("sum", "float32"), ("max", "zeros"), ("prod", "float64"), ("bxor", "int32")]

    def rank(g: rd.Group) -> list:
        out = []
        for count in (40_001, 100_003):
            for op, dtype in ops:
                x = _input(g.rank(), count, dtype)
                every = rd.all_reduce(x, op, group=g)
                for root in sorted({0, n - 1, n // 2}):
                    out.append((count, op, root, every, rd.reduce(x, root=root, op=op, group=g)))
        return out

    results = run_ranks(n, rank, shm=False, algo=(("all_reduce", "ring"),))
    for r, rows in enumerate(results):
        for count, op, root, every, got in rows:
            if r != root:
                assert got is None, (count, op, root, r)
            else:
                assert got.tobytes() == every.tobytes(), (count, op, root, r)


@pytest.mark.parametrize("n", [2, 4, 5])
def test_a_block_whose_last_window_is_a_short_rest_keeps_the_all_reduces_bits(n, monkeypatch):
    # A block of two or four windows' spans and a rest of 1-7 elements: folded alone, a rest that
    # short ran numpy's scalar loop (the sign of a NaN of +NaN and -NaN) or its one-element
    # reduction (a complex product's rounding), where the whole block's fold takes it with the
    # fold block before it.
    from ringdist.algorithms import ring
    from ringdist.flows import REDUCE_BLOCK
    monkeypatch.setattr(ring, "SCRATCH_WINDOW", 64 << 10)

    def span(itemsize: int) -> int:
        fold = REDUCE_BLOCK // itemsize
        return max(fold, (64 << 10) // n // itemsize // fold * fold)

    def rank(g: rd.Group) -> list:
        rng = np.random.default_rng(g.rank())
        out = []
        for rest in (1, 3, 7):
            x = rng.standard_normal(n * (2 * span(8) + rest))
            x[rng.random(x.size) < 0.1] = np.nan
            x[rng.random(x.size) < 0.1] *= -1  # NaNs of both signs
            c = (rng.standard_normal(n * (4 * span(16) + rest))
                 + 1j * rng.standard_normal(n * (4 * span(16) + rest))).astype(np.complex128)
            for value, op in ((x, "sum"), (c, "prod")):
                out.append((rest, op, rd.all_reduce(value, op, group=g), rd.reduce(value, root=0, op=op, group=g)))
        return out

    for r, rows in enumerate(run_ranks(n, rank, shm=False, algo=(("all_reduce", "ring"),))):
        for rest, op, every, got in rows:
            if r == 0:
                assert got.tobytes() == every.tobytes(), (n, rest, op)
            else:
                assert got is None
