"""Every collective on every path, at N = 1..17, in-process (ranks as threads, real sockets).

Each case gives every rank a different input, runs the collective on all ranks, and checks
each rank's result against numpy's answer and against every other rank's (bitwise). Sizes
are chosen to cross the thresholds between paths: empty, one element, uneven blocks,
small (direct exchange, recursive doubling), medium (two-shot), large (the ring).
The variants force the ring (`direct_max=0`), both ring directions and several lanes.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import ringdist as rd

from harness import run_ranks
from reductions import UFUNCS, folded, run_reduction
from helpers import loopback_aliases

VARIANTS = {
    "default": {},  # on one machine: shared memory (groups of 2 to 8)
    "tcp": {"shm": False},  # RINGDIST_SHM=0: the table's TCP rows
    "ring": {"direct_max": 0, "shm": False},
    "both-ways": {"directions": 2, "shm": False},
    "lanes": {"lanes": 2, "direct_max": 0, "shm": False},
    "ring-both-ways-lanes": {"lanes": 2, "directions": 2, "direct_max": 0, "shm": False},
}
# Element counts: empty, one, uneven blocks, small, past recursive doubling's 32 KiB blocks,
# past the whole-array reductions' 256 KiB, past the two-rank exchange's 512 KiB.
COUNTS = [0, 1, 7, 1000, 9000, 70_000, 150_000]
REDUCTIONS = [f"all_{op}" for op in UFUNCS]


def make_input(rank: int, count: int, dtype: str) -> np.ndarray:
    """Rank `rank`'s input: small integers (every sum and product exact), different per rank."""
    values = (np.arange(count) * 7 + rank * 3) % 5 + (1 if dtype != "bool" else 0)
    if dtype == "bool":
        return (values % 2 == rank % 2)
    return values.astype(dtype)


