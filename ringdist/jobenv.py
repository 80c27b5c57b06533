"""Who this process is in a job, from its environment: ringdist-launch's variables or a scheduler's.

ringdist-launch sets RINGDIST_RANK, RINGDIST_WORLD_SIZE, RINGDIST_RENDEZVOUS,
RINGDIST_SECRET, RINGDIST_BIND and RINGDIST_SOCKET_DIR (see `posixshm`).
Without the launcher, the environment of a cluster scheduler - Slurm (srun), Open
MPI (mpirun) or torchrun - gives the rank and the world size, MASTER_ADDR:MASTER_PORT
(or RINGDIST_RENDEZVOUS) the rendezvous that rank 0 serves, and RINGDIST_SECRET or
RINGDIST_SECRET_FILE the job secret. Pure functions of the environment, but for the
route lookup that picks an address to listen on (which sends nothing).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import zlib
from dataclasses import dataclass, field

from . import channel, rendezvous
from .errors import ConfigError
from .settings import flag
from .routes import source_address

log = logging.getLogger("ringdist")

LAUNCHER = "ringdist-launch"
INSECURE_SECRET = b"ringdist-insecure-job"  # RINGDIST_INSECURE=1: anyone who can connect may join
DEFAULT_MASTER_PORT = 29500  # torchrun's default


@dataclass(frozen=True)
class JobEnv:
    """What the environment says about this process's place in a job."""

    rank: int
    size: int
    rendezvous: tuple[str, int]
    secret: bytes = field(repr=False)  # never printed
    bind: list[str]
    host: str
    source: str = LAUNCHER  # who started the rank: ringdist-launch, Slurm, Open MPI or torchrun
    hosts_rendezvous: bool = False  # rank 0 under a scheduler serves the rendezvous itself
    socket_dir: str | None = None  # RINGDIST_SOCKET_DIR: the launcher's per-job directory for local sockets

    @property
    def launched(self) -> bool:
        """Started by ringdist-launch, whose control connection the rank watches."""
        return self.source == LAUNCHER


def _int_var(env: dict[str, str], name: str) -> int:
    raw = env.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def read_environment(env: dict[str, str]) -> JobEnv | None:
    """The job this process belongs to, or None when nothing launched it.

    ringdist-launch's variables win; then a scheduler's (torchrun, Open MPI, Slurm:
    the innermost launcher first, as torchrun under srun sees both).
    """
    if "RINGDIST_RANK" not in env:
        scheduler = detect_scheduler(env)
        if scheduler is not None:
            return _scheduler_environment(env, scheduler)
    if "RINGDIST_RANK" not in env and "RINGDIST_RENDEZVOUS" not in env:
        return None
    missing = [n for n in ("RINGDIST_RANK", "RINGDIST_WORLD_SIZE", "RINGDIST_RENDEZVOUS") if not env.get(n)]
    if missing:
        raise ConfigError(f"incomplete ringdist environment: {', '.join(missing)} not set")
    rank, size = _int_var(env, "RINGDIST_RANK"), _int_var(env, "RINGDIST_WORLD_SIZE")
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RINGDIST_RANK={rank} is not in range for RINGDIST_WORLD_SIZE={size}")
    try:
        rdv = rendezvous.parse_address(env["RINGDIST_RENDEZVOUS"])
    except ValueError as exc:
        raise ConfigError(f"RINGDIST_RENDEZVOUS: {exc}") from None
    secret = env.get("RINGDIST_SECRET", "")
    if not secret:
        raise ConfigError(f"rank {rank}: RINGDIST_SECRET is not set (ringdist-launch sets it for every rank)")
    if "RINGDIST_BIND" in env:
        bind = _bind_list(env["RINGDIST_BIND"]) or [_address_towards(rdv[0], multi_node=None)]
    else:
        bind = ["127.0.0.1"]
    return JobEnv(rank=rank, size=size, rendezvous=rdv, secret=secret_bytes(secret), bind=bind,
                  host=env.get("RINGDIST_HOST") or socket.gethostname(),
                  socket_dir=env.get("RINGDIST_SOCKET_DIR") or None)


