"""A bare-socket ring all_gather in plain Python, and ringdist beside it.

usage: python benchmarks/bare.py -n N [--sizes 16M,64M] [--repeats 3] [--results DIR]
           [--time 1.0] [--no-ringdist]

The bare ring is the all_gather a user would write with sockets and nothing of ringdist:
N processes in a ring of loopback connections, each copying its block into its output and
then, N-1 times, sending one block to the next process (a thread in `sendall`, the whole
block in one call) while receiving the next block from the previous one (`recv_into`,
straight into the output). No framing, no headers, no checks, no chunking: it shows how close
ringdist's large transfers come to what the kernel's socket copies allow from Python. Every
rank receives (N-1)·size bytes over TCP, whatever the algorithm, and each of those bytes costs
the kernel a copy in and a copy out. (On 3 or more ranks it forwards whole blocks a step at a
time, where ringdist forwards chunks as they land, so ringdist can beat it there.)

Timing follows the peer harness (benchmarks/peers/loop.py): a barrier (a token round the ring)
before every call, the call's time is the slowest rank's, the row's time is the median over
calls, busbw is (N-1)·size/time. The outputs are checked after the last call.

For every size and repeat, the bare ring and `ringdist-bench` (same size, same N) run one after the
other, swapping order each repeat. Repeat k goes to DIR/k/peers-N<N>.jsonl in the harness's
format (peers `bare_ring` and `ringdist_ring`), and the script ends by printing
`ratios.py --peer bare_ring` over the repeats: ringdist's busbw over the bare ring's.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__:  # installed (ringdist_bench): the tool's own modules
    from .cli import parse_size
    from .interleave import order
else:  # run as a script from a checkout, with or without ringdist installed
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.cli import parse_size  # (ringdist-bench's size syntax: 4K, 64M)
    from benchmarks.interleave import order  # (which peer goes first, repeat by repeat)

RANK_TIMEOUT = 300.0  # seconds a bare rank may take in all; past it the run fails, it does not hang


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("the previous rank closed its connection")
        got += k


def rank_main(rank: int, n: int, size: int, iters: int, listen_fd: int, next_port: int, out_path: str) -> None:
    """One bare-ring rank: connect to the next rank, accept the previous one, time `iters` calls,
    check the output, write this rank's per-call times to `out_path` as JSON."""
    import numpy as np

    listener = socket.socket(fileno=listen_fd)
    listener.settimeout(RANK_TIMEOUT)
    nxt = socket.create_connection(("127.0.0.1", next_port), timeout=RANK_TIMEOUT)
    prv, _ = listener.accept()
    listener.close()
    for s in (nxt, prv):
        s.settimeout(RANK_TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    count = size // 4

    def block(q: int) -> np.ndarray:  # rank q's input, as benchmarks/peers/loop.py makes it
        return (np.arange(count, dtype=np.float32) % 251) + 256 * q

    mine = block(rank)
    out = np.empty(n * count, dtype=np.float32)
    blocks = [memoryview(out[q * count:(q + 1) * count]).cast("B") for q in range(n)]

    def barrier() -> None:  # a token twice round the ring: everyone has arrived, then everyone goes
        for _ in range(2):
            if rank == 0:
                nxt.sendall(b"t")
                _recv_exactly(prv, memoryview(bytearray(1)))
            else:
                _recv_exactly(prv, memoryview(bytearray(1)))
                nxt.sendall(b"t")

    times = []
    for _ in range(iters):
        barrier()
        t0 = time.perf_counter()
        out[rank * count:(rank + 1) * count] = mine
        for step in range(n - 1):
            sending = blocks[(rank - step) % n]
            sender = threading.Thread(target=nxt.sendall, args=(sending,))
            sender.start()
            _recv_exactly(prv, blocks[(rank - step - 1) % n])
            sender.join()
        times.append(time.perf_counter() - t0)
    if not np.array_equal(out, np.concatenate([block(q) for q in range(n)])):
        raise SystemExit(f"bare ring rank {rank}: wrong output")
    barrier()  # nobody closes while a neighbour still reads
    Path(out_path).write_text(json.dumps(times))


def run_bare(n: int, size: int, iters: int) -> dict:
    """Launch n bare-ring ranks on loopback (listeners bound here on ephemeral ports and handed
    down), and return a harness-format row. A rank that fails stops the others at once."""
    listeners = [socket.socket() for _ in range(n)]
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bare-") as tmp:
        outs = [Path(tmp, f"rank{r}.json") for r in range(n)]
        try:
            for s in listeners:
                s.bind(("127.0.0.1", 0))
                s.listen(1)
            ports = [s.getsockname()[1] for s in listeners]
            for r in range(n):
                fd = listeners[r].fileno()
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--rank", str(r), "-n", str(n), "--size", str(size),
                     "--iters", str(iters), "--listen-fd", str(fd), "--next-port", str(ports[(r + 1) % n]),
                     "--out", str(outs[r])], pass_fds=(fd,)))
            for s in listeners:
                s.close()
            deadline = time.monotonic() + RANK_TIMEOUT + 30
            while any(p.poll() is None for p in procs):
                if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        finally:
            for s in listeners:
                s.close()
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        failed = [r for r, p in enumerate(procs) if p.returncode != 0]
        if failed:
            raise SystemExit(f"bare ring ranks {failed} failed or were stopped (size {size}, {n} ranks)")
        per_rank = [json.loads(out.read_text()) for out in outs]
    slowest = [max(ts) for ts in zip(*per_rank)]
    t = statistics.median(slowest)
    return {"peer": "bare_ring", "collective": "all_gather", "n_ranks": n, "bytes_per_rank": size,
            "time_s": t, "time_s_min": min(slowest), "iters": iters,
            "algbw_GBps": n * size / t / 1e9, "busbw_GBps": (n - 1) * size / t / 1e9,
            "status": "ok", "verified": True}


