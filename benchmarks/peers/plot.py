"""Plots of the peer harness's rows: 4 KiB time against N, and busbw against size per N.

usage: python benchmarks/peers/plot.py OUT_DIR FILE.jsonl [FILE.jsonl ...] [--peers a,b] [--title T]

Reads every `status: ok` row of the files (`run.py`'s peers-N*.jsonl, or a results file that
gathers several runs); where a (peer, collective, N, size) has several rows, the median is
plotted. Writes two PNG files into OUT_DIR:

- `time-4K.png`: median call time at 4 KiB per rank against N, one panel per collective
  (barrier included), one line per peer, log scale;
- `busbw.png`: busbw against per-rank size, a row of panels per collective (all_gather,
  all_sum) and a column per N, one line per peer.

Needs matplotlib (`pip install 'ringdist[plot]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict

COLLECTIVES = ("all_gather", "all_sum", "barrier")
BANDWIDTH = ("all_gather", "all_sum")
SMALL = 4096


def load(paths: list[str], peers: set[str] | None) -> dict[tuple, list[dict]]:
    """(peer, collective, n, bytes per rank) -> rows."""
    rows: dict[tuple, list[dict]] = defaultdict(list)
    for path in paths:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("status") != "ok" or (peers and r["peer"] not in peers):
                    continue
                rows[(r["peer"], r["collective"], r["n_ranks"], r["bytes_per_rank"])].append(r)
    return rows


def median(rows: list[dict], field: str) -> float:
    return statistics.median(r[field] for r in rows)


def size_label(n: int) -> str:
    for unit, shift in (("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _save(plt, fig, axes, args, name: str, legend_size: int) -> None:
    """Legend on the first panel, the title, then the figure written to `args.out`/`name`."""
    axes[0][0].legend(fontsize=legend_size)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, name), dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("files", nargs="+")
    p.add_argument("--peers", default="", help="comma separated (default: every peer in the files)")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot.py needs matplotlib: pip install 'ringdist[plot]'") from None
    rows = load(args.files, set(args.peers.split(",")) if args.peers else None)
    if not rows:
        raise SystemExit("no rows with status ok in " + ", ".join(args.files))
    os.makedirs(args.out, exist_ok=True)
    peers = sorted({k[0] for k in rows})
    ns = sorted({k[2] for k in rows})

    fig, axes = plt.subplots(1, len(COLLECTIVES), figsize=(4.2 * len(COLLECTIVES), 3.6), squeeze=False)
    for ax, coll in zip(axes[0], COLLECTIVES):
        size = 0 if coll == "barrier" else SMALL  # a barrier's rows carry no bytes
        for peer in peers:
            points = [(n, median(rows[(peer, coll, n, size)], "time_s") * 1e6) for n in ns
                      if (peer, coll, n, size) in rows]
            if points:
                ax.plot(*zip(*points), marker="o", label=peer)
        ax.set_yscale("log")
        ax.set_xticks(ns)
        ax.set_xlabel("ranks")
        ax.set_ylabel("median call time (µs)")
        ax.set_title(coll if coll == "barrier" else f"{coll}, 4 KiB per rank")
        ax.grid(True, alpha=0.3)
    _save(plt, fig, axes, args, "time-4K.png", 8)

    big = [n for n in ns if len({k[3] for k in rows if k[2] == n and k[3] > SMALL and k[1] in BANDWIDTH}) > 1]
    if not big:
        return 0
    fig, axes = plt.subplots(len(BANDWIDTH), len(big), figsize=(3.4 * len(big), 3.0 * len(BANDWIDTH)),
                             squeeze=False, sharey="row")
    for i, coll in enumerate(BANDWIDTH):
        for j, n in enumerate(big):
            ax = axes[i][j]
            ax.set_xscale("log", base=2)
            for peer in peers:
                sizes = sorted(k[3] for k in rows if k[:3] == (peer, coll, n) and k[3] > SMALL)
                if sizes:
                    ax.plot(sizes, [median(rows[(peer, coll, n, s)], "busbw_GBps") for s in sizes],
                            marker="o", label=peer)
                    ax.set_xticks(sizes, [size_label(s) for s in sizes])
                    ax.minorticks_off()
            ax.set_title(f"{coll}, {n} ranks", fontsize=9)
            ax.grid(True, alpha=0.3)
            if j == 0:
                ax.set_ylabel("busbw (GB/s)")
            if i == len(BANDWIDTH) - 1:
                ax.set_xlabel("bytes per rank")
    _save(plt, fig, axes, args, "busbw.png", 7)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
