"""The measurement every peer goes through, and the JSON line it ends in.

A peer is a small adapter class (see `Adapter`) in its own module; the module ends with
`loop.main(ThatAdapter)` and is started on every rank by the peer's own launcher. Only
numpy is needed here, so this file runs in any peer's interpreter.

Per collective and per-rank size (see README.md in this folder for the full rule):
input `(arange(n) % 251) + 256*rank` as float32, so every sum is exact (all_to_all: N blocks,
block j `(arange(n/N) % 251) + 256*(N*rank + j)`, each one distinguishable; scatter: root 0's
all_to_all input; gather, scatter and reduce have root 0); one warm-up call
whose whole output is checked; calibration batches of 1, 4, 16, 64 calls until one lasts
`calib_time`; then `clamp(ceil(target_time / estimate), min_iters, max_iters)` timed calls,
each `barrier(); t0; op(); t1`, stopped early by agreement once `max_time` has passed; the
last output is checked again; a call's time is its slowest rank's, the row's the median.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import sys
import time

import numpy as np

SCHEMA = 1
DEFAULT_COLLECTIVES = ("all_gather", "all_sum", "barrier")
COLLECTIVES = DEFAULT_COLLECTIVES + ("all_to_all", "gather", "scatter", "reduce")
ROOTED = ("gather", "scatter", "reduce")  # root 0; the others' results are not checked
DEFAULT_SIZES = (4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20)
EXACT_FLOAT32 = 1 << 24  # integers up to this are exact in float32
AGREE_EVERY = 16  # timed calls between two checks of the elapsed time


class Adapter:
    """What a peer provides. Subclasses set the class attributes and, in __init__, join
    the job and set `rank` and `size`.

    `prepare` turns a 1-D float32 numpy input into whatever the peer's calls take (and
    may allocate outputs once); `all_gather`, `all_sum`, `all_to_all`, `gather`, `scatter` and
    `reduce` (root 0; any result, e.g. None, off the root) run one call on it and return
    only when the result is complete; `restore` (untimed, before each call) is for peers
    whose call overwrites its input; `as_numpy` makes a result a flat numpy array.
    `missing` maps a collective the peer does not have to why; its rows are skipped.
    """

    peer = "?"
    version = ""
    launcher = ""
    transport = ""
    rank = 0
    size = 1
    missing: dict[str, str] = {}

    def barrier(self) -> None:
        raise NotImplementedError

    def prepare(self, x: np.ndarray, collective: str):
        return x

    def restore(self, state) -> None:
        pass

    def all_gather(self, state):
        raise NotImplementedError

    def all_sum(self, state):
        raise NotImplementedError

    def all_to_all(self, state):
        raise NotImplementedError

    def gather(self, state):
        raise NotImplementedError

    def scatter(self, state):
        raise NotImplementedError

    def reduce(self, state):
        raise NotImplementedError

    def as_numpy(self, result) -> np.ndarray:
        return np.asarray(result).reshape(-1)

    def close(self) -> None:
        pass

    def agree(self, values) -> np.ndarray:
        """Every rank's `values` (same length on all ranks), as rows of a (size, k) float64
        array; an untimed all_gather through the peer itself."""
        v = np.asarray(values, dtype=np.float32).reshape(-1)
        state = self.prepare(v, "all_gather")
        self.restore(state)
        return self.as_numpy(self.all_gather(state)).astype(np.float64).reshape(self.size, v.size)


def block(count: int, rank: int) -> np.ndarray:
    """Rank `rank`'s input of `count` float32 values: small integers, exact when summed."""
    return (np.arange(count, dtype=np.int64) % 251).astype(np.float32) + np.float32(256 * rank)


def exchange(count: int, rank: int, size: int) -> np.ndarray:
    """Rank `rank`'s all_to_all input of `count` float32 values: `size` blocks, block j (for
    rank j) `(arange(count // size) % 251) + 256 * (size * rank + j)`, so every block of
    every rank is different and exact in float32."""
    part = count // size
    pattern = (np.arange(part, dtype=np.int64) % 251).astype(np.float32)
    return np.concatenate([pattern + np.float32(256 * (size * rank + j)) for j in range(size)])


def initial(collective: str, count: int, rank: int, size: int) -> np.ndarray:
    if collective == "scatter":
        return exchange(count, 0, size)  # root 0's; the others' is not read
    return exchange(count, rank, size) if collective == "all_to_all" else block(count, rank)


