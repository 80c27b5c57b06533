"""gather, reduce, scatter, all_to_all (with and without splits) and all_gather(uneven=True)
at N = 1..17, in-process (ranks as threads, real sockets), on the table's path and on the
ring; and ranks that disagree on root, op, splits, dtype or trailing shape: every rank
raises MismatchError in that call (or, told by a peer, the peer's error), then GroupBrokenError."""

from __future__ import annotations

import math
import re

import ml_dtypes
import numpy as np
import pytest

import ringdist as rd

from harness import RankFailed, assert_all_raised_then_broken, run_disagreement, run_ranks
from helpers import SCRIPTS, run_launcher

VARIANTS = {"default": {}, "ring": {"direct_max": 0}}


def rows(rank: int, count: int, width: int = 3, dtype=np.float32) -> np.ndarray:
    """Rank `rank`'s input: `count` rows, every element naming its rank, row and column."""
    return (np.arange(count * width).reshape(count, width) + 1000 * rank).astype(dtype)


def splits_of(rank: int, n: int) -> list[int]:
    """Uneven row counts, zeros included, different on every rank."""
    return [(rank * 7 + p * 3) % 4 for p in range(n)]


def calls(g: rd.Group) -> dict:
    r, n = g.rank(), g.size()
    root = n // 2
    x = rows(r, 2 * n)
    mine = splits_of(r, n)
    return {
        "all_to_all": rd.all_to_all(x, group=g),
        "all_to_all_splits": rd.all_to_all(rows(r, sum(mine), 2, np.int64), splits=mine, group=g),
        "all_to_all_bf16_4d": rd.all_to_all(np.ones((n, 2, 1, 2), ml_dtypes.bfloat16) * r, group=g),
        "scatter": rd.scatter(rows(r, 3 * n, 4, np.int16) if r == root else None, root=root, group=g),
        "scatter_empty": rd.scatter(np.zeros((0, 5)) if r == 0 else "ignored", group=g),
        "gather": rd.gather(x, root=root, group=g),
        "gather_large": rd.gather(rows(r, 9000), root=n - 1, group=g),  # past the direct limits
        "reduce_sum": rd.reduce(x, root=root, group=g),
        "reduce_max_large": rd.reduce(rows(r, 30_000), root=0, op="max", group=g),
        "reduce_prod": rd.reduce(np.full(5, r + 1, np.int64), root=n - 1, op="prod", group=g),
        "all_sum_large": rd.all_sum(rows(r, 30_000) / 7, group=g),
        "reduce_sum_large": rd.reduce(rows(r, 30_000) / 7, root=0, group=g),
        "all_gather_uneven": rd.all_gather(rows(r, r % 3, 2), uneven=True, group=g),
        "all_gather_uneven_large": rd.all_gather(rows(r, 5000 * (r % 2)), uneven=True, group=g),
    }


