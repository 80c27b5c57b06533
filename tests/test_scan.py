"""scan: the prefix reduction, inclusive and exclusive, beyond the algorithm matrix
(`test_algorithms`): ranks that disagree on the call, and scan among other work."""

from __future__ import annotations

import numpy as np
import pytest

import ringdist as rd

from harness import run_ranks
from helpers import SCRIPTS, run_launcher

PATHS = {"table-shm": {}, "table-tcp": {"shm": False}, "shm": {"algo": (("scan", "shm"),)},
         "direct": {"algo": (("scan", "direct"),), "shm": False}, "ring": {"algo": (("scan", "ring"),), "shm": False}}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("differs", ["op", "exclusive", "shape"])
def test_ranks_that_disagree_on_the_call_all_raise_mismatch(path, differs):
    # The last rank differs. On the chain (`ring`) only rank 0 and the last rank read its call
    # (its closing header, its left neighbour's header); a rank between them may have passed
    # its right prefix on and returned it before the ABORT came, as a rooted call's leaf may:
    # its next call on the group raises.
    n = 4

    def rank(g: rd.Group) -> tuple[str, str]:
        last = g.rank() == n - 1
        x = np.ones(5 if last and differs == "shape" else 4, np.float32)
        try:
            rd.scan(x, op="max" if last and differs == "op" else "sum", exclusive=last and differs == "exclusive",
                    group=g, timeout=20)
            outcome = "returned"
        except rd.RingError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        try:
            rd.barrier(group=g, timeout=20)
            after = "returned"
        except rd.RingError as exc:
            after = f"{type(exc).__name__}: {exc}"
        return outcome, after

    got = run_ranks(n, rank, **PATHS[path])
    for r, (outcome, after) in enumerate(got):
        if outcome == "returned":
            assert path == "ring" and 0 < r < n - 1, got
            assert after.startswith("MismatchError: ") and "aborted by rank" in after and "scan(shape=" in after, got
        else:
            assert outcome.startswith("MismatchError: ") and after.startswith("GroupBrokenError: "), got
    theirs = {"op": "op='max'", "exclusive": "exclusive=True", "shape": "shape=(5,)"}[differs]
    assert theirs in got[0][0] and theirs in got[n - 1][0] and "scan(shape=" in got[0][0], got


def _folded(xs: list, ufunc, k: int) -> np.ndarray:
    """numpy's fold of xs[:k] in rank order, in place: acc = x0; acc = acc op x1; ..."""
    acc = np.array(xs[0], copy=True)
    for x in xs[1:k]:
        ufunc(acc, x, out=acc)
    return acc


@pytest.mark.parametrize("path", ["ring", "shm", "direct"])
def test_the_bits_are_numpys_fold_for_nans_of_both_signs_whatever_tcp_delivers(path):
    # numpy's float32 add of +NaN and -NaN keeps one operand's sign in its vector loop and the
    # other's in its scalar tail: the chain folded what had landed, cut wherever TCP delivered,
    # and 2-3 elements of ranks 5-7 came out -NaN in 2 runs of 3 (8 ranks). 700,001 elements: the
    # tail at the end, the chain in several folds.
    n = 8
    rng = np.random.default_rng(3)
    nans = np.array([0x7FC00000, 0xFFC00000], np.uint32).view(np.float32)  # +NaN, -NaN
    xs = []
    for q in range(n):
        x = rng.standard_normal(700_001).astype(np.float32)
        x[rng.integers(0, x.size, 70_000)] = nans[q % 2]
        x[-20:] = nans[q % 2]
        xs.append(x)
    for _ in range(2):
        with np.errstate(invalid="ignore"):
            got = run_ranks(n, lambda g: rd.scan(xs[g.rank()], group=g), **PATHS[path])
            for r in range(n):
                assert got[r].tobytes() == _folded(xs, np.add, r + 1).tobytes(), (path, r)


def test_a_strided_input_gets_the_same_bits_on_every_path():
    # numpy's strided loop and its contiguous one keep different NaN signs: direct folded the
    # caller's strided view, the others a contiguous copy (9 of 3001 elements differed).
    nans = np.array([0x7FC00000, 0xFFC00000], np.uint32).view(np.float32)
    bases = [np.full(6002, nans[q % 2], np.float32) for q in range(2)]
    want = _folded([np.ascontiguousarray(b[::2]) for b in bases], np.add, 2).tobytes()
    with np.errstate(invalid="ignore"):
        for path in ("shm", "direct", "ring"):
            got = run_ranks(2, lambda g: rd.scan(bases[g.rank()][::2], group=g), **PATHS[path])
            assert got[1].tobytes() == want, path