# ---- cluster schedulers --------------------------------------------------------------------


@dataclass(frozen=True)
class Scheduler:
    """A scheduler's view of this process: who started it, its rank, the world size."""

    name: str
    rank: int
    size: int
    multi_node: bool | None  # None: cannot tell
    rendezvous_hint: str | None = None  # rank 0's host when the scheduler says so (Slurm)
    port_hint: int | None = None
    secret_hint: str = ""  # where the line goes, so that every rank gets the same secret


def detect_scheduler(env: dict[str, str]) -> Scheduler | None:
    """The scheduler whose variables are set (torchrun, Open MPI, Slurm, in that order), or None."""
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, size = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
        multi = _more_than(env, "LOCAL_WORLD_SIZE", size)
        return Scheduler("torchrun", rank, size, multi, "127.0.0.1" if multi is False else None,
                         secret_hint=", before torchrun (on several nodes, give every node the same value, "
                         "e.g. with RINGDIST_SECRET_FILE on a shared filesystem)")
    if "OMPI_COMM_WORLD_RANK" in env and "OMPI_COMM_WORLD_SIZE" in env:
        rank, size = _int_var(env, "OMPI_COMM_WORLD_RANK"), _int_var(env, "OMPI_COMM_WORLD_SIZE")
        multi = _more_than(env, "OMPI_COMM_WORLD_LOCAL_SIZE", size)
        job = env.get("OMPI_MCA_ess_base_jobid") or env.get("PMIX_NAMESPACE") or ""
        return Scheduler("Open MPI", rank, size, multi, "127.0.0.1" if multi is False else None,
                         _port_for(job) if job else None,
                         secret_hint=", before mpirun, and pass it on with mpirun -x RINGDIST_SECRET")
    size_var = next((n for n in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS") if n in env), None)
    if "SLURM_PROCID" in env and size_var is not None:
        rank, size = _int_var(env, "SLURM_PROCID"), _int_var(env, size_var)
        nodes = next((env[n] for n in ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES") if n in env), "")
        multi = int(nodes) > 1 if _digits(nodes) else None
        nodelist = next((env[n] for n in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                         if env.get(n)), "")
        first = "127.0.0.1" if multi is False else (first_slurm_host(nodelist) or None)
        job_id = env.get("SLURM_JOB_ID", env.get("SLURM_JOBID", ""))
        step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
        port = _port_for(f"{job_id}.{step}") if job_id else None
        return Scheduler("Slurm", rank, size, multi, first, port, secret_hint=", before srun")
    return None


def _port_for(job: str) -> int:
    """A rendezvous port derived from the scheduler's job id: the same in every rank of the job,
    and different for jobs that share a node (unless they are unlucky; MASTER_PORT then decides)."""
    return 20000 + zlib.crc32(job.encode()) % 20000


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: 'node[07-09,12],gpu1' -> 'node07'."""
    depth = 0
    for i, c in enumerate(nodelist):
        depth += (c == "[") - (c == "]")
        if c == "," and depth == 0:
            nodelist = nodelist[:i]
            break
    head = nodelist.strip()
    if "[" not in head:
        return head
    prefix, _, rest = head.partition("[")
    ranges, _, suffix = rest.partition("]")
    return prefix + ranges.split(",")[0].split("-")[0] + (first_slurm_host(suffix) if suffix else "")


def _digits(text: str) -> bool:
    """Whether `text` is a non-negative decimal integer in ASCII digits (int() takes "²" and "٣"
    as digits only in part: `str.isdigit` says yes to the first, which int() refuses)."""
    return text.isascii() and text.isdigit()


def secret_bytes(value: str) -> bytes:
    """A secret from the environment as the bytes it was set to (bytes that are not UTF-8
    included: Python keeps them as surrogates, which `os.fsencode` turns back)."""
    return os.fsencode(value)


def _more_than(env: dict[str, str], local_var: str, size: int) -> bool | None:
    raw = env.get(local_var, "")
    return int(raw) < size if _digits(raw) else None


def _scheduler_environment(env: dict[str, str], sched: Scheduler) -> JobEnv:
    who = f"{sched.name} rank {sched.rank}"
    if sched.size < 1 or not 0 <= sched.rank < sched.size:
        raise ConfigError(f"{who}: rank {sched.rank} is not in range for a world of {sched.size}")
    if env.get("RINGDIST_RENDEZVOUS"):
        try:
            rdv = rendezvous.parse_address(env["RINGDIST_RENDEZVOUS"])
        except ValueError as exc:
            raise ConfigError(f"{who}: RINGDIST_RENDEZVOUS: {exc}") from None
    else:
        host = env.get("MASTER_ADDR") or sched.rendezvous_hint
        if not host:
            raise ConfigError(
                f"{who}: no rendezvous address: set MASTER_ADDR and MASTER_PORT to rank 0's host and a "
                f"free port there (or RINGDIST_RENDEZVOUS=host:port)")
        port_text = env.get("MASTER_PORT", "")
        if port_text:
            if not _digits(port_text) or not 0 < int(port_text) < 65536:
                raise ConfigError(f"{who}: MASTER_PORT={port_text!r} is not a port number")
            port = int(port_text)
            if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                port += 1  # torchrun's agent already serves its own store at MASTER_PORT
        else:
            port = sched.port_hint or DEFAULT_MASTER_PORT
        rdv = (host.strip("[]"), port)
    secret = _scheduler_secret(env, sched, who)
    if env.get("RINGDIST_BIND", "").strip():
        bind = _bind_list(env["RINGDIST_BIND"])
    else:
        bind = [_address_towards(rdv[0], sched.multi_node)]
    return JobEnv(rank=sched.rank, size=sched.size, rendezvous=rdv, secret=secret, bind=bind,
                  host=env.get("RINGDIST_HOST") or env.get("SLURMD_NODENAME") or socket.gethostname(),
                  source=sched.name, hosts_rendezvous=sched.rank == 0)


def _scheduler_secret(env: dict[str, str], sched: Scheduler, who: str) -> bytes:
    if env.get("RINGDIST_SECRET"):
        return secret_bytes(env["RINGDIST_SECRET"])
    path = env.get("RINGDIST_SECRET_FILE")
    if path:
        content, mode = channel.read_private_file(path, f"{who}: RINGDIST_SECRET_FILE")
        secret = content.strip()
        if not secret:
            raise ConfigError(f"{who}: RINGDIST_SECRET_FILE: {path} is empty")
        if mode & 0o077:
            log.warning("ringdist: %s: the secret file %s can be read by other users (chmod 600 it)", who, path)
        return secret
    if flag(env, "RINGDIST_INSECURE"):
        log.warning("ringdist: %s: RINGDIST_INSECURE=%s: no job secret; anyone who can reach the ranks "
                    "can join this job or read its data", who, env["RINGDIST_INSECURE"].strip())
        return INSECURE_SECRET
    raise ConfigError(
        f"{who}: no job secret. Add this line to the job script{sched.secret_hint}:\n"
        f"    export RINGDIST_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')\n"
        f"or set RINGDIST_SECRET_FILE to a file only you can read (RINGDIST_INSECURE=1 runs without a secret)")


def _bind_list(text: str) -> list[str]:
    return [ip.strip() for ip in text.split(",") if ip.strip()]


def _address_towards(host: str, multi_node: bool | None) -> str:
    """The address this rank listens on when none is given: its source address towards `host`.

    A loopback answer (rank 0's own name, which Debian maps to 127.0.1.1) is useless
    to ranks on other nodes: then the address on the default route is taken instead.
    """
    address = source_address(host)
    if address is None:
        raise ConfigError(f"cannot find a route to the rendezvous host {host!r} "
                          f"(set RINGDIST_BIND to the address this rank should listen on)")
    if ipaddress.ip_address(address).is_loopback and multi_node:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        address = source_address("2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1") or address
    return address