def check(results: list[dict], n: int) -> None:
    root = n // 2
    for r, got in enumerate(results):
        where = f"N={n}, rank {r}"
        want_a2a = np.concatenate([rows(q, 2 * n)[2 * r:2 * r + 2] for q in range(n)])
        assert np.array_equal(got["all_to_all"], want_a2a), where
        parts = []
        for q in range(n):
            theirs = splits_of(q, n)
            start = sum(theirs[:r])
            parts.append(rows(q, sum(theirs), 2, np.int64)[start:start + theirs[r]])
        assert np.array_equal(got["all_to_all_splits"], np.concatenate(parts)), where
        bf = got["all_to_all_bf16_4d"]
        assert bf.dtype == ml_dtypes.bfloat16 and bf.shape == (n, 2, 1, 2), where
        assert np.array_equal(bf.astype(np.float32)[:, 0, 0, 0], np.arange(n, dtype=np.float32)), where
        s = got["scatter"]
        assert s.dtype == np.int16 and np.array_equal(s, rows(root, 3 * n, 4, np.int16)[3 * r:3 * r + 3]), where
        assert got["scatter_empty"].shape == (0, 5) and got["scatter_empty"].dtype == np.float64, where
        if r == root:
            assert np.array_equal(got["gather"], np.concatenate([rows(q, 2 * n) for q in range(n)])), where
            assert np.array_equal(got["reduce_sum"], sum(rows(q, 2 * n) for q in range(n))), where
        else:
            assert got["gather"] is None and got["reduce_sum"] is None, where
        if r == n - 1:
            assert np.array_equal(got["gather_large"], np.concatenate([rows(q, 9000) for q in range(n)])), where
            assert np.array_equal(got["reduce_prod"], np.full(5, np.prod(np.arange(1, n + 1)), np.int64)), where
        else:
            assert got["gather_large"] is None and got["reduce_prod"] is None, where
        if r == 0:
            assert np.array_equal(got["reduce_max_large"], rows(n - 1, 30_000)), where
            # bitwise all_sum's, float rounding included
            assert got["reduce_sum_large"].tobytes() == got["all_sum_large"].tobytes(), where
        else:
            assert got["reduce_max_large"] is None and got["reduce_sum_large"] is None, where
        want_u = np.concatenate([rows(q, q % 3, 2) for q in range(n)])
        assert np.array_equal(got["all_gather_uneven"], want_u), where
        want_ul = np.concatenate([rows(q, 5000 * (q % 2)) for q in range(n)])
        assert np.array_equal(got["all_gather_uneven_large"], want_ul), where


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("n", range(1, 18))
def test_rooted_and_uneven_collectives(n, variant):
    check(run_ranks(n, calls, **VARIANTS[variant]), n)


@pytest.mark.parametrize("shm", [False, True])
def test_large_blocks_relayed_round_the_ring_with_a_neighbour_a_hop_ahead(shm):
    # 9 ranks (no connection to every rank): all_to_all and uneven all_gather relay streams
    # round the ring, hop by hop. With blocks of 256 KiB a rank's send to its right neighbour
    # outlasts its receive from the left, and the left neighbour, a hop ahead, sends the next
    # hop's header meanwhile: the same call (another hop, other sizes), not a mismatch.
    n, block = 9, 65536

    def rank(g: rd.Group) -> list[np.ndarray]:
        r = g.rank()
        x = np.arange(n * block, dtype=np.float32) + 1e6 * r  # exact in float32
        got = []
        for _ in range(3):
            got.append(rd.all_to_all(x, group=g))
            got.append(rd.all_gather(x[:50_000 * (r % 3)], uneven=True, group=g))
        return got

    results = run_ranks(n, rank, shm=shm)
    xs = [np.arange(n * block, dtype=np.float32) + 1e6 * q for q in range(n)]
    for r, got in enumerate(results):
        want_a2a = np.concatenate([x[r * block:(r + 1) * block] for x in xs])
        want_ag = np.concatenate([x[:50_000 * (q % 3)] for q, x in enumerate(xs)])
        for i in range(0, 6, 2):
            assert np.array_equal(got[i], want_a2a), (r, i)
            assert np.array_equal(got[i + 1], want_ag), (r, i)


@pytest.mark.parametrize("shm", [False, True])
def test_large_scatter_on_9_ranks_where_the_root_and_the_others_declare_different_arrays(shm):
    # A scatter's root declares its array's dtype and shape, every other rank an empty array's.
    # Round the ring (9 ranks, no shared memory) with 1 MiB blocks, a rank watching a connection
    # it does not read in this hop sees a neighbour's header of the same call: a role, not a mismatch.
    n, block = 9, 1 << 18

    def rank(g: rd.Group) -> list[np.ndarray]:
        x = np.arange(n * block, dtype=np.float32) if g.rank() == 0 else None
        return [rd.scatter(x, root=0, group=g) for _ in range(4)]

    results = run_ranks(n, rank, shm=shm)
    for r, got in enumerate(results):
        for y in got:
            assert np.array_equal(y, np.arange(r * block, (r + 1) * block, dtype=np.float32)), r


