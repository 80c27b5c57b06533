"""The measurement loop of ringdist-bench (runs on every rank)."""

from __future__ import annotations

import json
import math
import statistics
import time
from typing import Any

import numpy as np

import ringdist as rd


def _bus_factor(op: str, n: int) -> tuple[float, float]:
    """(bytes moved per call relative to the input, busbw factor), as nccl-tests define them."""
    if op in ("all_gather", "gather", "scatter", "all_gather_object"):
        return n, (n - 1) / n
    if op == "all_to_all":
        return 1, (n - 1) / n
    if op in ("all_sum", "all_max", "all_min", "all_prod"):
        return 1, 2 * (n - 1) / n
    if op == "sum_scatter":
        return 1, (n - 1) / n
    return 1, 1.0  # broadcast, reduce

OBJECT_PARTS = 16  # arrays in all_gather_object's dict


def _call(op: str, x: np.ndarray) -> np.ndarray:
    if op == "broadcast":
        return rd.broadcast(x, root=0)
    if op == "scatter":
        return rd.scatter(x, root=0)
    if op in ("gather", "reduce"):
        y = getattr(rd, op)(x, root=0)
        return x if y is None else y  # only the root's result is checked
    if op == "all_gather_object":  # the dict is made outside the timed call (_input)
        return rd.all_gather_object(x)
    return getattr(rd, op)(x)


def _input(op: str, x: np.ndarray) -> Any:
    """What a rank passes, made once per size."""
    if op == "scatter":  # the root cuts its x into N blocks of x's size
        g = rd.init()
        return np.tile(x, g.size()) if g.rank() == 0 else None
    if op == "all_gather_object":
        return {f"a{i}": part for i, part in enumerate(np.array_split(x, OBJECT_PARTS))}
    return x


def _flat(op: str, y: Any) -> np.ndarray:
    """A result as one flat array, to check."""
    if op == "all_gather_object":
        return np.concatenate([np.concatenate([d[f"a{i}"] for i in range(OBJECT_PARTS)]) for d in y])
    return y.reshape(-1)


def _expected(op: str, size: int, n: int, r: int) -> np.ndarray:
    base = lambda q: (np.arange(size, dtype=np.float32) % 251) + 256 * q  # noqa: E731 - exact sums
    if op in ("all_gather", "all_gather_object") or (op == "gather" and r == 0):
        return np.concatenate([base(q) for q in range(n)])
    if op in ("gather", "reduce") and r != 0:
        return base(r)
    if op == "all_to_all":
        c = size // n
        return np.concatenate([base(q)[r * c:(r + 1) * c] for q in range(n)])
    if op == "scatter":
        return base(0)
    if op in ("all_sum", "reduce"):
        return sum(base(q) for q in range(n))
    if op == "all_max":
        return base(n - 1)
    if op == "all_min":
        return base(0)
    if op == "sum_scatter":
        c = size // n
        return sum(base(q) for q in range(n))[r * c:(r + 1) * c]
    if op == "broadcast":
        return base(0)
    return np.prod([base(q) for q in range(n)], axis=0, dtype=np.float32)


def run(args: Any) -> list[dict]:
    g = rd.init()
    r, n = g.rank(), g.size()
    rows = []
    size = args.minbytes
    if r == 0:
        print(f"# ringdist-bench  op {args.op}  ranks {n}  dtype float32  (size = per-rank input)", flush=True)
        print(f"# {'size':>10} {'count':>10} {'time':>12} {'algbw GB/s':>11} {'busbw GB/s':>11} {'iters':>6}",
              flush=True)
    while size <= args.maxbytes:
        count = max(1, size // 4)
        if args.op in ("sum_scatter", "all_to_all"):
            count -= count % n or 0
            count = max(count, n)
        x = _input(args.op, (np.arange(count, dtype=np.float32) % 251) + 256 * r)
        for _ in range(max(1, args.warmup)):
            y = _call(args.op, x)
        if not np.array_equal(_flat(args.op, y), _expected(args.op, count, n, r)):
            raise SystemExit(f"rank {r}: wrong result for {args.op} at {count * 4} bytes")
        # agree on the iteration count from the warm-up estimate
        t0 = time.perf_counter()
        rd.barrier()
        _call(args.op, x)
        estimate = rd.all_max(np.array([time.perf_counter() - t0]))[0]
        iters = args.iters or int(min(2000, max(5, math.ceil(args.time / max(estimate, 1e-7)))))
        times = np.empty(iters)
        for i in range(iters):
            rd.barrier()
            t0 = time.perf_counter()
            y = _call(args.op, x)
            times[i] = time.perf_counter() - t0
            if args.check and not np.array_equal(_flat(args.op, y), _expected(args.op, count, n, r)):
                raise SystemExit(f"rank {r}: wrong result for {args.op} at {count * 4} bytes, call {i}")
        slowest = rd.all_max(times)
        t = float(statistics.median(slowest))
        moved, factor = _bus_factor(args.op, n)
        algbw = moved * count * 4 / t / 1e9
        row = {"op": args.op, "n_ranks": n, "bytes_per_rank": count * 4, "time_s": t, "algbw_GBps": algbw,
               "busbw_GBps": algbw * factor, "iters": iters, "time_s_min": float(slowest.min())}
        rows.append(row)
        if r == 0:
            shown = f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"
            print(f"  {count * 4:>10} {count:>10} {shown:>12} {algbw:>11.3f} {algbw * factor:>11.3f} {iters:>6}",
                  flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
        size *= args.stepfactor
    return rows if r == 0 else []
