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