@pytest.mark.parametrize("n", [9, 13])
@pytest.mark.parametrize("algo", ["bruck", "pairwise-exchange", "ring", None])
def test_all_to_all_and_scatter_past_the_mesh_over_tcp_bit_for_bit(n, algo):
    # Groups over 8 over TCP: Bruck (blocks of one size), pairwise exchange (any), the ring, and
    # the table's choice (scatter: a binomial tree); empty, small, strided and large blocks (past a
    # socket's buffers), splits with empty blocks, scatters from two roots, of rows of 0 bytes too.
    # Every result against numpy on every rank.
    def rank(g: rd.Group) -> dict:
        r = g.rank()
        found = {}
        for rows in (0, 1, 5, 3000):
            x = np.arange(n * rows * 4, dtype=np.int32).reshape(n * rows, 4) + 1_000_000 * r
            found[("even", rows)] = rd.all_to_all(x, group=g)
        found["strided"] = rd.all_to_all((np.arange(n * 12, dtype=np.float64) + 1000 * r).reshape(n * 2, 6)[:, ::2],
                                         group=g)
        if algo != "bruck":
            counts = [(r * 7 + p * 3) % 5 * (1 if p % 3 else 700) for p in range(n)]
            x = np.concatenate([np.full((c, 3), 1000 * r + p, np.int16) for p, c in enumerate(counts)])
            found["splits"] = rd.all_to_all(x, splits=counts, group=g)
            for root in (0, n - 2):
                whole = np.arange(n * 6 * 40, dtype=np.float32).reshape(n * 6, 40) + root
                found[("scatter", root)] = rd.scatter(whole if r == root else None, root=root, group=g)
            found["scatter_empty_rows"] = rd.scatter(np.zeros((2 * n, 0), np.int8) if r == 3 else None, root=3,
                                                     group=g)
            found["scatter_big"] = rd.scatter(np.arange(n * 70_000, dtype=np.int32) if r == 1 else None, root=1,
                                              group=g)
        return found

    forced = (("all_to_all", algo),) + ((("scatter", algo),) if algo != "bruck" else ())
    results = run_ranks(n, rank, shm=False, algo=() if algo is None else forced)
    for r, found in enumerate(results):
        for rows in (0, 1, 5, 3000):
            want = np.concatenate([(np.arange(n * rows * 4, dtype=np.int32).reshape(n * rows, 4) + 1_000_000 * q)
                                   [r * rows:(r + 1) * rows] for q in range(n)])
            assert np.array_equal(found[("even", rows)], want), (r, rows)
        want = np.concatenate([(np.arange(n * 12, dtype=np.float64) + 1000 * q).reshape(n * 2, 6)[2 * r:2 * r + 2, ::2]
                               for q in range(n)])
        assert np.array_equal(found["strided"], want), r
        if algo != "bruck":
            want = np.concatenate([np.full(((q * 7 + r * 3) % 5 * (1 if r % 3 else 700), 3), 1000 * q + r, np.int16)
                                   for q in range(n)])
            assert np.array_equal(found["splits"], want), r
            for root in (0, n - 2):
                whole = np.arange(n * 6 * 40, dtype=np.float32).reshape(n * 6, 40) + root
                assert np.array_equal(found[("scatter", root)], whole[6 * r:6 * r + 6]), (r, root)
            empty = found["scatter_empty_rows"]
            assert empty.shape == (2, 0) and empty.dtype == np.int8, (r, empty.shape, empty.dtype)
            assert np.array_equal(found["scatter_big"], np.arange(r * 70_000, (r + 1) * 70_000, dtype=np.int32)), r


@pytest.mark.parametrize("n", [9, 13])
@pytest.mark.parametrize("algo", ["binomial", "ring", None])
def test_gather_past_the_mesh_over_tcp_bit_for_bit(n, algo):
    # The binomial tree (the table's choice past 8 ranks over TCP) and the ring: each root's result
    # in rank order, None elsewhere; rows of 0 bytes, no rows, large blocks, N-d rows.
    cases = [(3, (2,), np.float32), (0, (4,), np.int16), (5, (0,), np.int8), (20_000, (3,), np.float64),
             (2, (2, 3), np.uint8)]

    def make(q: int, rows: int, tail: tuple, dtype) -> np.ndarray:
        return (np.arange(rows * math.prod(tail)) + 7 * q).astype(dtype).reshape((rows,) + tail)

    def rank(g: rd.Group) -> list:
        return [rd.gather(make(g.rank(), rows, tail, dt), root=root, group=g)
                for root in (0, n - 1, 4) for rows, tail, dt in cases]

    results = run_ranks(n, rank, shm=False, algo=() if algo is None else (("gather", algo),))
    for r, got in enumerate(results):
        i = 0
        for root in (0, n - 1, 4):
            for rows, tail, dt in cases:
                if r == root:
                    want = np.concatenate([make(q, rows, tail, dt) for q in range(n)])
                    assert got[i].dtype == want.dtype and np.array_equal(got[i], want), (r, root, rows)
                else:
                    assert got[i] is None, (r, root)
                i += 1