def cases(n: int) -> list[tuple[str, str, int]]:
    """(op, dtype, count) of every case at group size n, bounded so that N=17 stays quick."""
    counts = [c for c in COUNTS if c * n <= 1_200_000]
    out = []
    for count in counts:
        out.append(("all_gather", "float32", count))
        out.append(("all_sum", "float32", count))
    for op in REDUCTIONS:
        out.append((op, "int64", 1000))
    out += [("all_sum", "bool", 33), ("all_sum", "complex64", 9), ("all_max", "float16", 501),
            ("all_gather", "uint8", 13), ("all_gather", "int16", 4097),
            ("sum_scatter", "float32", 3 * n), ("sum_scatter", "int32", 5000 * n), ("all_bxor", "bool", 33),
            ("max_scatter", "float32", 3 * n), ("prod_scatter", "int64", 5000 * n), ("bor_scatter", "uint8", 9000 * n),
            ("bxor_scatter", "bool", 7 * n), ("min_scatter", "float16", 70_000 // n * n),
            ("broadcast", "float64", 1), ("broadcast", "float32", 70_000), ("barrier", "", 0),
            ("all_gather-strided", "float32", 2001), ("all_sum-strided", "float64", 2001),
            ("scan", "float32", 1000), ("scan", "float64", 70_000), ("exscan", "int64", 1000),
            ("exscan", "bool", 33), ("scan-strided", "float32", 2001), ("gather_uneven", "float64", 3),
            ("gather_uneven", "int8", 9000), ("scatter_uneven", "float32", 1), ("scatter_uneven", "uint16", 20_000)]
    return out


def run_case(g: rd.Group, op: str, dtype: str, count: int) -> np.ndarray | None:
    r = g.rank()
    if op == "barrier":
        return rd.barrier(group=g)
    if op.endswith("-strided"):
        x = make_input(r, 2 * count, dtype)[::2]
        assert not x.flags.c_contiguous
        op = op.removesuffix("-strided")
    else:
        x = make_input(r, count, dtype)
    if op == "broadcast":
        return rd.broadcast(x, root=g.size() - 1, group=g)
    n = g.size()
    if op == "all_to_all":  # `count` elements for each rank
        return rd.all_to_all(make_input(r, count * n, dtype), group=g)
    if op == "scatter":
        return rd.scatter(make_input(r, count * n, dtype) if r == n - 1 else None, root=n - 1, group=g)
    if op == "gather":
        return rd.gather(x, root=n - 1, group=g)
    if op == "reduce":
        return rd.reduce(x, root=n - 1, op="max", group=g)
    if op == "all_gather_uneven":
        return rd.all_gather(make_input(r, count + r, dtype), uneven=True, group=g)
    if op == "gather_uneven":  # rank q: count * q rows of 3 (none on rank 0), to the last rank
        return rd.gather(make_input(r, count * r * 3, dtype).reshape(-1, 3), root=n - 1, uneven=True, group=g)
    if op == "scatter_uneven":  # from rank 1 (0 alone): count * (q + 1) rows for rank q, its row q of 0s
        root = min(1, n - 1)
        parts = [make_input(q, count * (q + 1), dtype) for q in range(n)]
        if n > 2:
            parts[2] = parts[2][:0]
        return rd.scatter(parts if r == root else None, root=root, uneven=True, group=g)
    if op == "scan":
        return rd.scan(x, group=g)
    if op == "exscan":
        return rd.scan(x, op="max", exclusive=True, group=g)
    return run_reduction(op, x, g)


def expected(op: str, dtype: str, count: int, n: int) -> np.ndarray | None:
    if op == "barrier":
        return None
    strided = op.endswith("-strided")
    op = op.removesuffix("-strided")
    inputs = [make_input(r, 2 * count, dtype)[::2] if strided else make_input(r, count, dtype) for r in range(n)]
    if op == "all_gather":
        return np.concatenate(inputs)
    if op == "all_to_all":
        return [np.concatenate([make_input(q, count * n, dtype)[r * count:(r + 1) * count] for q in range(n)])
                for r in range(n)]
    if op == "scatter":
        return [make_input(n - 1, count * n, dtype)[r * count:(r + 1) * count] for r in range(n)]
    if op == "gather":
        return [np.concatenate(inputs) if r == n - 1 else None for r in range(n)]
    if op == "reduce":
        return [np.maximum.reduce(inputs) if r == n - 1 else None for r in range(n)]
    if op == "all_gather_uneven":
        return np.concatenate([make_input(q, count + q, dtype) for q in range(n)])
    if op == "gather_uneven":
        whole = np.concatenate([make_input(q, count * q * 3, dtype).reshape(-1, 3) for q in range(n)])
        return [whole if r == n - 1 else None for r in range(n)]
    if op == "scatter_uneven":
        return [make_input(q, 0 if q == 2 else count * (q + 1), dtype) for q in range(n)]
    if op == "broadcast":
        return inputs[-1]
    if op.endswith("_scatter"):
        return [folded(inputs, op)[r * count // n:(r + 1) * count // n] for r in range(n)]
    if op in ("scan", "exscan"):  # rank r: ranks 0..r (exscan: 0..r-1, None on rank 0) folded left to right
        ufunc, skip = (np.add, 0) if op == "scan" else (np.maximum, 1)
        prefixes = []
        for r in range(n):
            if r - skip < 0:
                prefixes.append(None)
                continue
            acc = inputs[0].copy()
            for x in inputs[1:r + 1 - skip]:
                acc = ufunc(acc, x)
            prefixes.append(acc)
        return prefixes
    return folded(inputs, op)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("n", range(1, 18))
def test_every_collective_on_every_path(n, variant):
    plan = cases(n)

    def rank(g: rd.Group) -> list:
        return [run_case(g, *case) for case in plan]

    results = run_ranks(n, rank, **VARIANTS[variant])
    for i, (op, dtype, count) in enumerate(plan):
        want = expected(op, dtype, count, n)
        for r in range(n):
            got = results[r][i]
            where = f"{op} {dtype} x{count}, N={n}, {variant}, rank {r}"
            if want is None:
                assert got is None, where
                continue
            w = want[r] if isinstance(want, list) else want
            if w is None:  # exscan's rank 0
                assert got is None, where
                continue
            assert got.dtype == w.dtype and got.shape == w.shape, f"{where}: {got.dtype}{got.shape} != {w.dtype}{w.shape}"
            assert np.array_equal(got, w), where
            assert isinstance(want, list) or got.tobytes() == results[0][i].tobytes(), \
                f"{where}: differs from rank 0"


@pytest.mark.parametrize("n", [2, 3, 5, 8, 9])
def test_split_and_point_to_point(n):
    def rank(g: rd.Group) -> tuple:
        r = g.rank()
        sub = g.split(color=r % 2, key=n - r)  # reversed order
        gathered = rd.all_gather(np.array([r]), group=sub)
        dst, src = (r + 1) % n, (r - 1) % n
        if r % 2 == 0:
            rd.send(np.full(1000, r, dtype=np.int32), dst, group=g)
            got = rd.recv((1000,), np.int32, src, group=g)
        else:
            got = rd.recv((1000,), np.int32, src, group=g)
            rd.send(np.full(1000, r, dtype=np.int32), dst, group=g)
        return gathered, got

    results = run_ranks(n, rank)
    for r, (gathered, got) in enumerate(results):
        same = sorted((q for q in range(n) if q % 2 == r % 2), reverse=True)
        assert gathered.tolist() == same, (r, gathered)
        assert np.array_equal(got, np.full(1000, (r - 1) % n, dtype=np.int32))


ALGORITHM_NAMES = sorted(__import__("ringdist.algorithms", fromlist=["ALGORITHMS"]).ALGORITHMS)
FORCED_CASES = [("all_gather", "float32", 7), ("all_gather", "int16", 3001), ("barrier", "", 0),
                ("all_sum", "float32", 1), ("all_max", "int64", 1000), ("all_sum", "float64", 40_000),
                ("sum_scatter", "float32", 17 * 16 * 3), ("max_scatter", "int64", 17 * 16 * 30),
                ("all_band", "int16", 3000), ("broadcast", "float64", 1000), ("broadcast", "uint8", 0),
                ("all_to_all", "int32", 5), ("scatter", "float32", 3), ("gather", "float32", 7),
                ("reduce", "int64", 1000), ("all_gather_uneven", "int16", 2), ("scan", "float32", 1000),
                ("gather_uneven", "float32", 5), ("scatter_uneven", "int64", 700),
                ("exscan", "int64", 3000)]


@pytest.mark.parametrize("name", ALGORITHM_NAMES)
@pytest.mark.parametrize("n", range(1, 18))
def test_every_algorithm_forced_on_every_op(n, name):
    """RINGDIST_ALGO=*:name at every N: each op either runs on that algorithm and gives numpy's
    answer on every rank, or every rank refuses it with the same ConfigError saying why."""
    plan = [(op, dtype, count) for op, dtype, count in FORCED_CASES if not op.endswith("_scatter") or count % n == 0]

    def rank(g: rd.Group) -> list:
        out = []
        for case in plan:
            try:
                out.append(run_case(g, *case))
            except rd.ConfigError as exc:
                out.append(exc)
        return out

    options = {}
    if name == "hier" and n >= 4 and n % 2 == 0:  # hosts of 2 ranks each (their own loopback addresses)
        loopback_aliases()
        options = dict(ips=[f"127.0.0.{1 + r // 2}" for r in range(n)], rank_overrides={0: {"shm": False}})
    results = run_ranks(n, rank, algo=(("*", name),), **options)
    ran = 0
    for i, (op, dtype, count) in enumerate(plan):
        got = [results[r][i] for r in range(n)]
        where = f"{op} {dtype} x{count}, N={n}, forced {name}"
        if isinstance(got[0], rd.ConfigError):
            assert all(str(e) == str(got[0]) for e in got), f"{where}: ranks refused differently: {got}"
            called = "scan" if op == "exscan" else op
            assert f"forces {name} for {called}, which cannot run here" in str(got[0]), where
            assert n > 1 and name != "ring", f"{where}: {got[0]}"
            continue
        ran += 1
        want = expected(op, dtype, count, n)
        for r in range(n):
            w = want[r] if isinstance(want, list) else want
            assert (got[r] is None) if w is None else (got[r].dtype == w.dtype and np.array_equal(got[r], w)), \
                f"{where}, rank {r}"
    if (n == 2 and name != "hier") or name == "ring" or options:
        assert ran, f"{name} ran nothing at N={n}"


# (algorithm, N) for every algorithm with an all-reduce: a forced one runs the inner all-reduce of
# all_reduce(x, "avg"), rooted reduce and all_maxloc.
STALL_CASES = [("ring", 3), ("direct", 3), ("doubling", 3), ("doubling", 4), ("two-shot", 3),
               ("rabenseifner", 5), ("pairwise", 2), ("pairwise-ring", 2), ("shm", 3), ("shm-cma", 2)]
CALLS_OVER_AN_ALL_REDUCE = {
    "all_avg": lambda x, g: rd.all_reduce(x, "avg", group=g, timeout=0.3),
    "reduce": lambda x, g: rd.reduce(x, 0, group=g, timeout=0.3),
    "all_maxloc": lambda x, g: rd.all_maxloc(x, group=g, timeout=0.3),
}


@pytest.mark.parametrize("call", sorted(CALLS_OVER_AN_ALL_REDUCE))
@pytest.mark.parametrize("name, n", STALL_CASES)
def test_a_stall_under_a_call_built_on_an_all_reduce_names_that_call(name, n, call):
    """The last rank never calls: every rank that times out, or hears of another's timeout, names
    the call it made (all_reduce(op='avg'), reduce, all_maxloc), not the all-reduce under it
    (all_sum, all_max).
    (The shared-memory algorithms, and direct's rooted reduce, which gathers under the call's
    header, named it already: those cases guard it.)"""
    def rank(g: rd.Group) -> str | None:
        if g.rank() == n - 1:
            return None
        try:
            CALLS_OVER_AN_ALL_REDUCE[call](np.arange(1000, dtype=np.float64), g)
        except rd.RingTimeoutError as exc:
            return str(exc)
        return None

    shm = name.startswith("shm")
    got = run_ranks(n, rank, shm=shm, algo=(("*", name),))
    raised = [(r, text) for r, text in enumerate(got) if text is not None]
    assert raised, f"forced {name}, N={n}: no rank timed out in {call}"
    named = "all_reduce(op='avg')" if call == "all_avg" else call
    for r, text in raised:  # its own timeout, or another rank's it was told of
        assert text.startswith(f"rank {r}: {named} ") and f": {named} made no progress" in text, text
        assert not re.search(r"\ball_(sum|max)\b", text), text
