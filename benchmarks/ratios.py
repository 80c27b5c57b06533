"""ringdist / peer ratios from the peer harness's JSONL files (benchmarks/peers/), one column per run.

usage: python benchmarks/ratios.py [--peer mpi_tcp] RUN [RUN ...]

A RUN is a results folder of `benchmarks/peers/run.py` (its peers-N*.jsonl files) or one JSONL file.
Rows that carry a "source" (a file that gathers several runs, as in benchmarks/results/) are
one run per source; `--source PREFIX` keeps only the sources that start with it.

busbw ratio (ringdist / peer, above 1: ringdist faster) for every size, and for 4 KiB the
time ratio (ringdist / peer, below 1: ringdist faster): latency matters there, not bandwidth.
With several runs, the last column is the median over the runs that have the row.
"""
import argparse
import glob
import json
import os
import statistics
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", default="mpi_tcp")
    parser.add_argument("--source", default="", help="only rows whose source starts with this")
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    runs: dict[str, dict] = {}  # run name -> (n, collective, size) -> peer -> row
    for path in args.runs:
        files = sorted(glob.glob(os.path.join(path, "peers-N*.jsonl"))) if os.path.isdir(path) else [path]
        for name in files:
            with open(name) as f:
                for line in f:
                    r = json.loads(line)
                    source = r.get("source")
                    if r.get("status") != "ok" or (source is not None and not source.startswith(args.source)):
                        continue
                    run = runs.setdefault(path if source is None else f"{path}:{source}", defaultdict(dict))
                    run[(r["n_ranks"], r["collective"], r["bytes_per_rank"])][r["peer"]] = r
    table = defaultdict(dict)  # (n, collective, size) -> run index -> ratio
    for index, rows in enumerate(runs.values()):
        for key, peers in rows.items():
            mine, theirs = peers.get("ringdist_ring"), peers.get(args.peer)
            if mine and theirs:
                if key[2] <= 4096:
                    table[key][index] = ("time", mine["time_s"] / theirs["time_s"])
                else:
                    table[key][index] = ("busbw", mine["busbw_GBps"] / theirs["busbw_GBps"])
    names = list(runs)
    several = len(names) > 1
    for i, name in enumerate(names):
        print(f"run {i + 1}: {name}")
    print(f"| N | collective | size | ratio to {args.peer} | " + " | ".join(f"run {i + 1}" for i in range(len(names)))
          + (" | median |" if several else " |"))
    print("|---|---|---|---|" + "---|" * (len(names) + several))
    for (n, coll, size), cells in sorted(table.items()):
        kind = next(iter(cells.values()))[0]
        values = " | ".join(f"{cells[i][1]:.2f}" if i in cells else "-" for i in range(len(names)))
        if several:
            values += f" | {statistics.median(v for _, v in cells.values()):.2f}"
        print(f"| {n} | {coll} | {size} | {kind} | {values} |")


if __name__ == "__main__":
    main()