@pytest.mark.parametrize("n, shm, algo", [(9, True, None), (11, True, None), (9, False, None), (13, False, None),
                                          (16, False, None), (9, False, "ring")])
def test_uneven_all_gather_past_the_mesh_bit_for_bit(n, shm, algo):
    # Past 8 ranks on one host each stream goes through the segments, headed by its fields (its
    # rows); one rank's stream is over a slot, so the rounds follow the longest; empty ranks and
    # rows of 0 bytes too. Without shared memory, Bruck's steps (each carrying its blocks' rows),
    # or round the ring where forced.
    many = 70_000  # rows of 3 float32 on rank 2: over a slot on 9 and 11 ranks

    def rows_of(q: int) -> int:
        return many if q == 2 else (q * 5) % 4

    def rank(g: rd.Group) -> list:
        r = g.rank()
        x = (np.arange(rows_of(r) * 3) + 1_000_000 * r).astype(np.float32).reshape(rows_of(r), 3)
        return [rd.all_gather(x, uneven=True, group=g), rd.all_gather(np.zeros((r % 3, 0), np.int8), uneven=True, group=g),
                rd.all_gather(x[::2], uneven=True, group=g)]

    results = run_ranks(n, rank, shm=shm, algo=() if algo is None else (("all_gather_uneven", algo),))
    xs = [(np.arange(rows_of(q) * 3) + 1_000_000 * q).astype(np.float32).reshape(rows_of(q), 3) for q in range(n)]
    for r, (whole, empty, strided) in enumerate(results):
        assert np.array_equal(whole, np.concatenate(xs)), r
        assert empty.shape == (sum(q % 3 for q in range(n)), 0), (r, empty.shape)
        assert np.array_equal(strided, np.concatenate([x[::2] for x in xs])), r


PAST_THE_MESH_DISAGREEMENTS = {
    "gather_roots": lambda g: rd.gather(np.ones(3), root=0 if g.rank() != 6 else 2, group=g),
    "gather_shape": lambda g: rd.gather(np.ones(3 + (g.rank() == 8)), group=g),
    "splits_or_not": lambda g: rd.all_to_all(np.ones((9, 2)), splits=[1] * 9 if g.rank() != 4 else None, group=g),
    "dtype": lambda g: rd.all_to_all(np.ones((9, 2), np.float32 if g.rank() != 7 else np.float64), group=g),
    "shape": lambda g: rd.all_to_all(np.ones((9 * (1 + (g.rank() == 5)), 2)), group=g),
    "small_against_large": lambda g: rd.all_to_all(np.ones((9 << (4 + 10 * (g.rank() == 2)), 2)), group=g),
    "scatter_vs_all_to_all": lambda g: (rd.scatter(np.ones(9), group=g) if g.rank() != 3 else
                                        rd.all_to_all(np.ones(9), group=g)),
    "scatter_roots": lambda g: rd.scatter(np.ones(9), root=0 if g.rank() != 6 else 2, group=g),
    "scatter_big_vs_all_to_all": lambda g: (rd.scatter(np.ones(9 << 16) if g.rank() == 0 else None, group=g)
                                            if g.rank() != 8 else rd.all_to_all(np.ones(9 << 16), group=g)),
    # Bruck's steps, each carrying the fields of the ranks whose blocks it relays
    "uneven_or_not": lambda g: rd.all_gather(np.ones((2, 2)), uneven=g.rank() != 5, group=g),
    "uneven_dtype": lambda g: rd.all_gather(np.ones((g.rank() % 3, 2), np.float32 if g.rank() != 2 else np.float64),
                                            uneven=True, group=g),
    "uneven_trailing": lambda g: rd.all_gather(np.ones((g.rank(), 2 + (g.rank() == 7))), uneven=True, group=g),
    "object_vs_uneven": lambda g: (rd.all_gather_object(g.rank(), group=g) if g.rank() != 6 else
                                   rd.all_gather(np.ones(2), uneven=True, group=g)),
    "object_roots": lambda g: rd.broadcast_object("x", root=0 if g.rank() != 4 else 3, group=g),
    "uneven_vs_ring": lambda g: rd.all_gather(np.ones((g.rank(), 2)), uneven=True, group=g),
}


