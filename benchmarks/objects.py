"""all_gather_object of a dict of numpy arrays against all_gather of the same bytes, call by
call in one run (the two alternate, so both see the same moments of a shared machine).

usage: ringdist-launch -n N benchmarks/objects.py [SIZE_BYTES] [--parts P] [--calls K] [--broadcast]

Each rank's dict holds P float32 arrays of SIZE_BYTES in all (default 1 MB, 16 arrays);
the array variant gathers one float32 array of SIZE_BYTES. A barrier precedes each call; a
call's time is its slowest rank's. Prints the median and quartiles of each and the ratio of
medians object/array. `--broadcast`: rank 0's dict by `broadcast_object`, through the table's
row (shared memory on one machine) against the direct path's (the root sending N-1 copies).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ringdist as rd
from ringdist import tuning


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("size", nargs="?", type=int, default=1_000_000)
    p.add_argument("--parts", type=int, default=16)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--broadcast", action="store_true")
    args = p.parse_args()
    g = rd.init()
    x = np.arange(args.size // 4, dtype=np.float32) + g.rank()
    obj = {f"a{i}": part.copy() for i, part in enumerate(np.array_split(x, args.parts))}
    variants = {"all_gather": lambda: rd.all_gather(x), "all_gather_object": lambda: rd.all_gather_object(obj)}
    if args.broadcast:
        sent = obj if g.rank() == 0 else None
        variants = {"table": lambda: rd.broadcast_object(sent), "direct": lambda: _direct(rd.broadcast_object, sent)}
    times = {name: [] for name in variants}
    for _ in range(5):
        for call in variants.values():
            call()
    for i in range(args.calls):
        for name, call in variants.items():
            rd.barrier()
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    slowest = {name: rd.all_max(np.array(t)) for name, t in times.items()}
    if g.rank() == 0:
        print(f"# N={g.size()} {args.size} bytes per rank, {args.parts} arrays, {args.calls} calls each, alternating")
        for name, t in slowest.items():
            q1, med, q3 = np.percentile(t, [25, 50, 75]) * 1e3
            print(f"{name:18} median {med:.3f} ms  quartiles {q1:.3f}-{q3:.3f} ms")
        first, second = slowest
        ratio = np.median(slowest[second]) / np.median(slowest[first])
        print(f"ratio {second}/{first} {ratio:.2f}")


def _direct(call, *args):
    """`call` with the table's choice for broadcast_object the direct path."""
    choose = tuning.choose
    tuning.choose = lambda c, name, nbytes, like=None: (  # type: ignore[assignment]
        tuning.ALGORITHMS["direct"] if name == "broadcast_object" else choose(c, name, nbytes, like))
    try:
        return call(*args)
    finally:
        tuning.choose = choose


if __name__ == "__main__":
    main()
