"""Group.split over real sub-rings: semantics, nesting, meshes, and no leaks."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

import ringdist as rd
from ringdist.errors import MismatchError

from harness import run_ranks
from helpers import ROOT, SCRIPTS, run_launcher

FAST = {"RINGDIST_TIMEOUT": "20", "RINGDIST_CONNECT_TIMEOUT": "10"}


@pytest.mark.parametrize("n", [4, 6, 8])
def test_split_semantics_nesting_mesh_and_fd_leaks(n):
    res = run_launcher(["-n", str(n), str(SCRIPTS / "split_matrix.py")], timeout=240, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    oks = re.findall(r"^\[(\d+)\] split ok rank=\d+ size=(\d+) fds (\d+)->(\d+)", res.stdout, re.M)
    assert sorted(int(r) for r, *_ in oks) == list(range(n))
    assert all(int(size) == n and int(after) <= int(before) for _, size, before, after in oks)


@pytest.mark.parametrize("n", [4, 6])
def test_mesh2d_example_runs_as_written(n):
    res = run_launcher(["-n", str(n), str(ROOT / "examples" / "mesh2d.py")], timeout=60, env=FAST)
    assert res.returncode == 0, res.stdout + res.stderr
    cols = n // 2
    for r in range(n):
        row, col = divmod(r, cols)
        row_ranks = [row * cols + c for c in range(cols)]
        col_ranks = [col, cols + col]
        assert (f"[{r}] rank {r} at (row {row}, col {col}): row {row_ranks} column {col_ranks} "
                f"column sum {sum(col_ranks)}") in res.stdout


def test_ranks_that_disagree_on_split_raise_mismatch():
    res = run_launcher(["-n", "3", str(SCRIPTS / "split_disagree.py")], timeout=60, env=FAST)
    assert res.returncode == 3, res.stdout + res.stderr
    lines = re.findall(r"^\[(\d)\] MismatchError: (.*)$", res.stdout, re.M)
    assert sorted(int(r) for r, _ in lines) == [0, 1, 2]
    assert any("split" in msg and "all_gather" in msg for _, msg in lines)


def test_split_arguments_are_checked_before_anything_is_sent():
    import ringdist as rd
    from harness import run_ranks

    def rank(g):
        found = []
        for color, key in ((1 << 63, 0), (0, -(1 << 63) - 1), (1.0, 0), (0, True)):
            spare = g.split(0)
            try:
                spare.split(color, key)
            except (TypeError, ValueError) as exc:
                found.append(f"{type(exc).__name__}: {exc}")
            with pytest.raises(rd.GroupBrokenError):  # refused on every rank: the group is broken
                rd.barrier(group=spare)
            spare.close()
        rd.barrier(group=g)  # the parent is not
        return found

    for r, found in enumerate(run_ranks(2, rank)):
        assert len(found) == 4, found
        assert found[0].startswith(f"ValueError: rank {r}: Group.split: color=9223372036854775808 is out of range")
        assert found[1].startswith(f"ValueError: rank {r}: Group.split: key=-9223372036854775809 is out of range")
        assert found[2] == f"TypeError: rank {r}: Group.split: color must be an integer, got float", found
        assert found[3] == f"TypeError: rank {r}: Group.split: key must be an integer, got bool", found


def test_errors_in_a_sub_group_name_a_peer_s_world_rank_too():
    # Ranks reversed by key: group rank 0 is world rank 2. A rank that stays away from a
    # sub-group's call is named by both ranks in its peers' timeout (group ranks alone did not
    # say which process it was).
    def rank(g):
        sub = g.split(0, key=g.size() - g.rank())
        if g.rank() == 2:
            time.sleep(2)  # (its connections close when it returns)
            return None
        with pytest.raises(rd.RingTimeoutError) as info:
            rd.all_sum(np.ones(4), group=sub, timeout=0.5)
        return str(info.value)

    messages = run_ranks(3, rank, shm=False)
    assert "rank 0 (world rank 2, 127.0.0.1:" in messages[1], messages

    # Told by an ABORT, a rank names where it started by both ranks too.
    def refused(g):
        sub = g.split(0, key=g.size() - g.rank())
        with pytest.raises(TypeError if g.rank() == 2 else rd.RingError) as info:
            rd.all_sum(np.ones(4) if g.rank() != 2 else np.ones(4, dtype="U1"), group=sub)
        return str(info.value)

    told = run_ranks(3, refused, shm=False)
    assert all(re.match(r"rank \d( \(world rank \d\))?: all_sum aborted by rank 0 \(world rank 2\): ", told[r])
               for r in (0, 1)), told
    assert told[0].startswith("rank 2 (world rank 0): "), told  # (itself by both ranks, where they differ)

    # A mismatch names the other side by both ranks.
    def unlike(g):
        sub = g.split(0, key=g.size() - g.rank())
        with pytest.raises(rd.MismatchError) as info:
            rd.all_sum(np.ones(4 + (g.rank() == 2)), group=sub)
        return str(info.value)

    for shm in (False, True):  # (over shared memory the signals find it)
        seen = run_ranks(3, unlike, shm=shm)
        assert any("but rank 0 (world rank 2) called all_sum(shape=(5,)" in m for m in seen), (shm, seen)

    # A receive in a sub-group waiting for its sender's connection starts with its own rank in
    # that group, as every other error of the group does (it said its world rank).
    def waits(g):
        sub = g.split(0, key=g.size() - g.rank())
        if g.rank() != 0:
            time.sleep(1)
            return None
        with pytest.raises(rd.RingTimeoutError) as info:
            rd.recv((4,), np.float64, 0, group=sub, timeout=0.3)
        return str(info.value)

    waited = run_ranks(3, waits, shm=False)[0]
    assert waited.startswith("rank 2: recv in group 'world/0:0': waiting for rank 0 to send"), waited
    assert "world rank" not in run_ranks(2, lambda g: str(_stall_message(g)), shm=False)[0]


def _stall_message(g):
    """In the world group: no world rank is named beside the rank (they are the same)."""
    if g.rank() == 1:
        time.sleep(2)
        return None
    with pytest.raises(rd.RingTimeoutError) as info:
        rd.all_sum(np.ones(4), group=g, timeout=0.5)
    return info.value


def test_a_mismatch_in_a_sub_group_names_this_rank_s_world_rank_too():
    # The line a rank prints is prefixed with its world rank: its own group rank alone read as another rank.
    def rank(g):
        sub = g.split(g.rank() % 2)
        with pytest.raises(MismatchError) as exc:
            rd.barrier(group=sub) if sub.rank() == 0 else rd.all_sum(np.ones(1), group=sub)
        return str(exc.value)

    got = run_ranks(4, rank)
    assert got[2].startswith("rank 1 (world rank 2) called all_sum(shape=(1,), dtype=float64) [call #0] but rank 0 "
                             "called barrier"), got[2]
    assert got[0].startswith("rank 0 called barrier") and "but rank 1 (world rank 2) called all_sum" in got[0], got[0]