def run_ringdist(n: int, size: int, seconds: float) -> dict | None:
    """ringdist-bench at one size, as a harness-format row (None when it fails)."""
    with tempfile.TemporaryDirectory(prefix="bare-") as tmp:
        rows = Path(tmp, "rows.jsonl")
        done = subprocess.run([sys.executable, "-m", "ringdist_bench", "-n", str(n), "-o", "all_gather",
                               "-b", str(size), "-e", str(size), "-t", str(seconds), "--json", str(rows)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=RANK_TIMEOUT)
        if done.returncode != 0 or not rows.exists():
            print(f"ringdist-bench, {size} B, {n} ranks: failed\n{done.stdout[-2000:]}", file=sys.stderr)
            return None
        row = json.loads(rows.read_text().splitlines()[-1])
    row.update(peer="ringdist_ring", collective=row.pop("op"), status="ok", verified=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, required=True, help="ranks")
    parser.add_argument("--sizes", type=lambda text: [parse_size(s) for s in text.split(",") if s],
                        default="16M,64M")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default="/tmp/bare")
    parser.add_argument("--time", type=float, default=1.0, help="seconds of calls per run, at 1 GB/s (target)")
    parser.add_argument("--no-ringdist", action="store_true", help="the bare ring alone")
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--iters", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--next-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank is not None:
        rank_main(args.rank, args.n, args.size, args.iters, args.listen_fd, args.next_port, args.out)
        return 0
    if args.n < 2:
        parser.error("-n: a ring needs at least 2 ranks")
    for size in args.sizes:
        if size <= 0 or size % 4:
            parser.error(f"--sizes: {size} is not a whole number of float32 (a positive multiple of 4 bytes)")
    runs = []
    for k in range(1, args.repeats + 1):
        run = Path(args.results) / str(k)
        run.mkdir(parents=True, exist_ok=True)
        out = run / f"peers-N{args.n}.jsonl"
        out.write_text("")
        for index, size in enumerate(args.sizes):
            # --time seconds of calls at 1 GB/s (the harness aims for 1 s); 5 to 2000 calls
            iters = max(5, min(2000, math.ceil(args.time * 1e9 / ((args.n - 1) * size))))
            peers = ["bare_ring"] if args.no_ringdist else ["bare_ring", "ringdist_ring"]
            for peer in order(peers, k, index):
                row = run_bare(args.n, size, iters) if peer == "bare_ring" else run_ringdist(args.n, size, args.time)
                if row is not None:
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"repeat {k}: {peer:13s} {size:>10} B  {row['time_s'] * 1e3:9.3f} ms  "
                          f"busbw {row['busbw_GBps']:.3f} GB/s", flush=True)
        runs.append(str(run))
    if not args.no_ringdist:
        subprocess.run([sys.executable, str(HERE / "ratios.py"), "--peer", "bare_ring", *runs], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
