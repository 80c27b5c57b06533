"""Compare two values of a tunable call by call, in one run: an A/B test that noise cannot split.

usage: ringdist-launch -n N benchmarks/alternate.py SIZE OP TARGET A B [--calls K]

TARGET is `module.NAME` (e.g. `ringdist.tuning.PAIR_EXCHANGE_MAX`) or `group.NAME`
(an attribute of the world group, e.g. `group.direct_max` or `group.both_ways`); A and B are
Python literals (`0`, `"64<<20"`, `True`). Every rank sets TARGET to A before even calls and
to B before odd ones, so both variants see the same moments of a shared machine; a
barrier precedes each call, and a call's time is that of its slowest rank. Prints the
median and quartiles of each variant and the ratio of medians B/A (below 1: B faster).

On this project's shared 2-core VMs, separate runs of the same code differ by up to 2x
minutes apart; alternating call by call, the same comparison repeats within a few percent.
Compare variants that use the same connections. Between the direct path's connection and
the ring's (RINGDIST_DIRECT_MAX on two ranks) alternation favoured the direct path at 1 MiB
by 7-8%, while separate launches measured it 13% slower: check such choices in separate
launches, several of each, taking turns.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import time

import numpy as np

import ringdist as rd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", type=int, help="bytes per rank (float32 elements)")
    parser.add_argument("op", choices=["all_gather", "all_sum", "all_max", "all_min", "sum_scatter", "all_to_all", "reduce",
                                       "exscan"])
    parser.add_argument("target", help="module.NAME or group.NAME")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--calls", type=int, default=0, help="timed calls (default: about 20 s of data moved)")
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    g = rd.init()
    owner_name, attr = args.target.rsplit(".", 1)
    owner = g if owner_name == "group" else importlib.import_module(owner_name)
    if not hasattr(owner, attr):
        raise SystemExit(f"{args.target}: no such attribute")
    values = [_literal(args.a), _literal(args.b)]
    x = np.ones(max(args.size // 4 // g.size(), 1) * g.size(), np.float32)  # rows divisible by N
    op = (lambda x: rd.scan(x, exclusive=True)) if args.op == "exscan" else getattr(rd, args.op)
    calls = args.calls or max(20, min(2000, int(40e9 / max(args.size * g.size(), 1)) // 2 * 2))
    for i in range(args.warmup):
        setattr(owner, attr, values[i % 2])
        g.choices.clear()  # the group remembers the tuning table's answers: ask it again
        rd.barrier()
        op(x)
    times = np.empty(calls)
    for i in range(calls):
        setattr(owner, attr, values[i % 2])
        g.choices.clear()
        rd.barrier()
        t0 = time.perf_counter()
        op(x)
        times[i] = time.perf_counter() - t0
    slowest = rd.all_gather(times.reshape(1, -1)).reshape(g.size(), calls).max(axis=0) * 1e6
    if g.rank() == 0:
        a, b = slowest[0::2], slowest[1::2]
        quart = [np.percentile(v, [25, 50, 75]) for v in (a, b)]
        print(f"{args.op} {args.size} B on {g.size()} ranks, {args.target}: "
              f"{args.a}: median {quart[0][1]:.0f} µs (p25 {quart[0][0]:.0f}, p75 {quart[0][2]:.0f}) | "
              f"{args.b}: median {quart[1][1]:.0f} µs (p25 {quart[1][0]:.0f}, p75 {quart[1][2]:.0f}) | "
              f"B/A {quart[1][1] / quart[0][1]:.3f} ({len(a)} calls each)", flush=True)


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return eval(text, {"__builtins__": {}})  # simple arithmetic such as 64<<20


if __name__ == "__main__":
    main()
