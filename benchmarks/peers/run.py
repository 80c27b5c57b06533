"""Run every available peer for N ranks on this host and write the results.

usage: python benchmarks/peers/run.py N [--peers ...] [--sizes 4K,1M] [--results DIR] ...

Writes DIR/peers-N<N>.jsonl (one JSON line per peer, collective and size, plus one line per
peer that was skipped or failed), DIR/peers-N<N>.md (tables, by report.py) and a log per
peer in DIR/logs/N<N>-<peer>.log. Every option also reads an environment variable (the
option wins): PEERS, SIZES, COLLECTIVES, TARGET_TIME, MAX_TIME, PEER_TIMEOUT, RESULTS, VENV,
RINGDIST_PYTHON, RINGDIST_LAUNCH. OMP_NUM_THREADS defaults to 1 and GLOO_SOCKET_IFNAME to lo.
Peers run one after the other, each in a process group of its own that is stopped when it
runs past PEER_TIMEOUT or when this script is interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for benchmarks.cli
import commands  # noqa: E402
import report  # noqa: E402
from benchmarks.cli import parse_size  # noqa: E402  (ringdist-bench's size syntax: 4K, 64M)
from loop import COLLECTIVES, DEFAULT_COLLECTIVES, EXACT_FLOAT32  # noqa: E402

DEFAULT_SIZES = "4K,64K,1M,16M,64M"
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL for a peer's process group


def _sizes(text: str) -> list[int]:
    sizes = []
    for item in (s for s in text.split(",") if s.strip()):
        size = parse_size(item)
        if size <= 0 or size % 4:
            raise argparse.ArgumentTypeError(f"{item}: not a positive whole number of float32 (4-byte) values")
        sizes.append(size)
    if not sizes:
        raise argparse.ArgumentTypeError("no size given")
    return sizes


def _names(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [s for s in text.replace(",", " ").split() if s]
        for name in names:
            if name not in allowed:
                raise argparse.ArgumentTypeError(f"{name!r}: expected some of {', '.join(allowed)}")
        if not names:
            raise argparse.ArgumentTypeError("none given")
        return names
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive, finite number of seconds")
    return value


def options(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int, help="ranks per peer (all on this host)")
    p.add_argument("--peers", type=_names(commands.PEERS), default=env("PEERS") or " ".join(commands.PEERS),
                   help="space or comma separated (env PEERS; default: all)")
    p.add_argument("--sizes", type=_sizes, default=env("SIZES") or DEFAULT_SIZES,
                   help=f"per-rank bytes, comma separated, 4K / 64M allowed (env SIZES; default {DEFAULT_SIZES})")
    p.add_argument("--collectives", type=_names(COLLECTIVES),
                   default=env("COLLECTIVES") or ",".join(DEFAULT_COLLECTIVES),
                   help=f"env COLLECTIVES; default {','.join(DEFAULT_COLLECTIVES)}; "
                        "the barrier is timed once, not per size")
    p.add_argument("--target-time", type=_seconds, default=env("TARGET_TIME") or "1.0",
                   help="seconds of timed calls per row (env TARGET_TIME)")
    p.add_argument("--max-time", type=_seconds, default=env("MAX_TIME") or "5",
                   help="a row's timed calls stop past this many seconds (env MAX_TIME)")
    p.add_argument("--peer-timeout", type=_seconds, default=env("PEER_TIMEOUT") or "480",
                   help="seconds before a peer's whole run is stopped (env PEER_TIMEOUT)")
    p.add_argument("--results", default=env("RESULTS") or "results", help="output folder (env RESULTS)")
    p.add_argument("--venv", default=env("VENV") or "/tmp/peers-venv", help="the peers' virtualenv (env VENV)")
    p.add_argument("--note", default="", help="free text copied into every row")
    args = p.parse_args(argv)
    if args.n < 2:
        p.error(f"N = {args.n}: expected at least 2 ranks")
    if 250 * args.n + 256 * args.n * (args.n - 1) // 2 >= EXACT_FLOAT32:
        p.error(f"N = {args.n}: too many ranks for all_sum's answer to be exact in float32")
    for name in ("all_to_all", "scatter"):
        uneven = [size for size in args.sizes if (size // 4) % args.n]
        if name in args.collectives and uneven:
            p.error(f"--sizes {uneven[0]}: {name} needs a size of {args.n} equal blocks of float32 values")
    return args


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the peer's whole process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            continue
    try:  # members of the group that outlived its leader
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _why(log: Path) -> str:
    """The line of a failed peer's log that says best why, cut short: the last Python exception
    ('...Error: ...'), else the last line naming an error, else the last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
             if line.strip() and not line.startswith("#")]
    raised = [line for line in lines if re.search(r"\b\w*(Error|Exception)\b: ", line)]
    named = [line for line in lines if re.search(r"error|abort|fail", line, re.I)]
    return (raised or named or lines or [""])[-1][:300]


def run_peer(peer: str, args, setting: commands.Setting, out: Path, logs: Path) -> dict | None:
    """Run one peer; its rows go to `out`. None when it ran through, else its status line."""
    status = {"schema": 1, "peer": peer, "n_ranks": args.n}
    with tempfile.TemporaryDirectory(prefix=f"peers-{peer}-") as tmp:
        rows = Path(tmp) / "rows.jsonl"
        worker = ["--out", str(rows), "--sizes", ",".join(map(str, args.sizes)),
                  "--collectives", ",".join(args.collectives), "--target-time", str(args.target_time),
                  "--max-time", str(args.max_time), "--note", args.note]
        launch = commands.plan(peer, args.n, worker, setting)
        if isinstance(launch, commands.Skip):
            print(f"== {peer}: skipped ({launch.reason})", flush=True)
            return {**status, "status": "skipped", "reason": launch.reason, "log": ""}
        log = logs / f"N{args.n}-{peer}.log"
        print(f"== {peer} N={args.n}: {' '.join(launch.argv)}", flush=True)
        start = time.monotonic()
        with log.open("w") as f:
            f.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S%z')} N={args.n}\n# {' '.join(launch.argv)}\n")
            f.flush()
            proc = subprocess.Popen(launch.argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **launch.env}, start_new_session=True)
            try:
                code = proc.wait(args.peer_timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _stop(proc)  # also on Ctrl-C: nothing of the peer outlives this script
        print(f"   {'timed out' if code is None else f'exit code {code}'}, {time.monotonic() - start:.0f} s, "
              f"log: {log}", flush=True)
        written = rows.read_text() if rows.exists() else ""
        with out.open("a") as f:
            f.write(written)
    if code == 0 and written:
        return None
    why = (f"timed out after {args.peer_timeout:g} s" if code is None
           else f"exit code {code}" if code else "exit code 0 but no rows written")
    return {**status, "status": "failed", "reason": f"{why}: {_why(log)}", "log": str(log)}


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    setting = commands.Setting(Path(args.venv), os.environ.get("RINGDIST_PYTHON") or None,
                               os.environ.get("RINGDIST_LAUNCH") or None)
    results = Path(args.results)
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = results / f"peers-N{args.n}.jsonl"
    out.write_text("")
    failed = 0
    for peer in args.peers:
        status = run_peer(peer, args, setting, out, logs)
        if status:
            failed += status["status"] == "failed"
            with out.open("a") as f:
                f.write(json.dumps(status) + "\n")
    md = out.with_suffix(".md")
    md.write_text(report.markdown([out]))
    print(f"wrote {out} and {md}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
