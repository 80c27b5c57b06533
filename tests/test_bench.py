"""ringdist-bench runs under the launcher and reports one row per size (speed is not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


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


def test_alternate_compares_two_values_call_by_call():
    import re
    from pathlib import Path

    from helpers import run_launcher

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "alternate.py"
    res = run_launcher(["-n", "2", str(script), "1048576", "all_sum", "ringdist.collectives.PAIR_EXCHANGE_MAX",
                        "0", "2<<20", "--calls", "20", "--warmup", "4"], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    line = re.search(r"^\[0\] all_sum 1048576 B on 2 ranks, ringdist\.collectives\.PAIR_EXCHANGE_MAX: "
                     r"0: median ([\d.]+) µs .* \| 2<<20: median ([\d.]+) µs .* \| B/A ([\d.]+) \(10 calls each\)$",
                     res.stdout, re.M)
    assert line, res.stdout
    a, b, ratio = (float(v) for v in line.groups())
    assert a > 0 and b > 0 and abs(ratio - b / a) < 0.01
    bad = run_launcher(["-n", "2", str(script), "4096", "all_sum", "group.no_such_thing", "0", "1"], timeout=60)
    assert bad.returncode != 0 and "group.no_such_thing: no such attribute" in bad.stdout + bad.stderr
