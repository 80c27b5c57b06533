"""Hierarchical collectives (`ringdist.hosts`, `algorithms/hier.py`): groups on several hosts
with as many ranks on each move bytes between hosts only between ranks with the same index
on their hosts, and within a host over its shared memory (or TCP).

In-process ranks listening on different loopback addresses are on different hosts to the
layout; with shared memory off on one rank, its host steps over TCP while the others use
their own shared memory, so both ways run in one group. The emulated cluster (network
namespaces, root) runs it as launched: hosts that share memory only within themselves."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import ringdist as rd
from harness import run_disagreement, run_ranks
from helpers import SCRIPTS, kill_one_mid_loop, loopback_aliases, run_launcher
from ringdist import tuning
from ringdist.errors import ConfigError, MismatchError
from ringdist.hosts import hierarchical, layout
from ringdist.shm import slot_bytes
from test_cluster import AGENT, netns_cluster  # noqa: F401  (netns_cluster is a fixture)


def _ips(n: int, per_host: int) -> list[str]:
    return [f"127.0.0.{1 + r // per_host}" for r in range(n)]


def test_layout_groups_ranks_by_the_addresses_they_listen_on():
    a = [[("10.0.0.1", 5)], [("10.0.0.2", 6)], [("10.0.0.1", 7)], [("10.0.0.2", 8)]]
    assert layout(a) == [[0, 2], [1, 3]]
    assert hierarchical(layout(a))
    assert not hierarchical(layout(a[:3]))  # 2 ranks on one host, 1 on the other
    assert not hierarchical(layout([[("10.0.0.1", 5)], [("10.0.0.2", 6)]]))  # one rank per host
    assert not hierarchical(layout([[("10.0.0.1", p)] for p in range(4)]))  # one host


CASES = [("all_gather", "float32", 1), ("all_gather", "float64", 0), ("all_gather", "int16", 70_001),
         ("all_sum", "int64", 0), ("all_sum", "int32", 1), ("all_sum", "int64", 70_003),
         ("all_max", "float32", 33_333), ("all_min", "int16", 5), ("all_prod", "int32", 77),
         ("all_sum", "bool", 65_537)]


def _value(op: str, dtype: str, count: int, r: int) -> np.ndarray:
    base = np.arange(count) % 7 + r
    if op == "all_prod":
        base = base % 2 + 1
    return base.astype(dtype) if dtype != "bool" else (base % 3 == 0)


@pytest.mark.parametrize("n, per_host", [(4, 2), (6, 3), (6, 2), (8, 4), (9, 3)])
def test_hierarchical_collectives_give_every_rank_the_exact_result(n, per_host):
    loopback_aliases()
    big = slot_bytes(per_host) // 4 + 1001  # more than a slot of float32: several rounds on shm hosts
    cases = CASES + [("all_gather", "float32", big), ("all_sum", "float32", big)]

    def rank(g: rd.Group) -> tuple:
        h = g.hierarchy
        out = []
        for op, dtype, count in cases:
            x = _value(op, dtype, count, g.rank())
            got = getattr(rd, op)(x, group=g)
            parts = [_value(op, dtype, count, p) for p in range(n)]
            if op == "all_gather":
                want = np.concatenate(parts)
            elif op == "all_sum" and dtype == "float32":
                want = np.sum(parts, axis=0, dtype=np.float64).astype(np.float32)
            else:
                ufunc = {"all_sum": np.add, "all_max": np.maximum, "all_min": np.minimum,
                         "all_prod": np.multiply}[op]
                want = ufunc.reduce(np.stack(parts), axis=0).astype(got.dtype)
            assert got.dtype == x.dtype and got.shape == want.shape, (op, dtype, count)
            if dtype == "float32" and op == "all_sum":
                np.testing.assert_allclose(got, want, rtol=1e-5)
            else:
                assert np.array_equal(got, want), (op, dtype, count)
            out.append(got.tobytes())
        # Forced for small arrays too (the table chooses it from 64 KiB per rank).
        y = np.arange(5, dtype=np.float32) * (g.rank() + 1)
        out.append(rd.all_gather(y, group=g).tobytes())
        out.append(rd.all_sum(y, group=g).tobytes())
        return (h.host, h.local, h.link is not None, tuning.choose(g, "all_gather", 1 << 20).name), out

    res = run_ranks(n, rank, ips=_ips(n, per_host), rank_overrides={0: {"shm": False}},
                    algo=(("all_gather", "hier"), ("all_sum", "hier"), ("all_max", "hier"), ("all_min", "hier"),
                          ("all_prod", "hier")))
    places = [place for place, _ in res]
    assert places == [(r // per_host, r % per_host, r >= per_host, "hier") for r in range(n)]
    assert all(outs == res[0][1] for _, outs in res)  # the same bits on every rank


def test_a_host_without_shared_memory_passes_its_columns_in_bounded_rounds(monkeypatch):
    loopback_aliases()
    # 3 hosts of 2 ranks, none sharing memory: the host step goes over TCP, here in rounds of
    # 1,000 bytes per rank (so 334 of each block per round: several, the last one shorter).
    from ringdist.algorithms import hier
    monkeypatch.setattr(hier, "HOST_TCP_ROUND", 1000)

    def rank(g: rd.Group) -> bytes:
        assert g.hierarchy is not None and g.hierarchy.link is None
        x = np.arange(1250, dtype=np.float32) + 10_000 * g.rank()  # 5,000-byte blocks
        return rd.all_gather(x, group=g).tobytes()

    res = run_ranks(6, rank, ips=_ips(6, 2), shm=False, algo=(("all_gather", "hier"),))
    want = np.concatenate([np.arange(1250, dtype=np.float32) + 10_000 * r for r in range(6)]).tobytes()
    assert res == [want] * 6


def test_the_table_chooses_the_hierarchy_for_large_gathers_only():
    loopback_aliases()
    def rank(g: rd.Group) -> tuple:
        x = np.ones(1 << 18, np.float32)
        rd.all_gather(x, group=g)
        rd.all_sum(x, group=g)
        return tuning.choose(g, "all_gather", 4096).name, tuning.choose(g, "all_gather", 1 << 20).name, \
            tuning.choose(g, "all_sum", 1 << 20).name

    res = run_ranks(4, rank, ips=_ips(4, 2), shm=False)
    assert res == [("doubling", "hier", "two-shot")] * 4  # reductions: the flat algorithms (tuning.py)


def test_no_hierarchy_on_one_host_or_with_uneven_hosts():
    loopback_aliases()
    def rank(g: rd.Group) -> tuple:
        return g.hierarchy is None, tuning.choose(g, "all_sum", 1 << 20).name

    assert run_ranks(4, rank, shm=False) == [(True, "two-shot")] * 4
    assert run_ranks(3, rank, ips=["127.0.0.1", "127.0.0.1", "127.0.0.2"], shm=False) == [(True, "two-shot")] * 3

    def forced(g: rd.Group) -> None:
        rd.all_sum(np.ones(4), group=g)

    with pytest.raises(Exception) as info:
        run_ranks(3, forced, ips=["127.0.0.1", "127.0.0.1", "127.0.0.2"], shm=False, algo=(("all_sum", "hier"),))
    assert all(isinstance(e, ConfigError) and "several hosts" in str(e) for e in info.value.errors)


def test_a_rank_running_another_algorithm_is_a_mismatch_on_every_rank():
    loopback_aliases()
    # Rank 3 forces the flat ring; the others choose the hierarchy: nobody waits for ever.
    outcomes, _ = run_disagreement(4, lambda g: rd.all_sum(np.ones(1 << 17, np.float32), group=g),
                                   ips=_ips(4, 2), shm=False, rank_overrides={3: {"algo": (("all_sum", "ring"),)}})
    assert all(isinstance(o, MismatchError) or "aborted by" in str(o) for o in outcomes), outcomes
    assert any(isinstance(o, MismatchError) for o in outcomes)


def _reports(stdout: str) -> dict[int, dict]:
    return {int(m.group(1)): json.loads(m.group(2)) for m in re.finditer(r"^\[(\d+)\] (\{.*\})$", stdout, re.M)}


def test_two_hosts_of_two_ranks_share_memory_within_each_host(netns_cluster):
    _, path, _ = netns_cluster("hier", "-k", "2", "--slots", "2")
    res = run_launcher(["--rsh-agent", AGENT, "--hosts", path, str(SCRIPTS / "hier_check.py")], timeout=120,
                       env={"RINGDIST_TIMEOUT": "30", "RINGDIST_CONNECT_TIMEOUT": "15",
                            "RINGDIST_ALGO": "all_reduce:hier"})
    assert res.returncode == 0, res.stdout + res.stderr
    got = _reports(res.stdout)
    assert sorted(got) == [0, 1, 2, 3]
    for r, rep in got.items():
        assert rep["hosts"] == [[0, 1], [2, 3]] and rep["host"] == r // 2
        assert rep["link"] is True  # the two ranks of each namespace share memory; across, they cannot
        assert all(rep["ok"].values()), rep["ok"]
        assert rep["chosen"] == {"all_gather-300001": "hier", "all_gather-5": "doubling"}
        assert rep["digest"] == got[0]["digest"]


@pytest.mark.parametrize("op", ["all_gather", "all_sum"])
def test_kill_9_mid_hierarchical_operation_reaches_every_rank(netns_cluster, op):
    _, path, _ = netns_cluster("hkil", "-k", "2", "--slots", "2")
    kill_one_mid_loop(["--rsh-agent", AGENT, "--hosts", path, str(SCRIPTS / "long_loop.py"), op, "2"], 4, 1,
                      {"RINGDIST_TIMEOUT": "30", "RINGDIST_ALGO": "all_gather:hier,all_reduce:hier"})
