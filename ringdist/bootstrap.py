"""Forming the world group from the environment (DESIGN.md section 3).

ringdist-launch sets RINGDIST_RANK, RINGDIST_WORLD_SIZE, RINGDIST_RENDEZVOUS,
RINGDIST_SECRET and RINGDIST_BIND. Each rank listens on an ephemeral port of its
own address, registers at the rendezvous, learns every other rank's address, and
connects its ring. Without that environment the world is a single process.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

from . import rendezvous, wire
from .channel import recv_control, send_blocking
from .endpoint import Endpoint, InboxKey
from .errors import ConfigError, ProtocolError, RingTimeoutError
from .group import Group, close_all
from .settings import Settings

BACKENDS = ("ring",)

_world: Group | None = None
_world_lock = threading.Lock()
_control: "ControlLink | None" = None
_endpoint: Endpoint | None = None


@dataclass(frozen=True)
class JobEnv:
    """What the environment says about this process's place in a job."""

    rank: int
    size: int
    rendezvous: tuple[str, int]
    secret: bytes
    bind: list[str]
    host: str


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
    """The job this process belongs to, or None when nothing launched it."""
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
    bind = [ip.strip() for ip in env.get("RINGDIST_BIND", "127.0.0.1").split(",") if ip.strip()]
    if not bind:
        raise ConfigError("RINGDIST_BIND is empty")
    return JobEnv(rank=rank, size=size, rendezvous=rdv, secret=secret.encode(), bind=bind,
                  host=env.get("RINGDIST_HOST") or socket.gethostname())


def init(strict: bool = False, backend: str = "ring") -> Group:
    """The world group; later calls return the same group.

    Not launched: a singleton group (rank 0 of 1), or ConfigError when `strict`.
    Launched but broken (bad environment, unreachable peer): raises even when not strict.
    """
    global _world
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; ringdist provides {', '.join(BACKENDS)}")
    with _world_lock:
        if _world is not None:
            return _world
        settings = Settings.from_env()
        job = read_environment(dict(os.environ))
        if job is None:
            if strict:
                raise ConfigError(
                    "init(strict=True): this process was not launched by ringdist-launch "
                    "(RINGDIST_RANK, RINGDIST_WORLD_SIZE and RINGDIST_RENDEZVOUS are not set)")
            _world = Group(gid="world", rank=0, size=1, endpoint=None, settings=settings,
                           addresses=[[]], world_ranks=[0])
        else:
            _world = _join(job, settings)
        return _world


def _join(job: JobEnv, settings: Settings) -> Group:
    global _endpoint, _control
    label = f"rank {job.rank}"
    _endpoint = Endpoint(job.secret, job.bind, connect_timeout=settings.connect_timeout, label=label)
    try:
        _control = ControlLink(_endpoint, job, settings)
        members = _control.register()
        addresses = [[(ip, int(port)) for ip, port in m["addresses"]] for m in members]
        return Group(gid="world", rank=job.rank, size=job.size, endpoint=_endpoint, settings=settings,
                     addresses=addresses, world_ranks=list(range(job.size)))
    except BaseException:
        shutdown()
        raise


class ControlLink:
    """This rank's connection to the rendezvous: registration, then a watch for the launcher's exit."""

    def __init__(self, endpoint: Endpoint, job: JobEnv, settings: Settings):
        self.job = job
        self.settings = settings
        self.closing = False
        host, port = job.rendezvous
        self.where = rendezvous.format_address(host, port)
        deadline = time.monotonic() + settings.connect_timeout
        self.sock = endpoint.connect([job.rendezvous], InboxKey(rendezvous.RENDEZVOUS_GROUP, job.rank, "register", 0),
                                     deadline, "the rendezvous")

    def register(self) -> list[dict]:
        job = self.job
        deadline = time.monotonic() + self.settings.init_timeout
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
    """Close every group, the control connection and the listener (also run at exit)."""
    global _world, _control, _endpoint
    close_all()
    if _control is not None:
        _control.close()
        _control = None
    if _endpoint is not None:
        _endpoint.close()
        _endpoint = None
    _world = None


atexit.register(shutdown)
