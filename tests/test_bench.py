"""ringdist-bench runs under the launcher and reports one row per size (speed is not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_bench_prints_rows_and_json(tmp_path):
    out = tmp_path / "rows.jsonl"
    res = subprocess.run([sys.executable, "-m", "ringdist_bench", "-n", "2", "-o", "all_sum", "-b", "4K", "-e", "64K",
                          "-t", "0.05", "--check", "--json", str(out)],
                         capture_output=True, text=True, timeout=120, start_new_session=True)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["bytes_per_rank"] for r in rows] == [4096, 16384, 65536]
    for row in rows:
        assert row["op"] == "all_sum" and row["n_ranks"] == 2 and row["time_s"] > 0
        assert abs(row["busbw_GBps"] - row["algbw_GBps"] * 2 * (2 - 1) / 2) < 1e-9
    printed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("[0] ") and "#" not in line]
    assert printed == ["4096", "16384", "65536"], res.stdout


@pytest.mark.parametrize("op,factor", [("all_to_all", 1 / 2), ("gather", 1 / 2), ("scatter", 1 / 2),
                                       ("reduce", 1.0), ("all_gather_object", 1 / 2)])
def test_bench_runs_the_rooted_all_to_all_and_object_calls_checking_every_output(tmp_path, op, factor):
    out = tmp_path / "rows.jsonl"
    res = subprocess.run([sys.executable, "-m", "ringdist_bench", "-n", "2", "-o", op, "-b", "4K", "-e", "16K",
                          "-t", "0.02", "--check", "--json", str(out)],
                         capture_output=True, text=True, timeout=120, start_new_session=True)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["bytes_per_rank"] for r in rows] == [4096, 16384] and all(r["op"] == op for r in rows), rows
    assert all(abs(r["busbw_GBps"] - r["algbw_GBps"] * factor) < 1e-9 for r in rows), rows


def test_alternate_compares_two_values_call_by_call():
    import re
    from pathlib import Path

    from helpers import run_launcher

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "alternate.py"
    res = run_launcher(["-n", "2", str(script), "1048576", "all_sum", "ringdist.tuning.PAIR_EXCHANGE_MAX",
                        "0", "2<<20", "--calls", "20", "--warmup", "4"], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    line = re.search(r"^\[0\] all_sum 1048576 B on 2 ranks, ringdist\.tuning\.PAIR_EXCHANGE_MAX: "
                     r"0: median ([\d.]+) µs .* \| 2<<20: median ([\d.]+) µs .* \| B/A ([\d.]+) \(10 calls each\)$",
                     res.stdout, re.M)
    assert line, res.stdout
    a, b, ratio = (float(v) for v in line.groups())
    assert a > 0 and b > 0 and abs(ratio - b / a) < 0.01
    bad = run_launcher(["-n", "2", str(script), "4096", "all_sum", "group.no_such_thing", "0", "1"], timeout=60)
    assert bad.returncode != 0 and "group.no_such_thing: no such attribute" in bad.stdout + bad.stderr


@pytest.mark.parametrize("op", ["all_gather", "reduce_scatter"])
def test_uneven_compares_the_shared_memory_rows_with_the_former_path(op):
    import re
    from pathlib import Path

    from helpers import run_launcher

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "uneven.py"
    res = run_launcher(["-n", "3", str(script), "65536", op, "--calls", "10", "--warmup", "2"], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    line = re.search(rf"^\[0\] uneven {op} 65536 B on 3 ranks: A median ([\d.]+) µs .* \| B median ([\d.]+) µs "
                     r".* \| B/A ([\d.]+) \(5 calls each\)$", res.stdout, re.M)
    assert line, res.stdout
    a, b, ratio = (float(v) for v in line.groups())
    assert a > 0 and b > 0 and abs(ratio - b / a) < 0.01


@pytest.mark.slow  # a benchmark tool, run by `pytest -m slow` (CI runs both)
def test_interleave_runs_each_size_and_peer_in_turn(tmp_path):
    """benchmarks/interleave.py against a stand-in harness: one run per (repeat, size, peer),
    peers alternating, every repeat in the harness's format, ratios with their median."""
    from pathlib import Path

    harness = tmp_path / "harness.sh"
    calls = tmp_path / "calls"
    harness.write_text(r"""#!/usr/bin/env bash
echo "$PEERS $SIZES $1" >> "$CALLS"
case $PEERS in ringdist_ring) t=0.002;; *) t=0.004;; esac
printf '{"peer": "%s", "n_ranks": %s, "collective": "all_gather", "bytes_per_rank": %s, "time_s": %s, "busbw_GBps": %s, "status": "ok"}\n' \
  "$PEERS" "$1" "$SIZES" "$t" "$(python3 -c "print($SIZES / $t / 1e9)")" > "$RESULTS/peers-N$1.jsonl"
""")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "interleave.py"
    env = dict(__import__("os").environ, CALLS=str(calls))
    res = subprocess.run([sys.executable, str(script), "-n", "2", "--repeats", "3", "--sizes", "4K,1M",
                          "--results", str(tmp_path / "out"), "--harness", str(harness)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    order = [line.split()[:2] for line in calls.read_text().splitlines()]
    assert order == [["ringdist_ring", "4096"], ["mpi_tcp", "4096"], ["mpi_tcp", "1048576"], ["ringdist_ring", "1048576"],
                     ["mpi_tcp", "4096"], ["ringdist_ring", "4096"], ["ringdist_ring", "1048576"], ["mpi_tcp", "1048576"],
                     ["ringdist_ring", "4096"], ["mpi_tcp", "4096"], ["mpi_tcp", "1048576"], ["ringdist_ring", "1048576"]]
    for k in (1, 2, 3):
        rows = [json.loads(line) for line in (tmp_path / "out" / str(k) / "peers-N2.jsonl").read_text().splitlines()]
        assert sorted((r["peer"], r["bytes_per_rank"]) for r in rows) == [
            ("mpi_tcp", 4096), ("mpi_tcp", 1048576), ("ringdist_ring", 4096), ("ringdist_ring", 1048576)]
    assert "| 2 | all_gather | 4096 | time | 0.50 | 0.50 | 0.50 | 0.50 |" in res.stdout, res.stdout
    assert "| 2 | all_gather | 1048576 | busbw | 2.00 | 2.00 | 2.00 | 2.00 |" in res.stdout, res.stdout


@pytest.mark.slow  # a benchmark tool, run by `pytest -m slow` (CI runs both)
def test_bare_ring_beside_ringdist(tmp_path):
    """benchmarks/bare.py: the bare-socket ring (its own processes, checked output) and
    ringdist-bench at the same size, in turn, in the harness's format, with their ratio."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bare.py"
    res = subprocess.run([sys.executable, str(script), "-n", "3", "--sizes", "4K,64K", "--repeats", "2",
                          "--time", "0.05", "--results", str(tmp_path)],
                         capture_output=True, text=True, timeout=180, start_new_session=True)
    assert res.returncode == 0, res.stdout + res.stderr
    for k in (1, 2):
        rows = [json.loads(line) for line in (tmp_path / str(k) / "peers-N3.jsonl").read_text().splitlines()]
        assert sorted((r["peer"], r["bytes_per_rank"]) for r in rows) == [
            ("bare_ring", 4096), ("bare_ring", 65536), ("ringdist_ring", 4096), ("ringdist_ring", 65536)]
        for r in rows:
            assert r["status"] == "ok" and r["n_ranks"] == 3 and r["collective"] == "all_gather"
            assert r["time_s"] > 0 and abs(r["busbw_GBps"] - 2 * r["bytes_per_rank"] / r["time_s"] / 1e9) < 1e-6
    assert "| 3 | all_gather | 65536 | busbw |" in res.stdout, res.stdout
    assert "ratio to bare_ring" in res.stdout


def test_bare_ring_refuses_a_size_that_is_not_float32():
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bare.py"
    res = subprocess.run([sys.executable, str(script), "-n", "2", "--sizes", "4099"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "--sizes: 4099 is not a whole number of float32" in res.stderr


@pytest.mark.slow  # a benchmark tool, run by `pytest -m slow` (CI runs both)
def test_bare_ring_stops_at_once_when_a_rank_dies(tmp_path):
    """A bare-ring rank killed as it starts: the run fails within seconds and names it, and
    no rank outlives it (none is left waiting out the ranks' 300 s timeout)."""
    import os
    import signal
    import time
    from pathlib import Path

    from helpers import descendants, kill_tree, wait_until_gone

    def rank_of(pid: int) -> int | None:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return int(cmd[cmd.index(b"--rank") + 1]) if b"--rank" in cmd else None

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bare.py"
    proc = subprocess.Popen([sys.executable, str(script), "-n", "3", "--sizes", "64K", "--repeats", "1",
                             "--no-ringdist", "--results", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ranks: dict[int, int] = {}  # rank -> pid
        deadline = time.monotonic() + 60
        while 1 not in ranks and time.monotonic() < deadline:
            ranks.update((rank_of(pid), pid) for pid in descendants(proc.pid) if rank_of(pid) is not None)
            time.sleep(0.01)
        assert 1 in ranks, "rank 1 never started"
        os.kill(ranks[1], signal.SIGKILL)
        start = time.monotonic()
        out, err = proc.communicate(timeout=60)
        assert time.monotonic() - start < 20
        assert proc.returncode != 0
        assert "failed or were stopped (size 65536, 3 ranks)" in out + err, out + err
        assert "1" in (out + err).split("bare ring ranks [")[1].split("]")[0]
        assert wait_until_gone(list(ranks.values()), timeout=1) == []
    finally:
        kill_tree(proc)


PEER_ROW_FIELDS = {"schema", "peer", "version", "launcher", "transport", "collective", "n_ranks", "dtype",
                   "bytes_per_rank", "bytes_out", "warmup", "iters", "capped", "time_s", "time_s_rank0",
                   "time_s_min", "time_s_p90", "algbw_GBps", "busbw_GBps", "verified", "status", "host",
                   "python", "omp_num_threads", "note", "unix_time"}


@pytest.mark.slow  # a benchmark tool, run by `pytest -m slow` (CI runs both)
def test_peer_harness_runs_ringdist_and_skips_what_is_not_installed(tmp_path):
    """benchmarks/peers/run.py with ringdist on 2 ranks at two tiny sizes: schema-1 rows, every
    output checked on every rank, a barrier row, the tables; a peer whose virtualenv does not
    exist is skipped with a line saying why. Needs neither MPI, torch nor MLX."""
    import os
    from pathlib import Path

    from helpers import kill_tree

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "run.py"
    env = {k: v for k, v in os.environ.items() if k not in ("PEERS", "SIZES", "COLLECTIVES", "RINGDIST_LAUNCH")}
    env["RINGDIST_PYTHON"] = sys.executable
    proc = subprocess.Popen([sys.executable, str(script), "2", "--peers", "ringdist_ring,mpi_tcp", "--sizes", "4K,16K",
                             "--target-time", "0.05", "--max-time", "1", "--peer-timeout", "120",
                             "--results", str(tmp_path), "--venv", str(tmp_path / "no-venv"), "--note", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, out
    lines = [json.loads(line) for line in (tmp_path / "peers-N2.jsonl").read_text().splitlines()]
    rows = [r for r in lines if r["peer"] == "ringdist_ring"]
    assert sorted((r["collective"], r["bytes_per_rank"]) for r in rows) == [
        ("all_gather", 4096), ("all_gather", 16384), ("all_sum", 4096), ("all_sum", 16384), ("barrier", 0)], out
    for r in rows:
        assert set(r) == PEER_ROW_FIELDS, sorted(set(r) ^ PEER_ROW_FIELDS)
        assert r["schema"] == 1 and r["verified"] is True and r["status"] == "ok", r
        assert r["n_ranks"] == 2 and r["dtype"] == "float32" and r["note"] == "tiny"
        assert r["iters"] >= 5 and r["warmup"] >= 2 and 0 < r["time_s_min"] <= r["time_s"] <= r["time_s_p90"]
        if r["collective"] == "all_gather":
            assert r["bytes_out"] == 2 * r["bytes_per_rank"]
            assert abs(r["busbw_GBps"] - 2 * r["bytes_per_rank"] / r["time_s"] / 2 / 1e9) < 1e-9
        elif r["collective"] == "all_sum":
            assert r["bytes_out"] == r["bytes_per_rank"]
            assert abs(r["busbw_GBps"] - r["bytes_per_rank"] / r["time_s"] / 1e9) < 1e-9
    skipped = [r for r in lines if r["peer"] == "mpi_tcp"]
    assert len(skipped) == 1 and skipped[0]["status"] == "skipped" and skipped[0]["reason"], skipped
    assert "== mpi_tcp: skipped (" in out, out
    md = (tmp_path / "peers-N2.md").read_text()
    assert "## all_gather, N = 2" in md and "## barrier, N = 2" in md and "| 16 KiB |" in md, md
    assert "| ringdist_ring | 2 | 5 rows | ringdist " in md and "| mpi_tcp | 2 | skipped |" in md, md


def test_peer_harness_refuses_bad_settings(tmp_path):
    """Bad sizes, rank counts and peer names stop run.py at once with one line naming them."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "run.py"
    cases = [(["2", "--sizes", "4099"], "--sizes: 4099: not a positive whole number of float32"),
             (["1"], "N = 1: expected at least 2 ranks"),
             (["2", "--peers", "nccl"], "--peers: 'nccl': expected some of"),
             (["2", "--target-time", "0"], "--target-time: '0': expected a positive, finite number of seconds"),
             (["3", "--collectives", "all_to_all", "--sizes", "4K"],
              "--sizes 4096: all_to_all needs a size of 3 equal blocks of float32 values")]
    for argv, message in cases:
        res = subprocess.run([sys.executable, str(script), *argv, "--results", str(tmp_path)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and message in res.stderr, (argv, res.stderr)
        assert "Traceback" not in res.stderr


@pytest.mark.slow  # a benchmark tool, run by `pytest -m slow` (CI runs both)
def test_peer_harness_runs_all_to_all_when_chosen(tmp_path):
    """--collectives all_to_all on 3 ranks: ringdist's rows only for it, every received block
    checked, busbw algbw·(N-1)/N with the whole send buffer as the size."""
    import os
    from pathlib import Path

    from helpers import kill_tree

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "run.py"
    env = {k: v for k, v in os.environ.items() if k not in ("PEERS", "SIZES", "COLLECTIVES", "RINGDIST_LAUNCH")}
    env["RINGDIST_PYTHON"] = sys.executable
    proc = subprocess.Popen([sys.executable, str(script), "3", "--peers", "ringdist_ring", "--sizes", "12K,48K",
                             "--collectives", "all_to_all", "--target-time", "0.05", "--max-time", "1",
                             "--peer-timeout", "120", "--results", str(tmp_path), "--venv", str(tmp_path / "no-venv")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, out
    rows = [json.loads(line) for line in (tmp_path / "peers-N3.jsonl").read_text().splitlines()]
    assert [(r["peer"], r["collective"], r["bytes_per_rank"]) for r in rows] == [
        ("ringdist_ring", "all_to_all", 12288), ("ringdist_ring", "all_to_all", 49152)], out
    for r in rows:
        assert set(r) == PEER_ROW_FIELDS and r["verified"] is True and r["status"] == "ok", r
        assert r["n_ranks"] == 3 and r["bytes_out"] == r["bytes_per_rank"]
        assert abs(r["algbw_GBps"] - r["bytes_per_rank"] / r["time_s"] / 1e9) < 1e-9
        assert abs(r["busbw_GBps"] - r["algbw_GBps"] * 2 / 3) < 1e-9
    md = (tmp_path / "peers-N3.md").read_text()
    assert "## all_to_all, N = 3" in md and "| 48 KiB |" in md and "## all_gather" not in md, md


@pytest.mark.slow  # a benchmark tool, run by `pytest -m slow` (CI runs both)
def test_peer_loop_checks_every_all_to_all_block_and_skips_what_a_peer_lacks(tmp_path):
    """A peer whose rank 1 gets two of its received all_to_all blocks swapped: wrong_result
    naming rank 1 and the first element of the block that moved. A collective the peer lists
    in `missing` gets a skipped line with the reason, and is no failure in itself."""
    from pathlib import Path

    from helpers import run_launcher

    peers = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"
    worker = tmp_path / "swapped_blocks_worker.py"
    worker.write_text(f"""import sys
sys.path.insert(0, {str(peers)!r})
import loop
from ringdist_worker import Ringdist

class SwappedBlocks(Ringdist):
    missing = {{"all_gather": "none here"}}

    def all_to_all(self, x):
        y = super().all_to_all(x)
        if self.rank == 1:
            part = y.size // self.size
            y[part:2 * part], y[2 * part:] = y[2 * part:].copy(), y[part:2 * part].copy()
        return y

loop.main(SwappedBlocks)
""")
    out = tmp_path / "rows.jsonl"
    res = run_launcher(["-n", "3", str(worker), "--out", str(out), "--sizes", "1200", "--collectives",
                        "all_gather,all_to_all", "--target-time", "0.05", "--max-time", "1"], timeout=120)
    assert res.returncode != 0, res.stdout + res.stderr
    skipped, bad = map(json.loads, out.read_text().splitlines())
    assert skipped == {"schema": 1, "peer": "ringdist_ring", "n_ranks": 3, "collective": "all_gather",
                       "status": "skipped", "reason": "all_gather: none here"}, skipped
    assert bad["collective"] == "all_to_all" and bad["verified"] is False and bad["status"] == "wrong_result", bad
    assert bad["error"] == "all_to_all: wrong output on rank(s) [1], first wrong element 100 on rank 1", bad


@pytest.mark.slow  # a benchmark tool, run by `pytest -m slow` (CI runs both)
def test_interleave_runs_the_peer_harness_by_default(tmp_path):
    """benchmarks/interleave.py without --harness runs benchmarks/peers/run.py: ringdist's rows
    for the size (all_gather and all_sum, no barrier row), and a peer that cannot run named."""
    import os
    from pathlib import Path

    from helpers import kill_tree

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "interleave.py"
    env = {k: v for k, v in os.environ.items() if k not in ("PEERS", "SIZES", "COLLECTIVES", "RINGDIST_LAUNCH")}
    env.update(RINGDIST_PYTHON=sys.executable, VENV=str(tmp_path / "no-venv"), TARGET_TIME="0.05", MAX_TIME="1")
    proc = subprocess.Popen([sys.executable, str(script), "-n", "2", "--repeats", "1", "--sizes", "4K",
                             "--peers", "ringdist_ring,mpi_tcp", "--results", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, out + err
    rows = [json.loads(line) for line in (tmp_path / "out" / "1" / "peers-N2.jsonl").read_text().splitlines()]
    ok = sorted((r["peer"], r["collective"], r["bytes_per_rank"]) for r in rows if r["status"] == "ok")
    assert ok == [("ringdist_ring", "all_gather", 4096), ("ringdist_ring", "all_sum", 4096)], rows
    assert all(r["verified"] for r in rows if r["status"] == "ok")
    assert "repeat 1, 4096 B, mpi_tcp: no result" in err and "== mpi_tcp: skipped (" in err, err


@pytest.mark.slow  # a benchmark tool, run by `pytest -m slow` (CI runs both)
def test_peer_harness_stops_a_peer_past_its_timeout(tmp_path):
    """A peer still running at --peer-timeout is stopped with all its processes, and the run
    records it as failed with the reason instead of waiting for it. The peer here is a launcher
    that never ends, with a child of its own (RINGDIST_LAUNCH)."""
    import os
    import time
    from pathlib import Path

    from helpers import descendants, kill_tree, wait_until_gone

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "run.py"
    env = {k: v for k, v in os.environ.items() if k not in ("PEERS", "SIZES", "COLLECTIVES", "RINGDIST_LAUNCH")}
    env.update(RINGDIST_PYTHON=sys.executable, RINGDIST_LAUNCH="sh -c 'sleep 600 & exec sleep 601'")
    proc = subprocess.Popen([sys.executable, str(script), "2", "--peers", "ringdist_ring", "--sizes", "4K",
                             "--peer-timeout", "3", "--results", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        seen: set[int] = set()
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(descendants(proc.pid))
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=60)
    finally:
        kill_tree(proc)
    assert proc.returncode == 1, out
    assert len(seen) >= 2, f"the peer's processes were not seen: {seen}"
    assert wait_until_gone(sorted(seen), timeout=5) == []
    lines = [json.loads(line) for line in (tmp_path / "peers-N2.jsonl").read_text().splitlines()]
    assert [(r["peer"], r["status"]) for r in lines] == [("ringdist_ring", "failed")], lines
    assert lines[0]["reason"].startswith("timed out after 3 s") and lines[0]["log"].endswith("N2-ringdist_ring.log")
    assert "| ringdist_ring | 2 | failed |" in (tmp_path / "peers-N2.md").read_text()


@pytest.mark.slow  # a benchmark tool, run by `pytest -m slow` (CI runs both)
def test_peer_loop_marks_a_wrong_output(tmp_path):
    """A peer whose rank 1 returns a wrong all_sum: the row says wrong_result, verified false,
    names the rank and the element, and the worker exits non-zero."""
    from pathlib import Path

    from helpers import run_launcher

    peers = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"
    worker = tmp_path / "off_by_one_worker.py"
    worker.write_text(f"""import sys
sys.path.insert(0, {str(peers)!r})
import loop
from ringdist_worker import Ringdist

class OffByOne(Ringdist):
    def all_sum(self, x):
        y = super().all_sum(x)
        if self.rank == 1:
            y[3] += 1
        return y

loop.main(OffByOne)
""")
    out = tmp_path / "rows.jsonl"
    res = run_launcher(["-n", "2", str(worker), "--out", str(out), "--sizes", "4096", "--collectives", "all_gather,all_sum",
                        "--target-time", "0.05", "--max-time", "1"], timeout=120)
    assert res.returncode != 0, res.stdout + res.stderr
    rows = {r["collective"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["all_gather"]["verified"] is True and rows["all_gather"]["status"] == "ok"
    bad = rows["all_sum"]
    assert bad["verified"] is False and bad["status"] == "wrong_result", bad
    assert bad["error"] == "all_sum: wrong output on rank(s) [1], first wrong element 3 on rank 1", bad


def test_break_chain_times_a_break_reaching_a_chain_of_receives():
    """benchmarks/break_chain.py: every waiting rank of a 3-rank chain hears rank 0's break; the
    tool prints the seconds to the first and the last (a failure to hear fails the tool)."""
    import re
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "break_chain.py"
    res = subprocess.run([sys.executable, str(script), "-n", "3", "--repeats", "1"],
                         capture_output=True, text=True, timeout=120, start_new_session=True)
    assert res.returncode == 0, res.stdout + res.stderr
    row = re.search(r"n=  3  first rank +([0-9.]+) s  last rank +([0-9.]+) s  \(1 runs\)", res.stdout)
    assert row is not None, res.stdout
    assert 0 < float(row.group(1)) <= float(row.group(2)) < 120, res.stdout
