"""The tuning table: which algorithm each case gets, RINGDIST_ALGO, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import ringdist as rd
from ringdist import tuning
from ringdist.algorithms import ALGORITHMS
from ringdist.settings import Settings

from harness import RankFailed, run_ranks
from helpers import SCRIPTS, run_launcher


def chosen(n: int, op: str, nbytes: int, **settings) -> str:
    settings.setdefault("shm", False)  # the TCP rows, as measured (the shared-memory rows: below)
    return run_ranks(n, lambda g: tuning.choose(g, op, nbytes).name, **settings)[0]


@pytest.mark.parametrize("n, op, nbytes, name", [
    (2, "all_gather", 4096, "direct"),
    (2, "all_gather", 1 << 20, "ring"),
    (4, "all_gather", 4096, "doubling"),
    (4, "all_gather", 64 << 10, "direct"),
    (4, "all_gather", 2 << 20, "ring"),
    (3, "all_gather", 4096, "direct"),
    (9, "all_gather", 4096, "doubling"),
    (12, "all_gather", 64 << 10, "bruck"),
    (16, "all_gather", 256 << 10, "doubling"),
    (12, "all_gather", 1 << 20, "ring"),
    (16, "sum_scatter", 16 << 12, "rabenseifner"),
    (16, "sum_scatter", 16 << 20, "ring"),
    (16, "broadcast", 4096, "binomial"),
    (16, "broadcast", 16 << 20, "ring"),
    (16, "barrier", 1, "dissemination"),
    (4, "barrier", 1, "direct"),
    (6, "all_sum", 4096, "direct"),
    (6, "all_sum", 64 << 10, "doubling"),
    (2, "all_sum", 4096, "pairwise"),
    (2, "all_sum", 1 << 20, "two-shot"),
    (2, "all_sum", 2 << 20, "pairwise-ring"),
    (2, "all_sum", 4 << 20, "ring"),
    (4, "all_sum", 64 << 10, "doubling"),
    (3, "all_sum", 64 << 10, "direct"),
    (4, "all_sum", 1 << 20, "two-shot"),
    (4, "all_sum", 16 << 20, "ring"),
    (16, "all_sum", 4096, "doubling"),
    (12, "all_sum", 1 << 20, "rabenseifner"),
    (16, "all_sum", 16 << 20, "ring"),
    (4, "sum_scatter", 4096, "ring"),
    (4, "broadcast", 4096, "direct"),
    (4, "broadcast", 4 << 20, "ring"),
])
def test_the_table_chooses_as_measured(n, op, nbytes, name):
    assert chosen(n, op, nbytes) == name


def test_the_direct_limit_moves_the_crossover():
    assert chosen(4, "all_gather", 64 << 10, direct_max=0) == "ring"
    assert chosen(4, "all_sum", 4096, direct_max=0) == "ring"
    assert chosen(2, "all_sum", 4096, directions=2) == "doubling"  # both ways: the pair keeps to the table's next row


def test_rings_close_every_kind():
    for kind in ("gather", "reduce", "reduce_scatter", "broadcast"):
        assert [r.algorithm for r in tuning.TABLE if r.kind == kind][-1] == "ring"
    assert {r.algorithm for r in tuning.TABLE} <= set(ALGORITHMS)


def test_ringdist_algo_overrides_and_is_checked():
    assert chosen(4, "all_sum", 4096, algo=(("all_sum", "ring"),)) == "ring"
    assert chosen(4, "all_max", 4096, algo=(("all_reduce", "direct"),)) == "direct"
    assert chosen(4, "all_gather", 4096, algo=(("all_sum", "ring"),)) == "doubling"  # other ops: the table
    # all_reduce and reduce_scatter name every reduction of their kind, bitwise ones included.
    assert chosen(4, "all_bxor", 4096, algo=(("all_reduce", "ring"),)) == "ring"
    assert chosen(4, "max_scatter", 1 << 20, algo=(("reduce_scatter", "rabenseifner"),)) == "rabenseifner"
    assert chosen(4, "band_scatter", 1 << 20, algo=(("sum_scatter", "rabenseifner"),)) != "rabenseifner"
    with pytest.raises(rd.ConfigError, match="RINGDIST_ALGO: bruck cannot run reduce_scatter"):
        tuning.check_overrides((("reduce_scatter", "bruck"),))
    assert Settings.from_env({"RINGDIST_ALGO": "bor_scatter:ring,all_band:direct"}).algo == (
        ("bor_scatter", "ring"), ("all_band", "direct"))
    with pytest.raises(RankFailed) as failed:
        run_ranks(9, lambda g: tuning.choose(g, "all_sum", 4096), algo=(("*", "two-shot"),))
    for exc in failed.value.errors:
        assert isinstance(exc, rd.ConfigError) and str(exc).startswith(
            "RINGDIST_ALGO forces two-shot for all_sum, which cannot run here: it needs a connection to every rank")
    with pytest.raises(rd.ConfigError, match="RINGDIST_ALGO: no algorithm 'bogus'"):
        tuning.check_overrides((("*", "bogus"),))
    with pytest.raises(rd.ConfigError, match="RINGDIST_ALGO: two-shot cannot run all_gather"):
        tuning.check_overrides((("all_gather", "two-shot"),))
    # Bruck's all_to_all takes blocks of one size only; objects to or from a root are of any size.
    with pytest.raises(rd.ConfigError, match="RINGDIST_ALGO: bruck cannot run gather_object"):
        tuning.check_overrides((("gather_object", "bruck"),))
    tuning.check_overrides((("scatter_object", "pairwise-exchange"), ("all_to_all", "bruck"), ("*", "bruck")))
    with pytest.raises(rd.ConfigError, match="RINGDIST_ALGO"):
        Settings.from_env({"RINGDIST_ALGO": "all_sum=ring"})


def test_the_launcher_refuses_an_unknown_algorithm_in_one_line():
    res = run_launcher(["-n", "2", "--env", "RINGDIST_ALGO=all_sum:fastest", str(SCRIPTS / "exit_code.py"),
                        "-1", "0", "0"], timeout=30)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("ringdist-launch: error: RINGDIST_ALGO: no algorithm 'fastest'")


def test_ranks_forcing_different_algorithms_fail_with_a_mismatch_on_every_rank():
    # Launched ranks agree on RINGDIST_ALGO in init() (test_launcher_input.py); ranks that got
    # past that with different choices still fail in the call: the algorithm is in the header.
    def rank(g):
        try:
            return f"ok {rd.all_sum(np.ones(1000) * (g.rank() + 1), group=g)[0]:g}"
        except rd.RingError as exc:
            return f"raised {type(exc).__name__}: {exc}"

    got = run_ranks(4, rank, algo=(("all_sum", "ring"),), rank_overrides={2: {"algo": (("all_sum", "two-shot"),)}})
    assert all(line.startswith("raised MismatchError") for line in got), got
    assert any("two-shot" in line for line in got), got


def test_ranks_spelling_the_same_forced_algorithms_differently_agree():
    from ringdist.settings import algo_key

    same = [(("all_sum", "ring"), ("all_gather", "bruck")), (("all_gather", "bruck"), ("all_sum", "ring")),
            (("all_sum", "two-shot"), ("all_gather", "bruck"), ("all_sum", "ring"))]
    assert all(algo_key(pairs) == [["all_gather", "bruck"], ["all_sum", "ring"]] for pairs in same)
    # An entry for several ops makes the order matter: the last matching entry wins.
    assert algo_key((("*", "ring"), ("all_sum", "doubling"))) != algo_key((("all_sum", "doubling"), ("*", "ring")))
    # (reduce_scatter covers every <op>_scatter: the two orders chose ring on one rank, rabenseifner on another)
    assert (algo_key((("sum_scatter", "ring"), ("reduce_scatter", "rabenseifner")))
            != algo_key((("reduce_scatter", "rabenseifner"), ("sum_scatter", "ring"))))