@pytest.mark.parametrize("algo", ["ring", "direct", "binomial"])
def test_a_scatter_mismatch_names_each_side_with_a_real_dtype_and_shape(algo):
    # The check leaves the root's dtype and shape out (only it knows them); its error message
    # does not: no "dtype=None" or "shape=()" for fields that were merely left out.
    n = 4 if algo == "direct" else 9
    outcomes, _ = run_disagreement(
        n, lambda g: rd.scatter(np.ones(2 * n) if g.rank() == 0 else None, root=0 if g.rank() != 3 else 1, group=g),
        shm=False, algo=(("scatter", algo),))
    assert all(isinstance(o, rd.MismatchError) for o in outcomes), outcomes
    assert not any("dtype=None" in str(o) or "shape=()" in str(o) for o in outcomes), outcomes


@pytest.mark.parametrize("case", list(PAST_THE_MESH_DISAGREEMENTS))
def test_ranks_that_disagree_on_an_all_to_all_past_the_mesh_over_tcp_all_raise(case):
    # uneven_vs_ring: one rank forced round the ring while the rest take Bruck's steps
    per_rank = {6: {"algo": (("all_gather_uneven", "ring"),)}} if case == "uneven_vs_ring" else None
    outcomes, errors = run_disagreement(9, PAST_THE_MESH_DISAGREEMENTS[case], shm=False, rank_overrides=per_rank)
    assert_all_raised_then_broken(outcomes, errors)


@pytest.mark.parametrize("case", ["all_to_all", "all_to_all_small", "scatter", "gather", "all_gather_object"])
def test_a_rank_gone_during_a_first_call_past_the_mesh_ends_it_on_every_rank_at_once(case):
    # 9 ranks over TCP: pairwise exchange, Bruck (both kinds) and the binomial trees open links on first use.
    # Rank 4 leaves mid-call; a rank dialing it finds nothing listening (its process is gone) and
    # says so at once, where it would have redialed until the connect timeout, and the ABORT
    # reaches the rest: nobody waits out the call's 20 s timeout.
    res = run_launcher(["-n", "9", str(SCRIPTS / "gone_mid_first_call.py"), case], timeout=120,
                       env={"RINGDIST_SHM": "0", "RINGDIST_TIMEOUT": "20"})
    ended = {int(r): (float(t), how) for r, t, how in
             re.findall(r"^\[\d+\] (\d+) ended after ([\d.]+)s: (\w+):", res.stdout, re.M)}
    assert sorted(ended) == [0, 1, 2, 3, 5, 6, 7, 8], res.stdout + res.stderr
    assert all(t < 5 for t, _ in ended.values()), ended
    # A leaf of the gather may have sent its block before rank 4 left: it returns; the rest raise.
    # Bruck's all_gather_object: rank 4 leaves after steps 1 and 2, which passed its block to ranks
    # 3 and 2; ranks 0 (step 4) and 5 (step 8) read from it and raise, and a rank that needs nothing
    # more from it may return with every block, rank 4's included.
    raised = [r for r, (_, how) in ended.items() if how != "returned"]
    if case == "all_gather_object":
        assert {0, 5} <= set(raised), ended
    else:
        assert len(raised) >= (6 if case == "gather" else 8), ended
    assert all(ended[r][1] in ("PeerLostError", "ConnectError") for r in raised), res.stdout


