"""Compare two versions of ringdist, launch by launch in turn: is the new code slower?

usage: python benchmarks/versions.py OLD NEW [-n 2,4] [--ops all_gather,all_sum]
           [--sizes 4K,1M,64M] [--repeats 5] [--time 1] [--python PY]

OLD and NEW are source trees (a checkout or `git worktree add /tmp/old <commit>`), each with
ringdist/, launcher/ and benchmarks/. For every repeat, N, op and size, `ringdist-bench` runs
once from each tree, the two seconds apart, in an order that swaps from one step to the next,
so both meet the same moments of a shared machine; a tree is put on PYTHONPATH under the
names its packages install as. PY must be an interpreter with numpy and msgpack and without
ringdist installed (an installed ringdist would win over PYTHONPATH); runs start in a
temporary directory for the same reason. Prints each cell's median time over the repeats
for both trees and their ratio NEW/OLD (above 1: the new code is slower), one row per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__:  # installed (ringdist_bench)
    from .cli import parse_size
else:  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.cli import parse_size

PACKAGES = {"ringdist": "ringdist", "ringdist_launch": "launcher", "ringdist_bench": "benchmarks"}


def package_dir(tree: Path, into: Path) -> Path:
    """A directory where `tree`'s packages import under their installed names."""
    into.mkdir(parents=True, exist_ok=True)
    for name, source in PACKAGES.items():
        if not (tree / source).is_dir():
            raise SystemExit(f"{tree}: no {source}/ (not a ringdist source tree)")
        (into / name).symlink_to(tree / source)
    return into


def bench(python: str, path: Path, n: int, op: str, size: int, seconds: float, scratch: Path) -> float:
    """Median seconds per call of one ringdist-bench run of `op` at `size` on `n` ranks."""
    out = scratch / "row.jsonl"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(path), "RINGDIST_TIMEOUT": "60"}
    cmd = [python, "-m", "ringdist_bench", "-n", str(n), "-o", op, "-b", str(size), "-e", str(size),
           "-t", str(seconds), "--json", str(out)]
    res = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=300,
                         start_new_session=True)
    if res.returncode != 0 or not out.exists():
        raise SystemExit(f"{' '.join(cmd)} (PYTHONPATH={path}) failed:\n{res.stdout}\n{res.stderr}")
    return float(json.loads(out.read_text().splitlines()[-1])["time_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("-n", default="2,4", help="rank counts, comma separated")
    p.add_argument("--ops", default="all_gather,all_sum")
    p.add_argument("--sizes", default="4K,1M,64M", help="per-rank bytes, comma separated (4K, 64M)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--time", type=float, default=1.0, help="seconds of timed calls per run")
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args(argv)
    ns = [int(v) for v in args.n.split(",")]
    ops = args.ops.split(",")
    sizes = [parse_size(v) for v in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="ringdist-versions-") as tmp:
        scratch = Path(tmp)
        paths = {"old": package_dir(args.old.resolve(), scratch / "old"),
                 "new": package_dir(args.new.resolve(), scratch / "new")}
        times: dict[tuple, dict[str, list[float]]] = {}
        step = 0
        for repeat in range(args.repeats):
            for n in ns:
                for op in ops:
                    for size in sizes:
                        order = ["old", "new"] if step % 2 == 0 else ["new", "old"]
                        step += 1
                        cell = times.setdefault((n, op, size), {"old": [], "new": []})
                        for which in order:
                            cell[which].append(bench(args.python, paths[which], n, op, size, args.time, scratch))
                        print(f"repeat {repeat + 1}: N={n} {op} {size} B: old {cell['old'][-1] * 1e6:.1f} us, "
                              f"new {cell['new'][-1] * 1e6:.1f} us", file=sys.stderr, flush=True)
    print(f"| N | op | bytes per rank | old median | new median | new/old ({args.repeats} launches each) |")
    print("|---|---|---|---|---|---|")
    for (n, op, size), cell in times.items():
        old, new = statistics.median(cell["old"]), statistics.median(cell["new"])
        print(f"| {n} | {op} | {size} | {old * 1e6:.1f} us | {new * 1e6:.1f} us | {new / old:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
