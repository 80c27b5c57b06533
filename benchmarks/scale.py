"""Small collectives across group sizes: the latency a call costs, algorithms alternating.

usage: ringdist-launch -n N benchmarks/scale.py OP[,OP...] SIZE[,SIZE...] [--algos A,B,...]
           [--calls K] [--fresh] [--json FILE]

OP is all_gather, all_gather_uneven, all_gather_object, gather, all_sum, sum_scatter, all_to_all, all_to_all_splits (all_to_all's
blocks, passed as splits), scatter, broadcast or barrier; SIZE bytes per rank (sum_scatter, all_to_all
and scatter: per block, N blocks a rank, the root's for scatter)
(float32 elements; ignored by barrier). With --algos the named algorithms take turns call
by call (RINGDIST_ALGO set for that op on every rank before each call; `table`: the tuning
table's choice), so every variant meets the same moments of a shared machine; without it
the tuning table chooses. With --fresh every rank rewrites its input before each call (untimed),
as a program's new data would be, so no peer finds it still in its cache from the last call. A
barrier precedes each call; a call's time is its slowest rank's. Prints, per (op, size,
algorithm), the median and quartiles in microseconds; rank 0 appends them to FILE as JSON
lines. Also prints the seconds from this rank's `init()` to the end of its first barrier
(slowest rank) and the sockets each rank holds at the end (from /proc/self/fd).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import stat
import time

import numpy as np

import ringdist as rd


def sockets() -> int:
    """Open sockets of this process."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.stat(f"/proc/self/fd/{fd}").st_mode):
                count += 1
        except FileNotFoundError:
            continue
    return count


OP_OF = {"all_to_all_splits": "all_to_all"}  # the op RINGDIST_ALGO names


def call(op: str, x: np.ndarray, g) -> None:
    if op == "barrier":
        rd.barrier(group=g)
    elif op == "broadcast":
        rd.broadcast(x, root=0, group=g)
    elif op == "scatter":
        rd.scatter(x, root=0, group=g)
    elif op == "gather":
        rd.gather(x, root=0, group=g)
    elif op == "all_gather_uneven":  # all_gather's rows, declared uneven
        rd.all_gather(x, uneven=True, group=g)
    elif op == "all_gather_object":  # the array, pickled
        rd.all_gather_object(x, group=g)
    elif op == "all_to_all_splits":  # the same bytes as all_to_all, declared as splits
        rd.all_to_all(x, splits=[len(x) // g.size()] * g.size(), group=g)
    else:
        getattr(rd, op)(x, group=g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ops")
    p.add_argument("sizes")
    p.add_argument("--algos", default="")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--fresh", action="store_true", help="rewrite the input before each call (untimed)")
    p.add_argument("--json")
    args = p.parse_args()
    t0 = time.perf_counter()
    g = rd.init()
    rd.barrier(group=g)
    startup = time.perf_counter() - t0
    n, r = g.size(), g.rank()
    base = g.settings
    names = [None if a == "table" else a for a in args.algos.split(",") if a] or [None]
    rows = []
    for op in args.ops.split(","):
        for size in ([1] if op == "barrier" else [int(s) for s in args.sizes.split(",")]):
            elements = max(size // 4, 1) * (n if op in ("sum_scatter", "all_to_all", "all_to_all_splits",
                                                         "scatter") else 1)
            x = np.ones(elements, np.float32)
            times = np.empty((len(names), args.calls))
            for i in range(args.warmup + args.calls * len(names)):
                which = i % len(names)
                name = names[which]
                if args.fresh:
                    x.fill(1 + i % 3)
                rd.barrier(group=g)
                g.settings = base if name is None else dataclasses.replace(base, algo=((OP_OF.get(op, op), name),))
                g.choices.clear()
                start = time.perf_counter()
                call(op, x, g)
                if i >= args.warmup:
                    times[which, (i - args.warmup) // len(names)] = time.perf_counter() - start
                g.settings = base
                g.choices.clear()
            slowest = rd.all_gather(times[None], group=g).max(axis=0)
            for which, name in enumerate(names):
                q1, med, q3 = np.percentile(slowest[which], [25, 50, 75]) * 1e6
                rows.append({"n": n, "op": op, "bytes": size, "algorithm": name or "table", "fresh": args.fresh,
                             "median_us": round(med, 1), "q1_us": round(q1, 1), "q3_us": round(q3, 1),
                             "calls": args.calls})
    start_max = float(rd.all_gather(np.array([startup]), group=g).max())
    socks = rd.all_gather(np.array([sockets()]), group=g)
    if r == 0:
        for row in rows:
            print(f"N={row['n']} {row['op']} {row['bytes']} B {row['algorithm']}: median {row['median_us']} us "
                  f"[{row['q1_us']}, {row['q3_us']}]")
        print(f"N={n} init+first barrier (slowest rank): {start_max:.3f} s; sockets per rank: "
              f"min {socks.min()} max {socks.max()}")
        if args.json:
            with open(args.json, "a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
                f.write(json.dumps({"n": n, "init_first_barrier_s": round(start_max, 4),
                                    "sockets_min": int(socks.min()), "sockets_max": int(socks.max())}) + "\n")
    rd.barrier(group=g)


if __name__ == "__main__":
    main()
