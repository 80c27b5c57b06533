"""Compute/communication overlap with async_op: a training-like loop, blocking against async.

usage: ringdist-launch -n N benchmarks/overlap.py [--bytes 4M] [--steps 20] [--rounds 5]

Each step is a numpy matmul sized (every rank measuring at once; rank 0's size is used) to take about as long as a
blocking all_sum (medians of 7) of `--bytes` bytes of float32, followed by that all_sum. Blocking: compute,
then all_sum. Async: issue the step's all_sum, compute the next step, then wait for it.
Rounds alternate blocking and async (the machine's slow phases hit both alike); rank 0 prints
the median time per step of each and the speedup. Figures only: nothing is asserted.

BLAS runs one thread per rank (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS
default to 1; set them to choose): ranks already outnumber or match the cores, and a BLAS
pool per rank would take the cores the all_sums need in both modes alike. The async path is
warmed up (its thread started) before the first round. The bound printed counts the one
all_sum per round an async loop cannot hide (the last): steps * (c + m) / (steps * max + min).

Where /proc/stat exists, rank 0 also prints the CPU time this machine spent per step in each
mode (every process and the kernel's network processing: on one machine running every
rank, as on the emulated cluster, that is the whole job's), against the CPU time the step's
wall time offers (cores x time): a step whose CPU time is near that is CPU-bound, and no
overlap can make it shorter than its CPU time over the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # before numpy loads BLAS
import numpy as np  # noqa: E402

if __package__:  # installed (ringdist_bench)
    from .cli import parse_size
else:  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.cli import parse_size
import ringdist as rd  # noqa: E402


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_size(target: float) -> int:
    """The side k of a float32 k x k matmul that takes about `target` seconds here."""
    k, t = 32, 0.0
    while k < 8192:
        a = np.ones((k, k), dtype=np.float32)
        a @ a  # warm-up (BLAS threads start on first use)
        t = median_time(lambda: a @ a, 7)
        if t >= target / 2:
            break
        k *= 2
    return max(16, int(k * (target / max(t, 1e-9)) ** (1 / 3)))


def bound(comm: float, compute: float, steps: int) -> float:
    """The speedup of a perfect overlap: every all_sum but the last hidden behind a matmul."""
    return steps * (comm + compute) / max(steps * max(comm, compute) + min(comm, compute), 1e-9)


def machine_cpu() -> dict[str, float] | None:
    """Seconds of CPU time this machine has spent so far, by kind (None without /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:8]]
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = (v / tick for v in fields)
    return {"user": user + nice, "system": system, "irq": irq + softirq, "idle": idle + iowait}


CPU: dict[str, list[dict[str, float]]] = {"blocking": [], "async": []}


def _cpu_since(start: dict[str, float] | None, mode: str, steps: int) -> None:
    end = machine_cpu()
    if start is not None and end is not None:
        CPU[mode].append({k: (end[k] - start[k]) / steps for k in end})


def blocking_round(a: np.ndarray, grad: np.ndarray, steps: int) -> float:
    rd.barrier()
    cpu = machine_cpu()
    t0 = time.perf_counter()
    for _ in range(steps):
        a @ a
        rd.all_sum(grad)
    took = (time.perf_counter() - t0) / steps
    _cpu_since(cpu, "blocking", steps)
    return took


def async_round(a: np.ndarray, grad: np.ndarray, steps: int) -> float:
    rd.barrier()
    cpu = machine_cpu()
    t0 = time.perf_counter()
    pending = None
    for _ in range(steps):
        a @ a  # this step's compute overlaps the previous step's all_sum
        if pending is not None:
            pending.wait()
        pending = rd.all_sum(grad, async_op=True)
    pending.wait()
    took = (time.perf_counter() - t0) / steps
    _cpu_since(cpu, "async", steps)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=parse_size, default=4 << 20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="size the matmul to this many all_sum times (0: no compute, the all_sums alone)")
    args = parser.parse_args()
    g = rd.init()
    grad = np.ones(args.bytes // 4, dtype=np.float32)
    for _ in range(3):
        rd.all_sum(grad)  # warm the connections and the buffer cache
    comm = rd.all_max(np.array([median_time(lambda: rd.all_sum(grad), 7)]))[0]
    # every rank measuring at once, as in a step
    k = int(rd.broadcast(np.array([matmul_size(comm * args.scale) if args.scale else 0]), 0)[0])
    a = np.ones((k, k), dtype=np.float32)
    compute = rd.all_max(np.array([median_time(lambda: a @ a, 7)]))[0]
    rd.all_sum(grad, async_op=True).wait()  # start the group's runner before timing (a later start costs ~0.1 ms)
    blocking, overlapped = [], []
    for _ in range(args.rounds):
        blocking.append(blocking_round(a, grad, args.steps))
        overlapped.append(async_round(a, grad, args.steps))
    b, o = statistics.median(blocking), statistics.median(overlapped)
    if g.rank() == 0:
        print(f"ranks {g.size()}, all_sum {args.bytes} B: {comm * 1e3:.2f} ms; matmul {k}x{k}: {compute * 1e3:.2f} ms "
              f"(OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})")
        print(f"per step: blocking {b * 1e3:.2f} ms, async {o * 1e3:.2f} ms; speedup {b / o:.2f}x "
              f"(median of {args.rounds} rounds of {args.steps} steps; perfect overlap of the measured "
              f"times: {bound(comm, compute, args.steps):.2f}x)", flush=True)
        cores = os.cpu_count() or 1
        for mode, step in (("blocking", b), ("async", o)):
            if CPU[mode]:
                kinds = {k: statistics.median(r[k] for r in CPU[mode]) * 1e3 for k in CPU[mode][0]}
                busy = kinds["user"] + kinds["system"] + kinds["irq"]
                print(f"machine CPU per {mode} step: {busy:.1f} ms busy (user {kinds['user']:.1f}, system "
                      f"{kinds['system']:.1f}, irq+softirq {kinds['irq']:.1f}), idle {kinds['idle']:.1f}; "
                      f"{cores} cores x {step * 1e3:.1f} ms = {cores * step * 1e3:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
