"""Forming the world group from the environment.

ringdist-launch sets RINGDIST_RANK, RINGDIST_WORLD_SIZE, RINGDIST_RENDEZVOUS,
RINGDIST_SECRET and RINGDIST_BIND. Each rank listens on an ephemeral port of its
own address, registers at the rendezvous, learns every other rank's address, and
connects its ring. The rendezvous connection then stays open: when the launcher
goes away, the rank exits.

Without the launcher, the environment of a cluster scheduler - Slurm (srun),
Open MPI (mpirun) or torchrun - gives the rank and the world size, and rank 0
hosts the rendezvous itself at MASTER_ADDR:MASTER_PORT (or RINGDIST_RENDEZVOUS);
the job secret comes from RINGDIST_SECRET or RINGDIST_SECRET_FILE. There is no
launcher to watch then: the rendezvous closes once everyone has the table.

With neither, the world is a single process.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field

from . import buffers, channel, deadlines, rendezvous, wire
from .routes import source_address
from .channel import recv_control, send_blocking
from .endpoint import Endpoint, InboxKey
from .errors import ConfigError, ConnectError, ProtocolError, RingTimeoutError
from .group import Group, close_all
from .settings import Settings

log = logging.getLogger("ringdist")

BACKENDS = ("ring", "any")  # "any" (MLX's default) means the best available: ring
LAUNCHER = "ringdist-launch"
INSECURE_SECRET = b"ringdist-insecure-job"  # RINGDIST_INSECURE=1: anyone who can connect may join
DEFAULT_MASTER_PORT = 29500  # torchrun's default

_world: Group | None = None
_world_lock = threading.Lock()
_control: "ControlLink | None" = None
_endpoint: Endpoint | None = None
_hosted: "rendezvous.RendezvousServer | None" = None  # rank 0's, under a scheduler
_job: "JobEnv | None" = None  # what init() read from the environment (None: not launched)


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

    @property
    def launched(self) -> bool:
        """Started by ringdist-launch, whose control connection the rank watches."""
        return self.source == LAUNCHER


def is_available(backend: str = "ring") -> bool:
    """Whether `backend` can be used in this process (the ring backend always can)."""
    return backend in BACKENDS


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
    return JobEnv(rank=rank, size=size, rendezvous=rdv, secret=secret.encode(), bind=bind,
                  host=env.get("RINGDIST_HOST") or socket.gethostname())


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
        return Scheduler("torchrun", rank, size, _more_than(env, "LOCAL_WORLD_SIZE", size),
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
        multi = int(nodes) > 1 if nodes.isdigit() else None
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


def _more_than(env: dict[str, str], local_var: str, size: int) -> bool | None:
    raw = env.get(local_var, "")
    return int(raw) < size if raw.isdigit() else None


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
            if not port_text.isdigit() or not 0 < int(port_text) < 65535:
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
        return env["RINGDIST_SECRET"].encode()
    path = env.get("RINGDIST_SECRET_FILE")
    if path:
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                secret = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"{who}: RINGDIST_SECRET_FILE: cannot read {path}: {exc.strerror or exc}") from None
        if not secret:
            raise ConfigError(f"{who}: RINGDIST_SECRET_FILE: {path} is empty")
        if mode & 0o077:
            log.warning("ringdist: %s: the secret file %s can be read by other users (chmod 600 it)", who, path)
        return secret
    if env.get("RINGDIST_INSECURE", "") not in ("", "0"):
        log.warning("ringdist: %s: RINGDIST_INSECURE=1: no job secret; anyone who can reach the ranks "
                    "can join this job or read its data", who)
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


def init(strict: bool = False, backend: str = "ring") -> Group:
    """The world group; later calls return the same group.

    Not launched: a singleton group (rank 0 of 1), or ConfigError when `strict`.
    Launched but broken (bad environment, unreachable peer): raises even when not strict.
    """
    global _world, _job
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; ringdist provides {', '.join(BACKENDS)}")
    with _world_lock:
        if _world is not None:
            if strict and _job is None:
                raise ConfigError(_not_launched("init(strict=True)"))
            return _world
        settings = Settings.from_env()
        buffers.cache.limit = settings.buffer_cache_mb * (1 << 20)  # inf: no limit
        channel.SOCKET_BUFFERS = settings.socket_buffers
        job = _job = read_environment(dict(os.environ))
        if job is None:
            if strict:
                raise ConfigError(_not_launched("init(strict=True)"))
            _world = Group(gid="world", rank=0, size=1, endpoint=None, settings=settings,
                           addresses=[[]], world_ranks=[0])
        else:
            _world = _join(job, settings)
        return _world


def _not_launched(what: str) -> str:
    return (f"{what}: this process was not launched by ringdist-launch "
            "(RINGDIST_RANK, RINGDIST_WORLD_SIZE and RINGDIST_RENDEZVOUS are not set) "
            "nor by a scheduler (no Slurm, Open MPI or torchrun rank variables)")


def _join(job: JobEnv, settings: Settings) -> Group:
    global _endpoint, _control, _hosted
    label = f"rank {job.rank}"
    try:
        if job.hosts_rendezvous:
            _hosted = _host_rendezvous(job)
        _endpoint = Endpoint(job.secret, job.bind, connect_timeout=settings.connect_timeout, label=label)
        _control = ControlLink(_endpoint, job, settings)
        members = _control.register()
        if not job.launched:  # no launcher to watch: the rendezvous's work is done
            _control.close()
            _control = None
            if _hosted is not None:
                _hosted.wait_delivered(deadlines.wait_slice(settings.connect_timeout))
                _hosted.close()
                _hosted = None
        addresses = [[(ip, int(port)) for ip, port in m["addresses"]] for m in members]
        return Group(gid="world", rank=job.rank, size=job.size, endpoint=_endpoint, settings=settings,
                     addresses=addresses, world_ranks=list(range(job.size)))
    except BaseException:
        shutdown()
        raise


def _host_rendezvous(job: JobEnv) -> rendezvous.RendezvousServer:
    """Rank 0 under a scheduler: serve the rendezvous at the address every rank was given.

    A loopback rendezvous address is served there (a one-node job); any other on
    every interface, since the name other nodes resolve may not be how this node
    names itself (Debian maps a host's own name to 127.0.1.1).
    """
    host, port = job.rendezvous
    try:
        ip = ipaddress.ip_address(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0].split("%")[0])
    except (OSError, ValueError, UnicodeError) as exc:
        raise ConfigError(f"{job.source} rank 0: cannot resolve the rendezvous host {host!r}: {exc}") from None
    listen = str(ip) if ip.is_loopback else ("::" if ip.version == 6 else "0.0.0.0")
    server = rendezvous.RendezvousServer(job.secret.decode("utf-8", "surrogateescape"), job.size,
                                         host=listen, port=port)
    try:
        server.start()
    except OSError as exc:
        server.close()
        raise ConfigError(
            f"{job.source} rank 0: cannot serve the rendezvous at {rendezvous.format_address(listen, port)}: "
            f"{exc.strerror or exc} (choose another MASTER_PORT)") from None
    return server


class ControlLink:
    """This rank's connection to the rendezvous: registration, then a watch for the launcher's exit."""

    def __init__(self, endpoint: Endpoint, job: JobEnv, settings: Settings):
        self.job = job
        self.settings = settings
        self.closing = False
        host, port = job.rendezvous
        self.where = rendezvous.format_address(host, port)
        # Under a scheduler rank 0 may start after the others: keep trying until the init deadline.
        wait = settings.connect_timeout if job.launched else settings.init_timeout
        try:
            self.sock = endpoint.connect([job.rendezvous],
                                         InboxKey(rendezvous.RENDEZVOUS_GROUP, job.rank, "register", 0),
                                         deadlines.after(wait), "the rendezvous")
        except ConnectError as exc:
            if job.launched:
                raise
            raise ConnectError(
                f"rank {job.rank} ({job.source}): init() gave up after {wait:g} s: no rendezvous answered at "
                f"{self.where}, where rank 0 serves it (is rank 0 running on that host? "
                f"RINGDIST_INIT_TIMEOUT sets the limit): {exc}") from None

    def register(self) -> list[dict]:
        job = self.job
        deadline = deadlines.after(self.settings.init_timeout)
        addresses = [[ip, port] for ip, port in _endpoint.addresses]  # type: ignore[union-attr]
        send_blocking(self.sock, rendezvous.encode(
            {"type": "register", "rank": job.rank, "size": job.size, "addresses": addresses,
             "host": job.host, "pid": os.getpid()}), deadline)
        try:
            _, msg, _ = recv_control(self.sock, deadline, expect=wire.CONTROL)
        except socket.timeout:
            raise RingTimeoutError(self._timeout_message()) from None
        except EOFError:
            raise ConfigError(f"rank {job.rank}: the rendezvous at {self.where} closed the connection") from None
        if msg.get("type") == "error":
            raise ConfigError(f"rank {job.rank}: the rendezvous at {self.where} refused: {msg.get('message')}")
        if msg.get("type") != "table" or not isinstance(msg.get("members"), list):
            raise ProtocolError(f"rank {job.rank}: unexpected message from the rendezvous: {msg.get('type')!r}")
        members = msg["members"]
        if len(members) != job.size:
            raise ProtocolError(f"rank {job.rank}: rendezvous table has {len(members)} ranks, expected {job.size}")
        if job.launched:
            threading.Thread(target=self._watch, name="ringdist-control", daemon=True).start()
        return members

    def _timeout_message(self) -> str:
        waited = f"rank {self.job.rank}: init() timed out after {self.settings.init_timeout:g} s at the rendezvous {self.where}"
        try:
            send_blocking(self.sock, rendezvous.encode({"type": "query"}), time.monotonic() + 2)
            _, msg, _ = recv_control(self.sock, time.monotonic() + 2, expect=wire.CONTROL)
            ranks = msg.get("ranks", [])
            hosts = msg.get("hosts", [])
            listing = ", ".join(f"{r} (host {h})" for r, h in zip(ranks, hosts))
            return f"{waited}: ranks that never registered: {listing} (RINGDIST_INIT_TIMEOUT sets the limit)"
        except Exception:
            return f"{waited} (RINGDIST_INIT_TIMEOUT sets the limit)"

    def _watch(self) -> None:
        """Exit when the launcher's end of the control connection closes (no orphans)."""
        try:
            self.sock.settimeout(None)
            while self.sock.recv(4096):
                pass
        except OSError:
            pass
        if self.closing:
            return
        sys.stderr.write(f"ringdist: rank {self.job.rank}: the launcher's control connection to "
                         f"{self.where} closed; exiting\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        os._exit(143)

    def close(self) -> None:
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def shutdown() -> None:
    """Close the control connection, every group and the listener (also run at exit).

    The control connection goes first: the launcher then learns this rank is leaving
    before its peers see the ring close, and names the right rank as the first to go.
    """
    global _world, _control, _endpoint, _hosted
    if _control is not None:
        _control.close()
        _control = None
    close_all()
    if _hosted is not None:
        _hosted.close()
        _hosted = None
    if _endpoint is not None:
        _endpoint.close()
        _endpoint = None
    _world = None


def _after_fork_in_child() -> None:
    """A forked child leaves the rendezvous rank 0 may be serving to its parent (`forks` closes
    the child's copies of the rank's own connections; the control connection is one of them)."""
    global _hosted
    _hosted = None


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
