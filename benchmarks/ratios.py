"""ringdist / peer ratios from the peer harness's JSONL files (benchmarks/peers/), one column per run.

usage: python benchmarks/ratios.py [--peer mpi_tcp] RUN [RUN ...]

A RUN is a results folder of `benchmarks/peers/run.py` (its peers-N*.jsonl files) or one JSONL file.

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
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    table = defaultdict(dict)  # (n, collective, size) -> run index -> ratio
    for index, path in enumerate(args.runs):
        rows = defaultdict(dict)
        files = sorted(glob.glob(os.path.join(path, "peers-N*.jsonl"))) if os.path.isdir(path) else [path]
        for name in files:
            with open(name) as f:
                for line in f:
                    r = json.loads(line)
                    if r.get("status") == "ok":
                        rows[(r["n_ranks"], r["collective"], r["bytes_per_rank"])][r["peer"]] = r
        for key, peers in rows.items():
            mine, theirs = peers.get("ringdist_ring"), peers.get(args.peer)
            if mine and theirs:
                if key[2] <= 4096:
                    table[key][index] = ("time", mine["time_s"] / theirs["time_s"])
                else:
                    table[key][index] = ("busbw", mine["busbw_GBps"] / theirs["busbw_GBps"])
    several = len(args.runs) > 1
    print(f"| N | collective | size | ratio to {args.peer} | " + " | ".join(f"run {i + 1}" for i in range(len(args.runs)))
          + (" | median |" if several else " |"))
    print("|---|---|---|---|" + "---|" * (len(args.runs) + several))
    for (n, coll, size), cells in sorted(table.items()):
        kind = next(iter(cells.values()))[0]
        values = " | ".join(f"{cells[i][1]:.2f}" if i in cells else "-" for i in range(len(args.runs)))
        if several:
            values += f" | {statistics.median(v for _, v in cells.values()):.2f}"
        print(f"| {n} | {coll} | {size} | {kind} | {values} |")


if __name__ == "__main__":
    main()
