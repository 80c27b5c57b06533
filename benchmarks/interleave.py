"""Run the peer harness (benchmarks/peers/run.py) size by size, its peers taking turns, several times over.

usage: python benchmarks/interleave.py -n N [--repeats 5] [--sizes 4K,64K,1M,16M,64M]
           [--peers mpi_tcp,ringdist_ring] [--results DIR] [--harness benchmarks/peers/run.py]

`run.py N` runs each peer through every size in turn, so the same size of two peers is
measured a minute or more apart. This machine goes through slow phases lasting seconds, in
which kernel copies take two to three times the CPU time, and a ratio from one such run
says more about the phases than about the transports. Here every (size, peer) is its own
short harness run, the peers alternate size by size (seconds apart) and swap order from one
repeat to the next, and the whole is repeated: repeat k goes to DIR/k/peers-N<N>.jsonl, in
the harness's format. It ends by printing `ratios.py` over the repeats, with their median.

Environment (RINGDIST_PYTHON, VENV, TARGET_TIME, ...) passes through to the harness; COLLECTIVES
defaults to all_gather,all_sum here (the barrier row does not depend on the size). A harness
ending in .py runs with this interpreter, any other with bash.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_HARNESS = HERE / "peers" / "run.py"
if __package__:  # installed (ringdist_bench)
    from .cli import parse_size
else:  # run as a script from a checkout, with or without ringdist installed
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.cli import parse_size  # (ringdist-bench's size syntax: 4K, 64M)


def order(peers: list[str], repeat: int, index: int) -> list[str]:
    """The peers' order for one size: reversed on every other (repeat + size) step, so
    neither peer always runs first."""
    return peers if (repeat + index) % 2 == 0 else peers[::-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, required=True, help="ranks")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=lambda text: [parse_size(s) for s in text.split(",") if s],
                        default="4K,64K,1M,16M,64M")
    parser.add_argument("--peers", default="mpi_tcp,ringdist_ring")
    parser.add_argument("--results", default="/tmp/interleave")
    parser.add_argument("--harness", default=str(DEFAULT_HARNESS), help="the peer harness (default: benchmarks/peers/run.py)")
    args = parser.parse_args(argv)
    sizes = args.sizes
    peers = [p for p in args.peers.split(",") if p]
    harness = Path(args.harness)
    if not harness.is_file():
        parser.error(f"--harness {harness}: no such file")
    command = [sys.executable, str(harness)] if harness.suffix == ".py" else ["bash", str(harness)]
    results = Path(args.results)
    runs = []
    for k in range(1, args.repeats + 1):
        run = results / str(k)
        run.mkdir(parents=True, exist_ok=True)
        out = run / f"peers-N{args.n}.jsonl"
        out.write_text("")
        for index, size in enumerate(sizes):
            for peer in order(peers, k, index):
                with tempfile.TemporaryDirectory(prefix="interleave-") as tmp:
                    env = dict(os.environ, PEERS=peer, SIZES=str(size), RESULTS=tmp)
                    env.setdefault("COLLECTIVES", "all_gather,all_sum")
                    done = subprocess.run([*command, str(args.n)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    lines = Path(tmp, f"peers-N{args.n}.jsonl").read_text() if done.returncode == 0 else ""
                    if '"status": "ok"' not in lines:
                        print(f"repeat {k}, {size} B, {peer}: no result\n{done.stdout[-2000:]}", file=sys.stderr)
                    with out.open("a") as f:
                        f.write(lines)
                print(f"repeat {k}/{args.repeats}: {size} B, {peer} done", flush=True)
        runs.append(str(run))
    subprocess.run([sys.executable, str(HERE / "ratios.py"), *runs], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
