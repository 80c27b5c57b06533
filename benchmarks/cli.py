"""ringdist-bench: time one collective over a range of sizes, one row per size.

    ringdist-bench -n 4 -o all_gather -b 4K -e 64M          # launches itself with ringdist-launch
    ringdist-launch -n 4 -m ringdist_bench -o all_sum -b 1M -e 64M -f 4 --json out.jsonl

Sizes are per-rank input bytes (float32). Each size: warm-up calls, then timed calls with a
barrier before each; a call's time is the slowest rank's; the row shows the median. algbw
and busbw follow nccl-tests: all_gather busbw = algbw * (N-1)/N with algbw = N*size/time;
all_sum busbw = algbw * 2(N-1)/N with algbw = size/time. all_to_all: busbw = algbw * (N-1)/N,
algbw = size/time. gather, scatter (the root's x is N*size) and all_gather_object (a dict of
16 arrays, size bytes in all) as all_gather; reduce as broadcast (busbw = algbw = size/time).
"""

from __future__ import annotations

import argparse
import os
import sys

OPS = ("all_gather", "all_sum", "all_max", "all_min", "all_prod", "sum_scatter", "broadcast",
       "all_to_all", "gather", "scatter", "reduce", "all_gather_object")
UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
         "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def parse_size(text: str) -> int:
    """'4K' -> 4096, '64M' -> 67108864, '100' -> 100."""
    t = text.strip().upper()
    digits = t.rstrip("BKMGI")
    unit = t[len(digits):]
    if not digits.isdigit() or unit not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 4K, 64M)")
    return int(digits) * UNITS[unit]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringdist-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--nranks", type=int, help="launch N local ranks (when not already launched)")
    p.add_argument("-o", "--op", choices=OPS, default="all_gather")
    p.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("4K"))
    p.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("64M"))
    p.add_argument("-f", "--stepfactor", type=int, default=4, help="multiply the size by this each row")
    p.add_argument("-w", "--warmup", type=int, default=3, help="warm-up calls per size")
    p.add_argument("-t", "--time", type=float, default=0.5, help="seconds of timed calls per size (target)")
    p.add_argument("--iters", type=int, help="timed calls per size (instead of --time)")
    p.add_argument("--json", metavar="FILE", help="append one JSON line per size to FILE (rank 0)")
    p.add_argument("--plot", metavar="FILE.png", help="draw busbw against size (needs matplotlib)")
    p.add_argument("--check", action="store_true", help="verify every output (slower)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if "RINGDIST_RANK" not in os.environ and args.nranks:
        rest = list(sys.argv[1:] if argv is None else argv)
        os.execv(sys.executable, [sys.executable, "-m", "ringdist_launch", "-n", str(args.nranks),
                                  "-m", "ringdist_bench", *rest])
    from .runner import run

    rows = run(args)
    if rows and args.plot:
        from .plot import plot

        plot(rows, args.plot)
    return 0
