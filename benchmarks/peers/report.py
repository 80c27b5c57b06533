"""Markdown tables from peers-N*.jsonl files (run.py's rows and status lines).

usage: python benchmarks/peers/report.py results/peers-N2.jsonl [more.jsonl ...]   (prints to stdout)

Per N and collective: median time per call, busbw, and the spread (min - p90, timed calls)
for each peer and size; one table for the barrier; a table of the peers that ran, were
skipped or failed. Rows whose output was wrong are marked WRONG. Only the standard library.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

ORDER = ("ringdist_ring", "mlx_ring", "torch_gloo", "mpi_tcp", "mpi_shm")


def size_label(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def duration(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:.1f} µs"
    return f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.3f} s"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return platform.processor() or "?"


def load(paths) -> list[dict]:
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def _table(head: list[str], body: list[list[str]], right: bool = True) -> list[str]:
    align = "---:|" if right else "---|"
    return ["| " + " | ".join(head) + " |", "|---|" + align * (len(head) - 1),
            *("| " + " | ".join(cells) + " |" for cells in body), ""]


def markdown(paths) -> str:
    records = load(paths)
    rows = [r for r in records if "collective" in r and r.get("status") in ("ok", "wrong_result")]
    notes = [r for r in records if r.get("status") in ("skipped", "failed")]
    ns = sorted({r["n_ranks"] for r in records if "n_ranks" in r})
    peers = sorted({r["peer"] for r in records}, key=lambda p: (ORDER.index(p) if p in ORDER else len(ORDER), p))
    md = [f"# Peer collectives on one host, N = {', '.join(map(str, ns))}", "",
          f"- host {platform.node()}: {os.cpu_count()} logical CPUs ({cpu_model()}), kernel {platform.release()}",
          f"- from {', '.join(os.path.basename(str(p)) for p in paths)}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
          "- float32; time = median over the timed calls of the slowest rank's time for the call, with a "
          "barrier before every call outside the timing",
          "- busbw (GB/s = 1e9 B/s): all_gather N·size/time·(N−1)/N, all_sum size/time·2(N−1)/N, "
          "all_to_all size/time·(N−1)/N; gather (root 0) as all_gather, scatter (root 0) as all_to_all, "
          "reduce (sum to root 0) size/time",
          "- the whole output of the first and the last call was checked on every rank; WRONG marks a row that "
          "failed the check", ""]

    body = []
    for peer in peers:
        for n in ns:
            mine = [r for r in rows if r["peer"] == peer and r["n_ranks"] == n]
            note = next((r for r in notes if r["peer"] == peer and r["n_ranks"] == n), None)
            if not mine and not note:
                continue
            wrong = sum(not r.get("verified") for r in mine)
            state = (f"{len(mine)} rows" + (f", {wrong} WRONG" if wrong else "")) if mine else ""
            if note:
                state = "; ".join(s for s in (state, note["status"]) if s)
            first = mine[0] if mine else {}
            body.append([peer, str(n), state, first.get("version", ""), first.get("launcher", ""),
                         first.get("transport", ""), note.get("reason", "") if note else ""])
    md += ["## Peers", ""] + _table(["peer", "N", "status", "version", "launcher", "transport", "note"], body, False)

    for n in ns:
        for collective in ("all_gather", "all_sum", "all_to_all", "gather", "scatter", "reduce"):
            these = {(r["peer"], r["bytes_per_rank"]): r for r in rows
                     if r["n_ranks"] == n and r["collective"] == collective}
            if not these:
                continue
            cols = [p for p in peers if any(key[0] == p for key in these)]
            sizes = sorted({key[1] for key in these})

            def grid(cell):
                return [[size_label(s)] + ["–" if (p, s) not in these else cell(these[(p, s)]) for p in cols]
                        for s in sizes]

            def flag(r):
                return "" if r.get("verified") else " WRONG"

            output = ("N × the input" if collective in ("all_gather", "gather") else
                      "the input's size, N blocks" if collective in ("all_to_all", "scatter") else "the input's size")
            md += [f"## {collective}, N = {n} (size: per-rank input; output: {output})", "", "Median time per call", ""]
            md += _table(["size", *cols], grid(lambda r: duration(r["time_s"]) + flag(r)))
            md += ["busbw, GB/s", ""]
            md += _table(["size", *cols], grid(lambda r: f"{r['busbw_GBps']:.3f}" + flag(r)))
            md += ["Spread: min – p90 of the per-call times (timed calls)", ""]
            md += _table(["size", *cols], grid(lambda r: f"{duration(r['time_s_min'])} – "
                                                         f"{duration(r['time_s_p90'])} ({r['iters']})"), False)
        barriers = [r for r in rows if r["n_ranks"] == n and r["collective"] == "barrier"]
        if barriers:
            barriers.sort(key=lambda r: (ORDER.index(r["peer"]) if r["peer"] in ORDER else len(ORDER), r["peer"]))
            md += [f"## barrier, N = {n}", ""]
            md += _table(["peer", "median", "min – p90", "timed calls"],
                         [[r["peer"], duration(r["time_s"]), f"{duration(r['time_s_min'])} – {duration(r['time_s_p90'])}",
                           str(r["iters"])] for r in barriers])
    return "\n".join(md).rstrip() + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: report.py FILE.jsonl [FILE.jsonl ...]")
    sys.stdout.write(markdown(sys.argv[1:]))