@pytest.mark.parametrize("n, shm", [(3, True), (9, True), (9, False)])
def test_a_scatter_root_whose_rows_do_not_divide_tells_the_others(n, shm):
    # Only the root sees its array: it raises ValueError, and the others, already waiting for
    # its blocks, are told and raise at once rather than after their 30 s timeout.
    def rank(g: rd.Group):
        import time
        start = time.monotonic()
        try:
            rd.scatter(np.ones(n + 1) if g.rank() == 1 else None, root=1, group=g, timeout=30)
            return "returned", 0.0
        except (ValueError, rd.RingError) as exc:
            return f"{type(exc).__name__}: {exc}", time.monotonic() - start

    got = run_ranks(n, rank, shm=shm)
    message = f"rank 1: scatter: x.shape[0] = {n + 1} is not divisible by the group size {n}"
    assert got[1][0] == f"ValueError: {message}", got[1]
    assert all(r == 1 or ("aborted by rank 1" in how and message in how) for r, (how, _) in enumerate(got)), got
    assert all(took < 10 for _, took in got), got


def test_argument_errors_are_clear():
    with pytest.raises(RankFailed) as info:
        run_ranks(2, lambda g: rd.all_to_all(np.zeros(3), group=g))
    assert all(isinstance(e, ValueError) and "all_to_all: x.shape[0] = 3 is not divisible by the group size 2"
               in str(e) for e in info.value.errors), info.value.errors
    with pytest.raises(RankFailed) as info:
        run_ranks(2, lambda g: rd.sum_scatter(np.array(1.0), group=g))
    assert all(isinstance(e, ValueError) and str(e).endswith(
        "sum_scatter: x.shape[0] = 1 is not divisible by the group size 2 (x is 0-d: it counts as shape (1,))")
        for e in info.value.errors), info.value.errors
    with pytest.raises(ValueError, match=r"splits must be 1 non-negative integers summing to x.shape\[0\] = 3"):
        rd.all_to_all(np.zeros(3), splits=[2])
    with pytest.raises(ValueError, match="reduce: op must be one of sum, max, min, prod, band, bor, bxor, avg, got 'mean'"):
        rd.reduce(np.zeros(3), op="mean")
    for call in (rd.gather, rd.scatter, rd.reduce):
        with pytest.raises(ValueError, match=r"root 1 is not a rank of a group of size 1"):
            call(np.zeros(3), root=1)
    with pytest.raises(TypeError, match="reduce: dtype <U1 is not numeric"):
        rd.reduce(np.array(["a"]))


