"""The world: `init()`, the default group, and what a rank holds for the whole job.

ringdist-launch sets RINGDIST_RANK, RINGDIST_WORLD_SIZE, RINGDIST_RENDEZVOUS,
RINGDIST_SECRET and RINGDIST_BIND (`jobenv` reads them, or a scheduler's variables).
Each rank listens on an ephemeral port of its own address, registers at the
rendezvous, learns every other rank's address, and connects its ring. The
rendezvous connection then stays open (`control`): when the launcher goes away,
the rank exits.

Under a cluster scheduler - Slurm (srun), Open MPI (mpirun) or torchrun - rank 0
hosts the rendezvous itself at MASTER_ADDR:MASTER_PORT (or RINGDIST_RENDEZVOUS).
There is no launcher to watch then: the rendezvous closes once everyone has the table.

With neither, the world is a single process.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time

from . import buffers, channel, comm, deadlines, exiting, forks, rendezvous, tuning
from .control import ControlLink
from .endpoint import Endpoint
from .errors import ConfigError, ConnectError, RingError
from .group import Group, close_all
from .jobenv import JobEnv, read_environment
from .settings import Settings

log = logging.getLogger("ringdist")

# Open files a rank may want: for every group it is in, a connection per peer and lane (past 8
# ranks, those opened on first use), and with shared memory a segment and an eventfd per peer
# (64 ranks: about 2N+2 = 130 a group); messages add a connection each way per pair. The soft
# limit is raised this far at init, as far as the hard limit allows (a common soft limit is
# 1024: the world and six groups of 64 ranks on one machine).
FD_LIMIT = 65536
BACKENDS = ("ring", "any")  # "any" (MLX's default) means the best available: ring
MLX_ONLY = ("mpi", "jaccl", "nccl")  # MLX's other backends: refused even when not strict, for a
# world of one on every rank (what MLX gives where one is missing) would run the job N times

_world: Group | None = None
_world_lock = threading.Lock()
_control: ControlLink | None = None
_endpoint: Endpoint | None = None
_hosted: "rendezvous.RendezvousServer | None" = None  # rank 0's, under a scheduler
_job: JobEnv | None = None  # what init() read from the environment (None: not launched)
_joined_and_failed: str | None = None  # why an init() failed once this rank had registered (it cannot again)


def is_available(backend: str = "ring") -> bool:
    """Whether `backend` can be used in this process (the ring backend always can)."""
    return backend in BACKENDS


def _unknown_backend(backend: object) -> str:
    if backend in MLX_ONLY:
        return (f"init: backend {backend!r} is MLX's, not ringdist's: ringdist has only the ring "
                f"backend (backend='ring', or MLX's default 'any')")
    return f"init: unknown backend {backend!r}; ringdist provides {', '.join(map(repr, BACKENDS))}"


def current() -> Group:
    """The world group, made by `init()` on first use."""
    return _world or init()


comm.set_default(current)  # what `group=None` means in every call


def init(strict: bool = False, backend: str = "ring") -> Group:
    """The world group; later calls return the same group.

    Not launched: a singleton group (rank 0 of 1), or ConfigError when `strict`.
    Launched but broken (bad environment, unreachable peer): raises even when not strict.
    """
    global _world, _job
    if strict is not True and strict is not False:
        raise TypeError(f"init: strict must be True or False, got {strict!r}")
    if backend not in BACKENDS:
        raise ValueError(_unknown_backend(backend))
    with _world_lock:
        if _world is not None:
            if strict and _job is None:
                raise ConfigError(_not_launched("init(strict=True)"))
            return _world  # (closed, once the exit hook has run: its calls say so)
        if exiting.done:  # code run after the hook (an exit handler registered before ringdist, a __del__)
            raise RingError(f"{exiting.WHY}; init() cannot join the job now")
        if _joined_and_failed is not None:
            raise RingError(_joined_and_failed)
        settings = Settings.from_env()
        tuning.check_overrides(settings.algo)
        buffers.configure(settings.buffer_cache_mb * (1 << 20))  # inf: no limit
        channel.configure_defaults(settings)
        job = _job = read_environment(dict(os.environ))
        if settings.verbose:
            _log_to_stderr()
        if job is None:
            if strict:
                raise ConfigError(_not_launched("init(strict=True)"))
            _world = Group(gid="world", rank=0, size=1, endpoint=None, settings=settings,
                           addresses=[[]], world_ranks=[0])
        else:
            _world = _join(job, settings)
        comm.set_default_made(_world)
        return _world


def _log_to_stderr() -> None:
    """RINGDIST_VERBOSE=1 (ringdist-launch -v): ringdist's log at INFO level on stderr."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("ringdist: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def _not_launched(what: str) -> str:
    return (f"{what}: this process was not launched by ringdist-launch "
            "(RINGDIST_RANK, RINGDIST_WORLD_SIZE and RINGDIST_RENDEZVOUS are not set) "
            "nor by a scheduler (no Slurm, Open MPI or torchrun rank variables)")