def check(collective: str, out, count: int, size: int, rank: int = 0) -> tuple[int, str]:
    """(-1, '') when `out` is the exact answer of `collective` over `size` ranks, else the first
    wrong element (0 for a wrong length) and what differs. Compared block by block, so no
    second copy of a large all_gather output is made. For all_to_all, `rank` is the receiver:
    its block r must be block `rank` of rank r's input. A rooted call's result is checked on
    root 0 (a scatter's on every rank: block `rank` of root 0's input)."""
    if collective in ("gather", "reduce") and rank != 0:
        return -1, ""
    got = np.asarray(out).reshape(-1)
    base = block(count, 0)
    if collective == "scatter":
        count //= size
        want_size, blocks = count, [(0, base[:count] + np.float32(256 * rank))]
    elif collective in ("all_gather", "gather"):
        want_size, blocks = count * size, ((r, base + np.float32(256 * r)) for r in range(size))
    elif collective == "all_to_all":
        count //= size
        base = base[:count]
        want_size, blocks = count * size, ((r, base + np.float32(256 * (size * r + rank))) for r in range(size))
    else:
        want_size, blocks = count, [(0, base * np.float32(size) + np.float32(256 * size * (size - 1) // 2))]
    if got.size != want_size:
        return 0, f"{got.size} values, expected {want_size}"
    for r, want in blocks:
        part = got[r * count:(r + 1) * count]
        wrong = np.flatnonzero(part != want)
        if wrong.size:
            i = int(wrong[0])
            where = f"rank {r}'s block, " if collective in ("all_gather", "all_to_all") else ""
            return r * count + i, f"{where}element {r * count + i}: got {float(part[i])}, expected {float(want[i])}"
    return -1, ""


def bandwidths(collective: str, nbytes: int, size: int, seconds: float) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (1e9 B/s) as nccl-tests define them; 0 for a barrier."""
    if collective == "barrier" or seconds <= 0:
        return 0.0, 0.0
    if collective in ("all_gather", "gather"):
        algbw = nbytes * size / seconds
        return algbw / 1e9, algbw * (size - 1) / size / 1e9
    algbw = nbytes / seconds
    if collective in ("all_to_all", "scatter"):  # nbytes: the whole send buffer, N blocks
        return algbw / 1e9, algbw * (size - 1) / size / 1e9
    if collective == "reduce":  # nccl-tests: busbw = algbw
        return algbw / 1e9, algbw / 1e9
    return algbw / 1e9, algbw * 2 * (size - 1) / size / 1e9


def _one_call(adapter: Adapter, collective: str, state):
    """One timed call, barrier first: (result, seconds)."""
    if state is not None:
        adapter.restore(state)
    adapter.barrier()
    t0 = time.perf_counter()
    if collective == "barrier":
        result = adapter.barrier()
    elif collective == "all_gather":
        result = adapter.all_gather(state)
    elif collective == "all_to_all":
        result = adapter.all_to_all(state)
    elif collective in ROOTED:
        result = getattr(adapter, collective)(state)
    else:
        result = adapter.all_sum(state)
    return result, time.perf_counter() - t0


def measure(adapter: Adapter, collective: str, nbytes: int, opts) -> dict:
    """One row: warm-up, calibration, timed calls, checks, agreement on the times."""
    size = adapter.size
    count = nbytes // 4
    rank = adapter.rank
    state = adapter.prepare(initial(collective, count, rank, size), collective) if collective != "barrier" else None

    result, _ = _one_call(adapter, collective, state)
    wrong_at, problem = ((-1, "") if collective == "barrier" or (collective in ROOTED and result is None)
                         else check(collective, adapter.as_numpy(result), count, size, rank))
    result = None
    warmup, batch = 1, 1
    while True:  # calibration batches (also warm-up) of 1, 4, 16, 64 calls
        spent = []
        for _ in range(batch):
            _, dt = _one_call(adapter, collective, state)
            spent.append(dt)
        warmup += batch
        seen = adapter.agree([sum(spent), float(np.median(spent))])
        if seen[:, 0].max() >= opts.calib_time or batch >= 64:
            break
        batch *= 4
    estimate = max(float(seen[:, 1].max()), 1e-9)
    iters = min(opts.max_iters, max(opts.min_iters, math.ceil(opts.target_time / estimate)))

    times = []
    start = time.perf_counter()
    for i in range(1, iters + 1):
        result = None  # the previous output is freed before the next call, as a user's would be
        result, dt = _one_call(adapter, collective, state)
        times.append(dt)
        if i < iters and i >= opts.min_iters and i % AGREE_EVERY == 0:
            if adapter.agree([time.perf_counter() - start]).max() > opts.max_time:
                break
    if collective != "barrier" and not problem and not (collective in ROOTED and result is None):
        wrong_at, problem = check(collective, adapter.as_numpy(result), count, size, rank)
    result = state = None

    # each rank's times, then its first wrong element (-1: none) in two parts exact in float32
    table = adapter.agree(times + [*divmod(wrong_at, 1 << 16)] if wrong_at >= 0 else times + [-1.0, 0.0])
    firsts = {r: int(table[r, -2]) * (1 << 16) + int(table[r, -1]) for r in range(size) if table[r, -2] >= 0}
    verified = not firsts
    table = table[:, :-2]
    per_call = table.max(axis=0)  # a call is over when its slowest rank is
    median = float(np.median(per_call))
    algbw, busbw = bandwidths(collective, nbytes, size, median)
    row = {
        "schema": SCHEMA, "peer": opts.peer_name or adapter.peer, "version": adapter.version,
        "launcher": adapter.launcher, "transport": adapter.transport, "collective": collective,
        "n_ranks": size, "dtype": "float32", "bytes_per_rank": nbytes,
        "bytes_out": nbytes * size if collective in ("all_gather", "gather") else nbytes,
        "warmup": warmup, "iters": len(times), "capped": len(times) < iters,
        "time_s": median, "time_s_rank0": float(np.median(table[0])),
        "time_s_min": float(per_call.min()), "time_s_p90": float(np.percentile(per_call, 90)),
        "algbw_GBps": algbw, "busbw_GBps": busbw,
        "verified": verified, "status": "ok" if verified else "wrong_result",
        "host": socket.gethostname(), "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""), "note": opts.note,
        "unix_time": round(time.time(), 3),
    }
    if not verified:
        row["error"] = (f"{collective}: wrong output on rank(s) {sorted(firsts)}, first wrong element "
                        + ", ".join(f"{i} on rank {r}" for r, i in sorted(firsts.items()))
                        + (f"; rank {adapter.rank}: {problem}" if problem else ""))
    return row


def byte_counts(text: str) -> list[int]:
    """--sizes: comma-separated byte counts, each a whole number of float32 values."""
    sizes = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or int(item) <= 0 or int(item) % 4:
            raise argparse.ArgumentTypeError(f"{item!r} is not a positive whole number of float32 (4-byte) values")
        sizes.append(int(item))
    return sizes


def collective_names(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    for name in names:
        if name not in COLLECTIVES:
            raise argparse.ArgumentTypeError(f"{name!r}: expected some of {', '.join(COLLECTIVES)}")
    return names


def options(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="One peer's measurement on every rank (rank 0 writes the rows).")
    p.add_argument("--out", help="append the JSON lines to this file (rank 0)")
    p.add_argument("--sizes", type=byte_counts, default=list(DEFAULT_SIZES), help="per-rank bytes, comma-separated")
    p.add_argument("--collectives", type=collective_names, default=list(DEFAULT_COLLECTIVES))
    p.add_argument("--target-time", type=float, default=1.0, help="seconds of timed calls per row")
    p.add_argument("--calib-time", type=float, default=0.2, help="seconds a calibration batch must last")
    p.add_argument("--min-iters", type=int, default=5)
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--max-time", type=float, default=5.0, help="wall seconds after which a row's timed calls stop")
    p.add_argument("--peer-name", help="the peer's label in the rows (default: the adapter's)")
    p.add_argument("--note", default="", help="free text copied into every row")
    opts = p.parse_args(argv)
    for name in ("target_time", "calib_time", "max_time"):
        if not getattr(opts, name) > 0 or math.isinf(getattr(opts, name)):
            p.error(f"--{name.replace('_', '-')}: expected a positive number of seconds")
    if not 1 <= opts.min_iters <= opts.max_iters:
        p.error(f"--min-iters {opts.min_iters} / --max-iters {opts.max_iters}: expected 1 <= min <= max")
    return opts


def main(make_adapter) -> None:
    opts = options()
    adapter = make_adapter()
    size = adapter.size
    largest = 250 * size + 256 * size * (size - 1) // 2
    if ("all_sum" in opts.collectives or "reduce" in opts.collectives) and largest >= EXACT_FLOAT32:
        sys.exit(f"{adapter.peer} rank {adapter.rank}: {size} ranks: all_sum's answer would not be exact in float32")
    for name in ("all_to_all", "scatter"):
        if name not in opts.collectives:
            continue
        if 256 * size * size >= EXACT_FLOAT32:
            sys.exit(f"{adapter.peer} rank {adapter.rank}: {size} ranks: "
                     f"{name}'s blocks would not be exact in float32")
        uneven = [n for n in opts.sizes if (n // 4) % size]
        if uneven:
            sys.exit(f"{adapter.peer} rank {adapter.rank}: {name}: --sizes {uneven[0]} is not {size} equal "
                     "blocks of float32 values")
    wrong = 0
    out = open(opts.out, "a") if opts.out and adapter.rank == 0 else None
    try:
        for collective in opts.collectives:
            if collective in adapter.missing:
                if adapter.rank == 0:
                    line = json.dumps({"schema": SCHEMA, "peer": opts.peer_name or adapter.peer, "n_ranks": size,
                                       "collective": collective, "status": "skipped",
                                       "reason": f"{collective}: {adapter.missing[collective]}"})
                    print(line, flush=True)
                    if out:
                        out.write(line + "\n")
                        out.flush()
                    print(f"# {adapter.peer} {collective} N={size}: skipped ({adapter.missing[collective]})",
                          file=sys.stderr, flush=True)
                continue
            for nbytes in (opts.sizes if collective != "barrier" else [0]):
                row = measure(adapter, collective, nbytes, opts)
                wrong += not row["verified"]
                if adapter.rank == 0:
                    line = json.dumps(row)
                    print(line, flush=True)
                    if out:
                        out.write(line + "\n")
                        out.flush()
                    print(f"# {row['peer']} {collective} N={size} {nbytes} B: median {row['time_s'] * 1e6:.1f} us, "
                          f"busbw {row['busbw_GBps']:.3f} GB/s, {row['iters']} calls, verified {row['verified']}",
                          file=sys.stderr, flush=True)
    finally:
        if out:
            out.close()
    adapter.close()
    sys.exit(1 if wrong else 0)
