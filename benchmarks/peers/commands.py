"""How each peer is started on one host: its check that it is installed, and its launch command.

Every peer runs one of the *_worker.py scripts beside this file on N local ranks through its
own launcher; everything stays on loopback. `plan(peer, ...)` answers with a `Launch` (the
command and the extra environment) or a `Skip` (why the peer cannot run here).
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = ("ringdist_ring", "mlx_ring", "torch_gloo", "mpi_tcp", "mpi_shm")
# oob_tcp_if_include lo: mpirun and its ranks talk among themselves over loopback too
MPIRUN = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "pml", "ob1",
          "--mca", "oob_tcp_if_include", "lo"]
MPI_BTL = {"mpi_tcp": ("tcp", ["--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"]),
           "mpi_shm": ("shm", ["--mca", "btl", "self,vader"])}
# what each peer's interpreter must manage, printed as the reason when it cannot
PROBES = {
    "ringdist_ring": "import numpy, ringdist",
    "mlx_ring": "import mlx.core as mx; assert mx.distributed.is_available(backend='ring'), 'no ring backend'",
    "torch_gloo": "import torch.distributed as d; assert d.is_gloo_available(), 'torch without gloo'",
    "mpi_tcp": "from mpi4py import MPI",
    "mpi_shm": "from mpi4py import MPI",
}


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Skip:
    reason: str


@dataclass
class Setting:
    """Where things are: the peers' virtualenv, and ringdist's interpreter and launcher
    (None: found as described in README.md)."""
    venv: Path
    ringdist_python: str | None = None
    ringdist_launch: str | None = None


def probe(python: str, code: str) -> str:
    """'' when `python -c code` succeeds, else the last line it printed (why it failed)."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)) and not shutil.which(python):
        return f"{python}: no such interpreter"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return f"{python} -c {code!r}: no answer within 120 s"
    if done.returncode == 0:
        return ""
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


def ringdist_python(setting: Setting) -> tuple[str | None, str]:
    """The interpreter that imports ringdist: RINGDIST_PYTHON, else the one running this, else
    the project's .venv, else the peers' venv. (python, '') or (None, why not)."""
    if setting.ringdist_python:
        why = probe(setting.ringdist_python, PROBES["ringdist_ring"])
        return (setting.ringdist_python, "") if not why else (None, f"RINGDIST_PYTHON={setting.ringdist_python}: {why}")
    tried = []
    for candidate in (sys.executable, HERE.parents[1] / ".venv" / "bin" / "python", setting.venv / "bin" / "python"):
        why = probe(str(candidate), PROBES["ringdist_ring"])
        if not why:
            return str(candidate), ""
        tried.append(f"{candidate}: {why}")
    return None, "no interpreter imports ringdist (set RINGDIST_PYTHON): " + "; ".join(tried)


def ringdist_launcher(setting: Setting, python: str) -> list[str]:
    """RINGDIST_LAUNCH (a command line), else ringdist-launch beside the interpreter, else the
    interpreter's `-m ringdist_launch`."""
    if setting.ringdist_launch:
        return shlex.split(setting.ringdist_launch)
    beside = Path(python).parent / "ringdist-launch"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [python, "-m", "ringdist_launch"]


def free_port_block(count: int, tries: int = 50) -> int:
    """A first port p with p .. p+count-1 all free on 127.0.0.1 now (for launchers that take
    a starting port instead of choosing their own)."""
    for _ in range(tries):
        start = random.randrange(20000, 32000 - count)
        held = []
        try:
            for port in range(start, start + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no block of {count} free ports on 127.0.0.1 found in {tries} tries")


def plan(peer: str, n: int, worker_args: list[str], setting: Setting) -> Launch | Skip:
    """How to run `peer` on `n` local ranks, or why it cannot run here."""
    venv_python = str(setting.venv / "bin" / "python")
    if peer == "ringdist_ring":
        python, why = ringdist_python(setting)
        if python is None:
            return Skip(why)
        return Launch([*ringdist_launcher(setting, python), "-n", str(n), "--python", python,
                       str(HERE / "ringdist_worker.py"), *worker_args])
    if peer in MPI_BTL:
        mpirun = shutil.which("mpirun")
        if not mpirun:
            return Skip("mpirun not found (Open MPI: benchmarks/peers/setup.sh)")
        why = probe(venv_python, PROBES[peer])
        if why:
            return Skip(f"{venv_python}: {why}")
        transport, btl = MPI_BTL[peer]
        return Launch([mpirun, *MPIRUN, "-n", str(n), *btl, "-x", "PEER_TRANSPORT", "-x", "OMP_NUM_THREADS",
                       venv_python, str(HERE / "mpi_worker.py"), "--peer-name", peer, *worker_args],
                      {"PEER_TRANSPORT": transport})
    if peer == "torch_gloo":
        torchrun = setting.venv / "bin" / "torchrun"
        why = probe(venv_python, PROBES[peer]) or ("" if torchrun.is_file() else f"{torchrun}: not found")
        if why:
            return Skip(f"{venv_python}: {why}")
        # --standalone: a rendezvous on a free localhost port of its own
        return Launch([str(torchrun), "--standalone", "--nproc_per_node", str(n),
                       str(HERE / "gloo_worker.py"), *worker_args])
    if peer == "mlx_ring":
        launch = setting.venv / "bin" / "mlx.launch"
        why = probe(venv_python, PROBES[peer]) or ("" if launch.is_file() else f"{launch}: not found")
        if why:
            return Skip(f"{venv_python}: {why}")
        return Launch([str(launch), "--backend", "ring", "-n", str(n), "--starting-port", str(free_port_block(n)),
                       "--python", venv_python, "--", str(HERE / "mlx_worker.py"), *worker_args])
    return Skip(f"unknown peer (expected one of {', '.join(PEERS)})")