DISAGREEMENTS = {  # for any N >= 2: every input is valid on its own rank, the ranks just disagree
    "root": lambda g: rd.gather(np.ones(4), root=g.rank() % 2, group=g),
    "scatter_root": lambda g: rd.scatter(np.ones(2 * g.size()), root=0 if g.rank() < g.size() - 1 else 1, group=g),
    "reduce_root": lambda g: rd.reduce(np.ones(4), root=int(g.rank() == g.size() - 1), group=g),
    "reduce_op": lambda g: rd.reduce(np.ones(4), op="max" if g.rank() == 1 else "sum", group=g),
    "splits_or_not": lambda g: rd.all_to_all(np.ones((g.size(), 2)), splits=[1] * g.size() if g.rank() else None,
                                             group=g),
    "dtype": lambda g: rd.all_to_all(np.ones((g.size(), 2), np.float32 if g.rank() else np.float64),
                                     splits=[1] * g.size(), group=g),
    "trailing": lambda g: rd.all_to_all(np.ones((g.size(), 2 + (g.rank() == g.size() - 1))), splits=[1] * g.size(),
                                        group=g),
    "shape_no_splits": lambda g: rd.all_to_all(np.ones((g.size() * (1 + (g.rank() == 1)), 2)), group=g),
    "uneven_or_not": lambda g: rd.all_gather(np.ones((2, 2)), uneven=g.rank() != 0, group=g),
    "uneven_trailing": lambda g: rd.all_gather(np.ones((g.rank(), 2 + g.rank() % 2)), uneven=True, group=g),
    "op": lambda g: (rd.gather if g.rank() else rd.all_gather)(np.ones(4), group=g),
    "gather_uneven_or_not": lambda g: rd.gather(np.ones((2, 2)), uneven=g.rank() != 1, group=g),
    "gather_uneven_dtype": lambda g: rd.gather(np.ones((g.rank(), 2), np.int8 if g.rank() == 1 else np.uint8),
                                               uneven=True, group=g),
    "gather_uneven_roots": lambda g: rd.gather(np.ones((g.rank(), 2)), root=int(g.rank() == 0), uneven=True, group=g),
    "scatter_uneven_or_not": lambda g: rd.scatter([np.ones(2)] * g.size() if g.rank() == 0 else None,
                                                  uneven=g.rank() != g.size() - 1, group=g),
    "scatter_uneven_roots": lambda g: rd.scatter([np.ones(q) for q in range(g.size())], root=int(g.rank() == 1),
                                                 uneven=True, group=g),
    "scatter_uneven_against_gather_object": lambda g: (
        rd.scatter([np.ones(2)] * g.size() if g.rank() == 0 else None, uneven=True, group=g) if g.rank() != 1
        else rd.gather_object(1, group=g)),
    "scatter_vs_all_to_all": lambda g: (rd.scatter(np.ones(g.size()), group=g) if g.rank() else
                                        rd.all_to_all(np.ones(g.size()), group=g)),
    "all_gather_shape": lambda g: rd.all_gather(np.ones(4 + (g.rank() == g.size() - 1)), group=g),
    "all_sum_dtype": lambda g: rd.all_sum(np.ones(5, np.float32 if g.rank() == 1 else np.float64), group=g),
    "broadcast_root": lambda g: rd.broadcast(np.ones(6), root=int(g.rank() == 1), group=g),
    "large_against_small": lambda g: rd.all_gather(np.ones(300_000 if g.rank() == 0 else 3), group=g),
    # 4.4 MiB: on one machine read from the peers' memory, against a small call's path
    "reduction_large_against_small": lambda g: rd.all_sum(np.ones(1_100_000 if g.rank() == 0 else 3, np.float32),
                                                         group=g),
    # both read from the peers' memory (over 4 MiB, 2.4 MiB broadcast), of different sizes
    "reduction_sizes_both_large": lambda g: rd.all_sum(np.ones(1_100_000 + (g.rank() == g.size() - 1), np.float32),
                                                      group=g),
    "broadcast_sizes_both_large": lambda g: rd.broadcast(np.ones(300_000 + (g.rank() == 1)), root=0, group=g),
}


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", list(DISAGREEMENTS))
def test_ranks_that_disagree_all_raise_then_the_group_is_broken(case, variant, n):
    outcomes, errors = run_disagreement(n, DISAGREEMENTS[case], **VARIANTS[variant])
    assert all(isinstance(o, rd.RingError) for o in outcomes), outcomes
    assert any(isinstance(o, rd.MismatchError) for o in outcomes), outcomes
    for o in outcomes:  # a rank that did not see it itself was told by a peer (the peer's MismatchError)
        assert isinstance(o, rd.MismatchError) or "MismatchError" in str(o), outcomes
    assert all(isinstance(e, rd.GroupBrokenError) for e in errors), errors


