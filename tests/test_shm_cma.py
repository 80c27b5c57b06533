"""Cross-memory reads on one machine (`ringdist/crossmem.py`, `algorithms/shm_cma.py`): large
blocks copied straight out of a peer's memory, with the same bits as through the segments, a
group-wide choice, and failures that reach every rank."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import ringdist as rd
from ringdist import crossmem, shmsignal, tuning
from ringdist.algorithms import shm_cma
from ringdist.errors import ConfigError, RingError
from ringdist.settings import Settings

from harness import RankFailed, run_ranks
from helpers import SCRIPTS, kill_one_mid_loop, run_launcher

pytestmark = pytest.mark.skipif(not (crossmem.supported() and shmsignal.supported()),
                                reason="cross-memory reads need Linux's process_vm_readv and signals through memory")
BLOCK = tuning.CMA_BLOCK_MIN


def _calls(g: rd.Group) -> dict[str, object]:
    """all_gather (2 ranks) and all_to_all (any) with blocks over the threshold, odd shapes and a
    strided input included; and the algorithm each ran."""
    n, r = g.size(), g.rank()
    rows = BLOCK // (3 * 8) + 5  # rows of 3 float64: a block just over the threshold
    x = np.arange(rows * 3, dtype=np.float64).reshape(rows, 3) * (r + 1) + r
    wide = np.arange(2 * n * rows * 3, dtype=np.float32).reshape(2 * n * rows, 3) - 11 * r
    found: dict[str, object] = {
        "all_to_all": rd.all_to_all(wide, group=g),
        "all_to_all strided": rd.all_to_all(wide[::2], group=g),
        "names": (tuning.choose(g, "all_to_all", wide.nbytes).name,),
    }
    if n == 2:
        found["all_gather"] = rd.all_gather(x, group=g)
        found["all_gather strided"] = rd.all_gather(np.asfortranarray(x)[:, ::2], group=g)
        found["names"] += (tuning.choose(g, "all_gather", x.nbytes).name,)
    return found


@pytest.mark.parametrize("n", [2, 3, 4])
def test_the_bits_equal_those_through_the_segments(n):
    on = run_ranks(n, _calls)
    off = run_ranks(n, _calls, shm_cma=False)
    for r, (a, b) in enumerate(zip(on, off)):
        assert set(a["names"]) == {"shm-cma"}, (r, a["names"])
        assert set(b["names"]) == {"shm"}, (r, b["names"])
        for key in a:
            if key != "names":
                assert np.array_equal(a[key], b[key]), (n, r, key)
    # and the values themselves: block r of every rank's input, in source order
    rows = BLOCK // (3 * 8) + 5
    for r, got in enumerate(on):
        want = np.concatenate([(np.arange(2 * n * rows * 3, dtype=np.float32).reshape(2 * n * rows, 3) - 11 * q)
                               [r * 2 * rows:(r + 1) * 2 * rows] for q in range(n)])
        assert np.array_equal(got["all_to_all"], want)
        if n == 2:
            x = [np.arange(rows * 3, dtype=np.float64).reshape(rows, 3) * (q + 1) + q for q in range(n)]
            assert np.array_equal(got["all_gather"], np.concatenate(x))
            assert np.array_equal(got["all_gather strided"], np.concatenate([v[:, ::2] for v in x]))


def _reductions(g: rd.Group) -> dict[object, object]:
    """Reductions of several sizes (none, fewer elements than ranks, odd), dtypes and ops, an
    N-d and a strided input, a 0-d one and a rooted reduce; and the algorithm each kind ran."""
    n, r = g.size(), g.rank()
    rng = np.random.default_rng(11 + r)
    found: dict[object, object] = {}
    for size in (0, 1, n - 1, 1001, 3 * 4096 + 7):
        for dtype in (np.float32, np.float64, np.int64):
            x = (rng.standard_normal(size) * 50).astype(dtype)
            found[("input", size, dtype)] = x
            for op in ("all_sum", "all_max", "all_prod"):
                found[(op, size, dtype)] = getattr(rd, op)(x, group=g)
    m = rng.standard_normal((40, 30)).astype(np.float32)
    found["2-d input"] = m
    found["2-d"] = rd.all_sum(m, group=g)
    found["strided"] = rd.all_sum(m[:, ::3], group=g)
    found["0-d"] = rd.all_sum(np.float64(r + 0.5), group=g)
    found["reduce to 1"] = rd.reduce(m, root=1, group=g)
    for k in (0, 1, 4099):  # rows of each rank's block of a sum_scatter
        x = (rng.standard_normal((n * k, 3)) * 50).astype(np.float64)
        found[("scatter input", k)] = x
        found[("sum_scatter", k)] = rd.sum_scatter(x, group=g)
        found[("min_scatter", k)] = rd.reduce_scatter(x, "min", group=g)
    found["sum_scatter strided"] = rd.sum_scatter(found[("scatter input", 4099)][:, ::2], group=g)
    for root in (0, n - 1):  # broadcast: the root's array, whatever the others pass
        for key, x in (("m", m), ("strided", m[:, ::3]), ("empty", m[:0]), ("0-d", np.float64(7.5))):
            found[("broadcast", root, key)] = rd.broadcast(x if r == root else np.zeros_like(x), root=root, group=g)
    found["names"] = {tuning.choose(g, op, m.nbytes).name
                      for op in ("all_sum", "all_bxor", "reduce", "sum_scatter", "min_scatter", "broadcast")}
    return found


@pytest.mark.parametrize("n", [2, 3, 5])
def test_reductions_read_from_the_peers_give_the_bits_of_the_segments(n, monkeypatch):
    # all-reduce, rooted reduce, reduce-scatter (sum and min) and broadcast.
    # Pieces of 4 KiB, so a rank's slice is read from each peer in several.
    monkeypatch.setattr(shm_cma, "READ_PIECE", 4096)
    ops = ("all_reduce", "reduce", "reduce_scatter", "broadcast")
    cma = run_ranks(n, _reductions, algo=tuple((op, "shm-cma") for op in ops))
    segments = run_ranks(n, _reductions, algo=tuple((op, "shm") for op in ops))
    for r, (a, b) in enumerate(zip(cma, segments)):
        assert a["names"] == {"shm-cma"} and b["names"] == {"shm"}, (r, a["names"], b["names"])
        assert a.keys() == b.keys()
        for key in a:
            if key != "names" and key != "reduce to 1":
                assert np.array_equal(a[key], b[key]), (n, r, key)
                assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, (n, r, key)
        assert (a["reduce to 1"] is None) == (r != 1)
        if r == 1:
            assert np.array_equal(a["reduce to 1"], b["reduce to 1"])
    # and the values: every rank's inputs folded in rank order
    ufuncs = {"all_sum": np.add, "all_max": np.maximum, "all_prod": np.multiply}
    for key, got in cma[0].items():
        if isinstance(key, tuple) and key[0] in ufuncs:
            want = cma[0][("input",) + key[1:]].copy()
            for q in range(1, n):
                want = ufuncs[key[0]](want, cma[q][("input",) + key[1:]])
            assert np.array_equal(got, want), key
    assert cma[0]["0-d"].shape == () and cma[0]["0-d"] == sum(q + 0.5 for q in range(n))
    for r in range(n):
        for k in (0, 1, 4099):
            want = cma[0][("scatter input", k)].copy()
            for q in range(1, n):
                want += cma[q][("scatter input", k)]
            assert cma[r][("sum_scatter", k)].shape == (k, 3)
            assert np.array_equal(cma[r][("sum_scatter", k)], want[r * k:(r + 1) * k]), (r, k)
            least = np.minimum.reduce([cma[q][("scatter input", k)] for q in range(n)])
            assert np.array_equal(cma[r][("min_scatter", k)], least[r * k:(r + 1) * k]), (r, k)
        for root in (0, n - 1):
            m = cma[root]["2-d input"]
            for key, x in (("m", m), ("strided", m[:, ::3]), ("empty", m[:0]), ("0-d", np.float64(7.5))):
                got = cma[r][("broadcast", root, key)]
                assert got.shape == np.shape(x) and np.array_equal(got, x), (r, root, key)


@pytest.mark.parametrize("n", [9, 12])
def test_all_to_all_past_the_mesh_reads_its_blocks_from_the_peers(n):
    # More than 8 ranks have no connection to every rank: an all_to_all of blocks of one size,
    # over a slot, reads them from the peers' inputs (two signals) instead of relaying them
    # exchanging them pairwise over TCP (without shared memory) or passing them through the
    # segments in rounds.
    rows = 20_000  # of 3 float64 a block: 480 KB, N of them a rank

    def rank(g: rd.Group) -> tuple:
        r = g.rank()
        x = (np.arange(n * rows * 3, dtype=np.float64).reshape(n * rows, 3) + 1e7 * r)
        return (tuning.choose(g, "all_to_all", x.nbytes).name, rd.all_to_all(x, group=g),
                rd.all_to_all(x[::2], group=g), rd.all_to_all(x[:0], group=g))

    runs = {"shm-cma": run_ranks(n, rank), "shm": run_ranks(n, rank, shm_cma=False), "pairwise-exchange": run_ranks(n, rank, shm=False)}
    xs = [np.arange(n * rows * 3, dtype=np.float64).reshape(n * rows, 3) + 1e7 * q for q in range(n)]
    for r in range(n):
        want = np.concatenate([x[r * rows:(r + 1) * rows] for x in xs])
        strided = np.concatenate([x[::2][r * rows // 2:(r + 1) * rows // 2] for x in xs])
        for name, got in runs.items():
            assert got[r][0] == name, (r, name, got[r][0])
            assert np.array_equal(got[r][1], want) and np.array_equal(got[r][2], strided), (r, name)
            assert got[r][3].shape == (0, 3), (r, name)


def _with_a_gone_peer(n: int, gone_rank: int, call, **overrides) -> tuple[int, list[str]]:
    """Each rank's error from `call(group)` after rank 0's record of rank `gone_rank`'s process
    is made to name one that does not exist (as if it had died after the group was made):
    (that process id, the errors as 'Type: message', or 'no error')."""
    gone = 1
    while os.path.exists(f"/proc/{gone}"):
        gone += 7919

    def rank(g: rd.Group) -> str:
        if g.rank() == 0:
            g.shm.pids[gone_rank] = gone
        try:
            call(g)
        except RingError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"

    try:
        return gone, run_ranks(n, rank, timeout=30, **overrides)
    except RankFailed as exc:  # pragma: no cover - a rank raising something else
        raise AssertionError(str(exc))


def test_a_refused_read_in_a_reduction_fails_the_call_on_every_rank():
    gone, got = _with_a_gone_peer(3, 2, lambda g: rd.all_sum(np.ones(3 * 4096, np.float32), group=g),
                                  algo=(("all_reduce", "shm-cma"),))
    assert re.fullmatch(rf"PeerLostError: rank 0: all_sum on group 'world': reading rank 2's block from its "
                        rf"memory \(process {gone}\) failed: No such process \(the process is gone\)", got[0]), got
    for r in (1, 2):
        assert got[r].startswith("PeerLostError: ") and "reading rank 2's block" in got[r], got


def test_one_rank_with_it_off_turns_it_off_for_the_group():
    def rank(g: rd.Group) -> tuple:
        return g.shm is not None, g.shm.pids, tuning.choose(g, "all_to_all", 4 * BLOCK * 4).name, \
            rd.all_to_all(np.arange(16 * BLOCK // 4, dtype=np.float32) + g.rank(), group=g)

    got = run_ranks(4, rank, rank_overrides={2: {"shm_cma": False}})
    for r, (has_shm, pids, name, _) in enumerate(got):
        assert has_shm and pids is None and name == "shm", (r, pids, name)


def test_the_setting_is_checked():
    assert Settings.from_env({"RINGDIST_SHM_CMA": "0"}).shm_cma is False
    assert Settings.from_env({}).shm_cma is True
    with pytest.raises(ConfigError, match=r"RINGDIST_SHM_CMA='yes' must be 1 .* or 0"):
        Settings.from_env({"RINGDIST_SHM_CMA": "yes"})


def test_a_refused_read_fails_the_call_on_every_rank_naming_the_peer():
    # Rank 0's record of rank 1's process names one that does not exist (as if it had died
    # after the group was made): its read is refused, it raises PeerLostError naming rank 1
    # and the process, and rank 1 gets the ABORT instead of waiting for rank 0's signal.
    gone, got = _with_a_gone_peer(2, 1, lambda g: rd.all_gather(np.ones(BLOCK // 4, np.float32), group=g))
    assert re.fullmatch(rf"PeerLostError: rank 0: all_gather on group 'world': reading rank 1's block from its "
                        rf"memory \(process {gone}\) failed: No such process \(the process is gone\)", got[0]), got
    assert got[1].startswith("PeerLostError: ") and "reading rank 1's block" in got[1], got


def test_reads_go_between_launched_processes():
    # Real ranks: separate processes, each reading the others' memory (a 2-rank all_gather,
    # a 4-rank all_to_all and all_sum, a 3-rank broadcast and scatter, each over its threshold),
    # the results checked on every rank.
    for n, op in ((2, "all_gather"), (4, "all_to_all"), (4, "all_sum"), (3, "broadcast"), (3, "scatter")):
        res = run_launcher(["-n", str(n), str(SCRIPTS / "cma_job.py"), op], timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        found = re.findall(r"^\[(\d)\] (\w+) by shm-cma ok, peers' processes ([\d,]+)$", res.stdout, re.M)
        assert sorted(int(r) for r, _, _ in found) == list(range(n)), res.stdout + res.stderr
        pids = {int(r): set(p.split(",")) for r, _, p in found}
        assert len(set.union(*pids.values())) == n  # every rank a process of its own


def test_kill_9_while_peers_read_reaches_every_rank():
    # 4 MiB all_to_all on 4 ranks: 1 MiB blocks, read from the peers' memory.
    kill_one_mid_loop(["-n", "4", str(SCRIPTS / "long_loop.py"), "all_to_all", "4"], 4, 2,
                      {"RINGDIST_TIMEOUT": "30", "RINGDIST_ALGO": "all_to_all:shm-cma"}, settle=0.3)


def test_kill_9_while_peers_read_a_reduction_reaches_every_rank():
    kill_one_mid_loop(["-n", "4", str(SCRIPTS / "long_loop.py"), "all_sum", "4"], 4, 1,
                      {"RINGDIST_TIMEOUT": "30", "RINGDIST_ALGO": "all_reduce:shm-cma"}, settle=0.3)


def test_kill_9_during_an_all_to_all_past_the_mesh_reaches_every_rank():
    # 10 ranks (no mesh), 4 MiB a rank: blocks read from the peers' inputs, two signals a call.
    kill_one_mid_loop(["-n", "10", str(SCRIPTS / "long_loop.py"), "all_to_all", "4"], 10, 6,
                      {"RINGDIST_TIMEOUT": "30"}, settle=0.3)


def test_it_is_not_chosen_without_the_link():
    def rank(g: rd.Group) -> str:
        return tuning.choose(g, "all_to_all", 64 * BLOCK).name

    assert "shm-cma" not in run_ranks(2, rank, shm=False)
    with pytest.raises(RankFailed, match=r"shm-cma.*needs every rank to read its peers' memory"):
        run_ranks(2, rank, shm_cma=False, algo=(("all_to_all", "shm-cma"),))



def test_a_block_gone_from_its_owners_memory_is_a_lost_peer():
    # Rank 1 says its block lies at an address nothing is mapped at (as when its process is
    # exiting and its memory goes first): rank 0's read fails with EFAULT, a PeerLostError
    # naming rank 1, and rank 1 gets the ABORT instead of waiting for rank 0's signal.
    def rank(g: rd.Group) -> str:
        if g.rank() == 1:
            publish = g._signals.publish
            g._signals.publish = lambda address, second=0: publish(4096, second)  # the first page: never mapped
        try:
            rd.all_gather(np.ones(BLOCK // 4, np.float32), group=g)
        except RingError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"

    got = run_ranks(2, rank, timeout=30)
    assert re.fullmatch(r"PeerLostError: rank 0: all_gather on group 'world': reading rank 1's block from its "
                        r"memory \(process \d+\) failed: Bad address \(its memory there is gone: the process is "
                        r"exiting\)", got[0]), got
    assert got[1].startswith("PeerLostError: ") and "reading rank 1's block" in got[1], got


def test_a_rooted_reduce_of_large_slices_gives_the_all_reduces_bytes():
    # Slices past 8 MiB: the rooted reduce keeps a slice off the root in scratch, a round at a
    # time, and runs the all-reduce's very rounds and pieces (it went through the segments,
    # whose pieces end elsewhere: a complex product ending a piece rounded another way, and a
    # sum of two NaNs kept the other one).
    n, per = 2, (8 << 20) // 16 + 1
    z, w = 0.18905338179353307 - 0.5227484414807474j, -0.41306354339189344 - 2.4414673826398556j
    inputs = [np.ones(n * per, complex), np.ones(n * per, complex)]
    for i in (per - 1, n * per - 1):
        inputs[0][i], inputs[1][i] = z, w
    with np.errstate(invalid="ignore"):
        negative = np.full(n * per, np.inf) - np.inf
    nans = [np.full(n * per, np.nan), negative]

    def rank(g):
        x, y = inputs[g.rank()], nans[g.rank()]
        with np.errstate(invalid="ignore"):
            calls = [rd.all_prod(x, group=g), rd.reduce(x, 0, op="prod", group=g),
                     rd.all_sum(y, group=g), rd.reduce(y, 0, group=g)]
        return [None if c is None else c.tobytes() for c in calls], tuning.choose(g, "all_prod", x.nbytes).name

    got = run_ranks(n, rank)
    assert got[0][1] == "shm-cma", got[0][1]
    (prod0, reduced_prod, sum0, reduced_sum), (prod1, _, sum1, _) = got[0][0], got[1][0]
    assert prod0 == prod1 == reduced_prod and sum0 == sum1 == reduced_sum
