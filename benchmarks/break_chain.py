"""How fast a break reaches ranks waiting in receives: a chain, rank r waiting for rank r-1's
first message (no connection between them yet); rank 0's group breaks 1 s in.

usage: python benchmarks/break_chain.py [-n 8,16] [--repeats 3]

Ranks are threads of this process over real loopback sockets (`tests/harness.py`, so it runs
from a checkout). Prints, per N, the median seconds from the break to the first waiting rank's
error and to the last's. To compare an older tree, put it first on PYTHONPATH (a checkout, or
`git worktree add /tmp/old <commit>`): its ringdist and tests/harness.py are used then.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np


def _tree() -> Path:
    """The tree whose ringdist is imported (PYTHONPATH's first, else this checkout)."""
    import ringdist
    return Path(ringdist.__file__).resolve().parent.parent


def one(n: int) -> tuple[float, float]:
    """(seconds to the first waiting rank's error, to the last's) after rank 0's break."""
    import ringdist as rd
    from harness import run_ranks

    broke: list[float] = []
    heard_all = threading.Semaphore(0)  # released by each waiting rank once it has its error

    def rank(g: rd.Group):
        if g.rank() == 0:
            time.sleep(1.0)
            broke.append(time.monotonic())
            try:
                rd.all_sum(np.array(["a"]), group=g)  # refused: the group breaks here
            except TypeError:
                pass
            for _ in range(n - 1):  # (its peers may ask it for as long as they wait)
                heard_all.acquire(timeout=600)
            return None
        try:
            rd.recv(2, np.float64, g.rank() - 1, group=g, timeout=300)
        except rd.RingError:
            return time.monotonic()
        finally:
            heard_all.release()
        raise AssertionError(f"rank {g.rank()} received a message nobody sent")

    heard = run_ranks(n, rank, shm=False, timeout=900)[1:]
    return heard[0] - broke[0], max(heard) - broke[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", default="8,16", help="group sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(_tree() / "tests"))
    print(f"tree: {_tree()}")
    for n in (int(v) for v in args.n.split(",")):
        runs = [one(n) for _ in range(args.repeats)]
        first = statistics.median(r[0] for r in runs)
        last = statistics.median(r[1] for r in runs)
        print(f"n={n:3d}  first rank {first:7.3f} s  last rank {last:7.3f} s  ({args.repeats} runs)")


if __name__ == "__main__":
    main()