@pytest.mark.parametrize("n", [2, 3, 9])
def test_every_rooted_uneven_and_object_call_in_a_launched_job(n):
    from helpers import SCRIPTS, run_launcher

    res = run_launcher(["-n", str(n), str(SCRIPTS / "blocks_matrix.py")], timeout=120,
                       env={"RINGDIST_TIMEOUT": "30"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(int(k) for k in re.findall(r"blocks ok rank=(\d+)", res.stdout)) == list(range(n)), res.stdout


PADDED = [np.dtype([("a", "u1"), ("b", "<f8")], align=True),
          np.dtype({"names": ["a"], "formats": ["<i4"], "itemsize": 8}),
          np.dtype([("n", np.dtype([("p", "u1"), ("q", ">f8")], align=True)), ("z", "i2")], align=True)]


@pytest.mark.parametrize("shm", [True, False], ids=["shm", "tcp"])
@pytest.mark.parametrize("n", [2, 3, 9])
def test_scatter_gives_every_rank_the_root_s_dtype_exactly(n, shm):
    # Padding in a structured dtype came back as fields named f1, f2 (an even scatter's blocks
    # then disagreed with the root's in any later call; an uneven one failed with MismatchError),
    # and ml_dtypes' float8_e5m2 ('<f1') could not be read back at all.
    dtypes = PADDED + [np.dtype(ml_dtypes.float8_e5m2), np.dtype(ml_dtypes.bfloat16)]

    def rank(g: rd.Group) -> list:
        out = []
        for dt in dtypes:
            whole = np.arange(2 * n).astype(np.uint8).view(np.uint8).repeat(dt.itemsize).view(dt) \
                if dt.fields is not None else np.arange(2 * n, dtype=np.float32).astype(dt)
            even = rd.scatter(whole if g.rank() == 0 else None, root=0, group=g)
            parts = [whole[:q + 1] for q in range(n)]
            uneven = rd.scatter(parts if g.rank() == 0 else None, root=0, uneven=True, group=g)
            out.append((even, uneven, rd.all_gather(even, group=g)))
        return out

    got = run_ranks(n, rank, shm=shm)
    for i, dt in enumerate(dtypes):
        whole = np.arange(2 * n).astype(np.uint8).repeat(dt.itemsize).view(dt) if dt.fields is not None else \
            np.arange(2 * n, dtype=np.float32).astype(dt)
        for r in range(n):
            even, uneven, gathered = got[r][i]
            assert even.dtype == dt and uneven.dtype == dt and gathered.dtype == dt, (dt, r, even.dtype, uneven.dtype)
            def same(a, b):  # padding bytes are numpy's to leave undefined: compare the fields
                return a.shape == b.shape and bool((a == b).all()) if dt.fields is not None else a.tobytes() == b.tobytes()
            assert same(even, whole[2 * r:2 * r + 2]) and same(uneven, whole[:r + 1]) and same(gathered, whole), (dt, r)


@pytest.mark.parametrize("algo", ["direct", "doubling", "ring", "shm"])
def test_a_0_d_scan_and_a_64_dimensional_reduction_on_every_path(algo):
    # The direct path stacked every rank's array in one more dimension (65 for a 64-d array, past
    # numpy's limit) and gave a 0-d scan's fold a shape of (1,). (numpy 1.x's limit is 32.)
    deep = (1,) * (64 if int(np.__version__.split(".")[0]) >= 2 else 32)

    def rank(g: rd.Group) -> tuple:
        return (rd.scan(np.float64(g.rank() + 1), group=g), rd.all_sum(np.ones(deep, np.float32), group=g),
                rd.scan(np.ones(deep, np.int32), group=g))

    options = {"algo": (("scan", algo), ("all_reduce", algo))}
    if algo != "shm":
        options["shm"] = False
    if algo == "doubling":
        options["algo"] = (("all_reduce", algo),)
    got = run_ranks(4, rank, **options)
    for r, (prefix, total, deep_prefix) in enumerate(got):
        assert prefix.shape == () and prefix == sum(range(1, r + 2)), (r, prefix)
        assert total.shape == deep and total.item() == 4.0
        assert deep_prefix.shape == deep and deep_prefix.item() == r + 1


@pytest.mark.parametrize("shm", [True, False], ids=["shm", "tcp"])
@pytest.mark.parametrize("n", [3, 9])
def test_scatter_delivers_the_root_s_bytes_padding_too(n, shm):
    # Past 8 ranks over TCP (a binomial tree) a rank passing blocks on copied its own with numpy,
    # which copies a structured dtype field by field: its padding came back as whatever was in
    # that memory before, where every other path delivers the root's bytes.
    dt = np.dtype({"names": ["a", "b"], "formats": ["<i2", "<i2"], "offsets": [0, 6], "itemsize": 12})
    whole = np.frombuffer(((np.arange(2 * n * 12) * 7) % 251).astype(np.uint8).tobytes(), dtype=dt).copy()
    got = run_ranks(n, lambda g: rd.scatter(whole if g.rank() == 0 else None, root=0, group=g), shm=shm)
    for r in range(n):
        assert got[r].tobytes() == whole[2 * r:2 * r + 2].tobytes(), (r, got[r].view(np.uint8))
