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
    theirs = {"op": "reduce='max'", "exclusive": "exclusive=True", "shape": "shape=(5,)"}[differs]
    assert theirs in got[0][0] and theirs in got[n - 1][0] and "scan(shape=" in got[0][0], got


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