def test_every_algorithm_gives_the_same_bits_for_complex_products():
    # numpy may round a complex product into a separate array differently from one in place
    # (AVX-512): 217 of 800 rank results differed between the chain and the others, by a last bit.
    rng = np.random.default_rng(4)
    for trial in range(12):
        xs = [(rng.standard_normal(1) * 1e3 + 1j * rng.standard_normal(1) * 1e3) for _ in range(4)]
        for exclusive in (False, True):
            found = {path: run_ranks(4, lambda g: rd.scan(xs[g.rank()], op="prod", exclusive=exclusive, group=g),
                                     **PATHS[path]) for path in ("shm", "direct", "ring")}
            for r in range(1 if exclusive else 0, 4):
                want = _folded(xs, np.multiply, r if exclusive else r + 1).tobytes()
                assert {path: got[r].tobytes() == want for path, got in found.items()} == \
                    {"shm": True, "direct": True, "ring": True}, (trial, exclusive, r)


def test_scan_in_a_split_with_async_work_and_a_group_of_one():
    def rank(g: rd.Group) -> tuple:
        r = g.rank()
        sub = g.split(color=r % 2)  # ranks 0, 2, 4 and 1, 3
        pending = rd.scan(np.full(3, r + 1, np.int64), op="prod", group=sub, async_op=True)
        world = rd.scan(np.array([r], np.int32), exclusive=True, group=g)
        alone = g.split(color=r)  # a group of one
        own = rd.scan(np.array([r]), group=alone), rd.scan(np.array([r]), exclusive=True, group=alone)
        return pending.wait(), world, own

    got = run_ranks(5, rank)
    for r, (prefix, world, (own, nothing)) in enumerate(got):
        mates = [q for q in range(5) if q % 2 == r % 2 and q <= r]
        assert prefix.tolist() == [int(np.prod([q + 1 for q in mates]))] * 3, (r, prefix)
        assert (world is None) if r == 0 else world.tolist() == [sum(range(r))], (r, world)
        assert own.tolist() == [r] and nothing is None, (r, own, nothing)


def test_scan_through_the_launcher_on_every_path():
    # Real processes: the table's choice (shared memory), then each algorithm forced.
    for algo in ("", "scan:direct", "scan:ring"):
        res = run_launcher(["-n", "3", str(SCRIPTS / "scan_check.py")], timeout=90,
                           env={"RINGDIST_TIMEOUT": "20", "RINGDIST_ALGO": algo})
        assert res.returncode == 0, (algo, res.stdout + res.stderr)
        assert sorted(res.stdout.split()) == ["[0]", "[1]", "[2]", "ok", "ok", "ok"], (algo, res.stdout)


@pytest.mark.parametrize("path", ["shm", "direct", "ring"])
def test_bitwise_scans_fold_integers_and_bools(path):
    rng = np.random.default_rng(5)
    xs = {"int32": [rng.integers(-2**31, 2**31, 5001).astype(np.int32) for _ in range(5)],
          "bool": [rng.random(33) < 0.5 for _ in range(5)]}
    ufuncs = {"band": np.bitwise_and, "bor": np.bitwise_or, "bxor": np.bitwise_xor}

    def rank(g: rd.Group) -> dict:
        return {(op, dtype, exclusive): rd.scan(x[g.rank()], op=op, exclusive=exclusive, group=g)
                for op in ufuncs for dtype, x in xs.items() for exclusive in (False, True)}

    got = run_ranks(5, rank, **PATHS[path])
    for (op, dtype, exclusive), _ in got[0].items():
        for r in range(1 if exclusive else 0, 5):
            want = _folded(xs[dtype], ufuncs[op], r if exclusive else r + 1)
            assert got[r][(op, dtype, exclusive)].tobytes() == want.tobytes(), (path, op, dtype, exclusive, r)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_an_exclusive_ring_scan_in_windows_gives_the_bits_of_one_run(n, monkeypatch):
    # Over SCRATCH_WINDOW (here 64 KiB, to keep the arrays small) an exclusive scan's chain runs
    # once per span of the array, its fold passed on from one reused window (it held a whole
    # scratch copy of the array). Spans start on whole fold blocks and the last takes a short
    # rest with it: numpy's sequential fold, NaN signs and complex products' last bits included.
    from ringdist.algorithms import ring
    monkeypatch.setattr(ring, "SCRATCH_WINDOW", 64 << 10)
    nans = np.array([0x7FC00000, 0xFFC00000], np.uint32).view(np.float32)
    cases = []
    for q in range(n):
        rng = np.random.default_rng(q)
        x = rng.standard_normal(40_003).astype(np.float32)
        x[rng.integers(0, x.size, 4000)] = nans[q % 2]
        x[-3:] = nans[q % 2]
        c = (rng.standard_normal(16_389) + 1j * rng.standard_normal(16_389)).astype(np.complex128)
        cases.append([(x, "sum", np.add), (c, "prod", np.multiply), (x[:0], "sum", np.add)])

    def rank(g: rd.Group) -> list:
        return [rd.scan(x, op=op, exclusive=True, group=g) for x, op, _ in cases[g.rank()]]

    with np.errstate(invalid="ignore"):
        got = run_ranks(n, rank, **PATHS["ring"])
        for k, (_, _, ufunc) in enumerate(cases[0]):
            assert got[0][k] is None
            for r in range(1, n):
                want = _folded([case[k][0] for case in cases], ufunc, r)
                assert got[r][k].tobytes() == want.tobytes(), (k, r)
