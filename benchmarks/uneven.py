"""Uneven calls on one machine, two ways call by call in one run: what the shared-memory rows
gained, which noise cannot split.

usage: ringdist-launch -n N benchmarks/uneven.py SIZE OP [--calls K]

OP `all_gather`: `all_gather(x, uneven=True)`, rank r giving 2(r+1)/(N+1) of SIZE bytes,
through the table's row (A) against the row the table chose before (B: the direct path on
a mesh, else the same). OP `reduce_scatter`: `reduce_scatter(x, counts=...)` of SIZE bytes a
rank, rank r getting 2(r+1)/(N+1) of an N-th, through the algorithm's own reduce-scatter of
blocks of any lengths, or over TCP the all_to_all and fold in windows (A), against the all_to_all
and fold of whole blocks (B). A barrier precedes each call; a
call's time is its slowest rank's. Prints the medians and quartiles and B/A (over 1: A faster).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

import ringdist as rd
from ringdist import tuning
from ringdist.algorithms import ring


@contextlib.contextmanager
def _before(op: str, g: rd.Group):
    """Variant B for one call."""
    if op == "all_gather":
        choose = tuning.choose
        former = tuning.ALGORITHMS["direct" if g.mesh is not None else "shm"]
        tuning.choose = lambda c, name, nbytes, like=None: (  # type: ignore[assignment]
            former if name == "all_gather_uneven" else choose(c, name, nbytes, like))
        try:
            yield
        finally:
            tuning.choose = choose
        return
    algorithms = [a for a in tuning.ALGORITHMS.values() if a.reduce_scatter_v is not None]
    kept = [a.reduce_scatter_v for a in algorithms]
    window = ring.SCRATCH_WINDOW
    for a in algorithms:
        object.__setattr__(a, "reduce_scatter_v", None)
    ring.SCRATCH_WINDOW = 1 << 62  # the blocks exchanged whole
    try:
        yield
    finally:
        ring.SCRATCH_WINDOW = window
        for a, f in zip(algorithms, kept):
            object.__setattr__(a, "reduce_scatter_v", f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", type=int, help="bytes per rank (float32 elements)")
    parser.add_argument("op", choices=["all_gather", "reduce_scatter"])
    parser.add_argument("--calls", type=int, default=0, help="timed calls (default: about 20 s of data moved)")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    g = rd.init()
    n, r = g.size(), g.rank()
    count = max(args.size // 4, n)
    if args.op == "all_gather":
        x = np.full(count * 2 * (r + 1) // (n + 1), r, np.float32)
        call = lambda: rd.all_gather(x, uneven=True)  # noqa: E731
        want = np.repeat(np.arange(n, dtype=np.float32), [count * 2 * (q + 1) // (n + 1) for q in range(n)])
    else:
        x = np.full(count, r, np.float32)
        counts = [count * 2 * (q + 1) // (n + 1) // n for q in range(n)]
        counts[-1] += count - sum(counts)
        call = lambda: rd.reduce_scatter(x, counts=counts)  # noqa: E731
        want = np.full(counts[r], n * (n - 1) / 2, np.float32)
    calls = args.calls or max(20, min(2000, int(40e9 / max(args.size * n, 1)) // 2 * 2))
    times = np.empty(calls)
    for i in range(args.warmup + calls):
        with _before(args.op, g) if i % 2 else contextlib.nullcontext():
            rd.barrier()
            t0 = time.perf_counter()
            got = call()
            took = time.perf_counter() - t0
        if i < 2 and not np.array_equal(got, want):  # each variant's first result
            raise SystemExit(f"rank {r}: variant {'AB'[i]} gave a wrong result")
        if i >= args.warmup:
            times[i - args.warmup] = took
    slowest = rd.all_gather(times.reshape(1, -1)).reshape(n, calls).max(axis=0) * 1e6
    if r == 0:
        a, b = slowest[0::2], slowest[1::2]
        quart = [np.percentile(v, [25, 50, 75]) for v in (a, b)]
        print(f"uneven {args.op} {args.size} B on {n} ranks: A median {quart[0][1]:.0f} µs (p25 {quart[0][0]:.0f}, "
              f"p75 {quart[0][2]:.0f}) | B median {quart[1][1]:.0f} µs (p25 {quart[1][0]:.0f}, p75 {quart[1][2]:.0f}) "
              f"| B/A {quart[1][1] / quart[0][1]:.2f} ({len(a)} calls each)", flush=True)


if __name__ == "__main__":
    main()