def _join(job: JobEnv, settings: Settings) -> Group:
    global _endpoint, _control, _hosted, _joined_and_failed
    label = f"rank {job.rank}"
    started = time.monotonic()
    registered = False
    try:
        channel.raise_fd_limit(FD_LIMIT)
        if job.hosts_rendezvous:
            _hosted = _host_rendezvous(job)
        _endpoint = Endpoint(job.secret, job.bind, connect_timeout=settings.connect_timeout, label=label,
                             local=settings.shm_backend, socket_dir=job.socket_dir)
        _control = ControlLink(_endpoint, job, settings)
        registered = True  # (from its first byte: the rendezvous may have it)
        members = _control.register()
        if not job.launched:  # no launcher to watch: the rendezvous's work is done
            _control.close()
            _control = None
            if _hosted is not None:
                _hosted.wait_delivered(deadlines.wait_slice(settings.connect_timeout))
                _hosted.close()
                _hosted = None
        addresses = [[(ip, int(port)) for ip, port in m["addresses"]] for m in members]
        caps = [_object_cap(m.get("object_cap")) for m in members]
        log.info("rank %d of %d (%s, pid %d): listening on %s; joined in %.1f ms", job.rank, job.size,
                 job.source, os.getpid(), ", ".join(f"{ip}:{port}" for ip, port in _endpoint.addresses),
                 (time.monotonic() - started) * 1e3)
        return Group(gid="world", rank=job.rank, size=job.size, endpoint=_endpoint, settings=settings,
                     addresses=addresses, world_ranks=list(range(job.size)), object_caps=caps)
    except BaseException as exc:
        if registered:  # the rendezvous has this rank (and its peers may have it in their table): no second try
            _joined_and_failed = (f"rank {job.rank}: init() failed once this rank had registered at the rendezvous "
                                  f"({type(exc).__name__}: {exc}); it cannot be called again in this process: "
                                  f"start the job again")
        if _hosted is not None:  # the others may still be owed the table (then they fail on their own)
            _hosted.abandon(f"rank {job.rank}, which serves the rendezvous, failed in init(): "
                            f"{type(exc).__name__}: {exc}")
            _hosted.finish_delivery(deadlines.wait_slice(settings.connect_timeout))
        shutdown()
        raise


def _object_cap(value: object) -> int | None:
    """A rank's RINGDIST_MAX_OBJECT_BYTES as the table gives it; None where it does not (a
    launcher of an earlier version passes no such field)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _host_rendezvous(job: JobEnv) -> rendezvous.RendezvousServer:
    """Rank 0 under a scheduler: serve the rendezvous at the address every rank was given.

    A loopback rendezvous address is served there (a one-node job); any other on
    every interface, since the name other nodes resolve may not be how this node
    names itself (Debian maps a host's own name to 127.0.1.1).
    """
    host, port = job.rendezvous
    ip = ipaddress.ip_address(channel.resolve(host, port, label=f"{job.source} rank 0", what="the rendezvous host"))
    listen = str(ip) if ip.is_loopback else ("::" if ip.version == 6 else "0.0.0.0")
    server = rendezvous.RendezvousServer(job.secret.decode("utf-8", "surrogateescape"), job.size,
                                         host=listen, port=port)
    try:
        server.start()
    except ConnectError as exc:
        server.close()
        raise ConfigError(f"{job.source} rank 0: {exc} (another process listens there: a second rank 0 of "
                          f"this job, or another job or program; each job needs its own MASTER_PORT)") from None
    return server


def shutdown(at_exit: bool = False) -> None:
    """Close the control connection, every group and the listener (also run at exit).

    The control connection goes first: the launcher then learns this rank is leaving
    before its peers see the ring close, and names the right rank as the first to go.
    At exit (`at_exit`) the world group stays the default, closed: code that runs after
    the hook gets errors saying so, where `init()` would otherwise register this rank
    at the rendezvous a second time (or, under a scheduler, make a new world).
    """
    global _world, _control, _endpoint, _hosted
    note = f" ({exiting.WHY})" if at_exit else ""
    if _control is not None:
        _control.close()
        _control = None
    close_all(note)
    if _hosted is not None:
        _hosted.close()
        _hosted = None
    if _endpoint is not None:
        _endpoint.close()
        _endpoint = None
    if not at_exit:
        _world = None
        comm.set_default_made(None)


def _after_fork_in_child() -> None:
    """A forked child leaves the rendezvous rank 0 may be serving to its parent (`forks` closes
    the child's copies of the rank's own connections; the control connection is one of them)."""
    global _hosted
    _hosted = None


forks.in_child(_after_fork_in_child)
