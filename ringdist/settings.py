"""Tunables read from the environment, validated once, with the defaults documented in the README."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .ops import REDUCE_OPS
from .errors import ConfigError

# Every variable the library reads: its settings (below), the job's (`jobenv`), the socket
# directory. The launcher warns of a RINGDIST_ name given to it that is none of these.
VARIABLES = frozenset("RINGDIST_" + name for name in (
    "TIMEOUT", "CONNECT_TIMEOUT", "INIT_TIMEOUT", "LANES", "DIRECTIONS", "DIRECT_MAX", "SOCKET_BUFFERS",
    "BUFFER_CACHE_MB", "SPIN_US", "VERBOSE", "ALGO", "MAX_OBJECT_BYTES", "SHM", "SHM_SIGNALS", "SHM_CMA",
    "SECRET", "SECRET_FILE", "INSECURE", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
    "RENDEZVOUS", "BIND", "HOST", "SOCKET_DIR"))


def _number(env: dict[str, str], name: str, default: float, *, minimum: float = 0.0,
            unlimited: bool = True, inclusive: bool = False) -> float:
    """A number greater than `minimum` (or equal to it, where `inclusive`); `inf` (no limit) only
    where `unlimited`. ConfigError names `name`."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not (value >= minimum if inclusive else value > minimum):  # NaN too
        raise ConfigError(f"{name}={raw!r} must be {'at least' if inclusive else 'greater than'} {minimum:g}")
    if value == math.inf and not unlimited:
        raise ConfigError(f"{name}={raw!r} must be finite")
    return value


def flag(env: dict[str, str], name: str) -> bool:
    """A yes/no variable: 1, true, yes, on (any case) or 0, false, no, off, unset or empty;
    anything else a ConfigError naming it."""
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={env[name]!r} must be 1 or 0 (or true/false, yes/no, on/off)")


@dataclass(frozen=True)
class Settings:
    timeout: float = 300.0  # RINGDIST_TIMEOUT: seconds a collective may go without progress
    connect_timeout: float = 30.0  # RINGDIST_CONNECT_TIMEOUT: connect + handshake
    init_timeout: float = 120.0  # RINGDIST_INIT_TIMEOUT: waiting for every rank at the rendezvous
    lanes: int = 1  # RINGDIST_LANES: connections per ring neighbour
    directions: int = 0  # RINGDIST_DIRECTIONS: ring directions of large blocks, 1 or 2 (0: from the addresses)
    direct_max: int | None = None  # RINGDIST_DIRECT_MAX: largest block (bytes) sent to every rank directly (None: by group size)
    socket_buffers: tuple[int, int] = (2 << 20, 1 << 20)  # RINGDIST_SOCKET_BUFFERS: "RCV,SND" bytes, 0 = kernel
    buffer_cache_mb: float = 1024.0  # RINGDIST_BUFFER_CACHE_MB: idle large buffers kept for reuse (0: none)
    spin_us: float = 0.0  # RINGDIST_SPIN_US: microseconds to poll before blocking (see default_spin_us)
    spin_yield: bool = False  # more local ranks than cores: yield the core while spinning
    verbose: bool = False  # RINGDIST_VERBOSE
    algo: tuple[tuple[str, str], ...] = ()  # RINGDIST_ALGO: (op, algorithm) pairs overriding the tuning table
    max_object_bytes: int = 1 << 30  # RINGDIST_MAX_OBJECT_BYTES: largest pickled object sent or accepted
    shm: bool = True  # RINGDIST_SHM: shared memory between the ranks of a group on one machine
    shm_backend: str = "auto"  # RINGDIST_SHM=posix: "posix" (the portable backend, `posixshm`); else "auto"
    shm_signals: bool = True  # RINGDIST_SHM_SIGNALS: shared-memory rounds signal through the segments (0: over TCP)
    shm_cma: bool = True  # RINGDIST_SHM_CMA: large one-host blocks read straight from a peer's memory (0: through the segments)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ) if env is None else env
        lanes = _number(env, "RINGDIST_LANES", 1, minimum=0, unlimited=False)
        if lanes != int(lanes) or lanes > 16:
            raise ConfigError(f"RINGDIST_LANES={env.get('RINGDIST_LANES')!r} must be an integer from 1 to 16")
        direct_max = _number(env, "RINGDIST_DIRECT_MAX", -1, minimum=0, inclusive=True, unlimited=False)
        if direct_max != int(direct_max):
            raise ConfigError(f"RINGDIST_DIRECT_MAX={env.get('RINGDIST_DIRECT_MAX')!r} must be a whole number of bytes")
        directions = env.get("RINGDIST_DIRECTIONS", "").strip()
        if directions not in ("", "0", "1", "2"):
            raise ConfigError(f"RINGDIST_DIRECTIONS={directions!r} must be 1 or 2 (or 0: chosen from the ranks' addresses)")
        max_object = _number(env, "RINGDIST_MAX_OBJECT_BYTES", cls.max_object_bytes, minimum=0, unlimited=False)
        if max_object != int(max_object):
            raise ConfigError(f"RINGDIST_MAX_OBJECT_BYTES={env.get('RINGDIST_MAX_OBJECT_BYTES')!r} "
                              f"must be a whole number of bytes")
        spin = env.get("RINGDIST_SPIN_US")
        shm = env.get("RINGDIST_SHM", "").strip()
        if shm not in ("", "0", "1", "posix"):
            raise ConfigError(f"RINGDIST_SHM={shm!r} must be 0 (TCP only), 1 (shared memory on one machine) "
                              f"or posix (shared memory, the portable backend)")
        signals = env.get("RINGDIST_SHM_SIGNALS", "").strip()
        if signals not in ("", "0", "1"):
            raise ConfigError(f"RINGDIST_SHM_SIGNALS={signals!r} must be 1 (shared-memory rounds signal through "
                              f"the segments where the machine allows) or 0 (over TCP)")
        cma = env.get("RINGDIST_SHM_CMA", "").strip()
        if cma not in ("", "0", "1"):
            raise ConfigError(f"RINGDIST_SHM_CMA={cma!r} must be 1 (large blocks read straight from a peer's "
                              f"memory where the system allows) or 0 (through the shared segments)")
        shared = oversubscribed(env)
        socket_buffers = _socket_buffers(env.get("RINGDIST_SOCKET_BUFFERS"), cls.socket_buffers)
        return cls(
            spin_us=default_spin_us(shared) if spin in (None, "") else _number(env, "RINGDIST_SPIN_US", 0, minimum=0, inclusive=True),
            timeout=_number(env, "RINGDIST_TIMEOUT", cls.timeout),
            connect_timeout=_number(env, "RINGDIST_CONNECT_TIMEOUT", cls.connect_timeout),
            init_timeout=_number(env, "RINGDIST_INIT_TIMEOUT", cls.init_timeout),
            lanes=int(lanes),
            directions=int(directions or 0),
            spin_yield=bool(shared),
            direct_max=None if direct_max < 0 else int(direct_max),
            socket_buffers=socket_buffers,
            buffer_cache_mb=_number(env, "RINGDIST_BUFFER_CACHE_MB", default_buffer_cache_mb(env), minimum=0,
                                    inclusive=True),
            verbose=flag(env, "RINGDIST_VERBOSE"),
            algo=_algo(env.get("RINGDIST_ALGO")),
            max_object_bytes=int(max_object),
            shm=shm != "0",
            shm_backend="posix" if shm == "posix" else "auto",
            shm_signals=signals != "0",
            shm_cma=cma != "0",
        )


def _socket_buffers(raw: str | None, default: tuple[int, int]) -> tuple[int, int]:
    if raw is None or raw == "":
        return default
    parts = raw.split(",")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ConfigError(f"RINGDIST_SOCKET_BUFFERS={raw!r} must be two byte counts, RCV,SND (0: the kernel's)")
    rcv, snd = (int(p) for p in parts)
    if max(rcv, snd) > MAX_SOCKET_BUFFER:
        raise ConfigError(f"RINGDIST_SOCKET_BUFFERS={raw!r}: at most {MAX_SOCKET_BUFFER} bytes each "
                          "(the kernel's limit for one socket buffer)")
    small = [name for name, value in (("RCV", rcv), ("SND", snd)) if 0 < value < MIN_SOCKET_BUFFER]
    if small:
        raise ConfigError(f"RINGDIST_SOCKET_BUFFERS={raw!r}: {' and '.join(small)} must be 0 (the kernel's) or at least "
                          f"{MIN_SOCKET_BUFFER} bytes (one loopback segment): under it a 512 KiB all-sum on 2 ranks took "
                          "13 s a call (a receive buffer of 4096: TCP waits on its timers) or 50 ms (a send buffer)")
    return rcv, snd


# all_reduce: every all_<op> and the rooted reduce; reduce_scatter: every <op>_scatter; *: every op.
ALGO_OPS = ("all_gather", *("all_" + op for op in REDUCE_OPS), *(op + "_scatter" for op in REDUCE_OPS), "broadcast",
            "barrier", "gather", "reduce", "all_to_all", "scatter", "all_gather_uneven", "all_gather_object",
            "broadcast_object", "gather_object", "scatter_object", "gather_uneven", "scatter_uneven", "scan", "all_reduce",
            "reduce_scatter", "*")


def _algo(raw: str | None) -> tuple[tuple[str, str], ...]:
    """RINGDIST_ALGO=op:name,op:name (op as in ALGO_OPS); which names exist is the tuning table's to check."""
    if not raw or not raw.strip():
        return ()
    pairs = []
    for item in raw.split(","):
        op, sep, name = item.strip().partition(":")
        if not sep or not name.strip() or op.strip() not in ALGO_OPS:
            raise ConfigError(f"RINGDIST_ALGO={raw!r}: {item.strip()!r} is not op:algorithm "
                              f"(op one of {', '.join(ALGO_OPS)})")
        pairs.append((op.strip(), name.strip()))
    return tuple(pairs)


def algo_key(pairs: tuple[tuple[str, str], ...]) -> list[list[str]]:
    """What RINGDIST_ALGO's `pairs` mean, in one spelling (for comparing ranks' settings): the
    last entry for each op (the last matching entry wins), sorted unless an entry covers
    several ops (`*`, `all_reduce`, `reduce_scatter`), whose order against the others then matters."""
    last: dict[str, str] = {}
    for op, name in pairs:
        last.pop(op, None)
        last[op] = name
    entries = [[op, name] for op, name in last.items()]
    return entries if any(op in ("*", "all_reduce", "reduce_scatter") for op in last) else sorted(entries)


MIN_SOCKET_BUFFER = 1 << 16  # smaller: a 512 KiB all-sum on loopback took 10 s (4 KiB) to 0.2 s (16 KiB), no CPU
MAX_SOCKET_BUFFER = (1 << 30) - 1  # SO_RCVBUF / SO_SNDBUF take a C int, which the kernel doubles


SPIN_US = 2000.0  # a core per local rank: spin this long, then block (2 ranks: 64 KiB-1 MiB calls 10-40% faster than 50 µs)
SHARED_SPIN_US = 200.0  # more local ranks than cores: spin this long, yielding the core between polls


def local_ranks(env: dict[str, str]) -> int | None:
    """How many ranks run on this host, where the launcher (or a scheduler) says."""
    for name in ("RINGDIST_LOCAL_WORLD_SIZE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        raw = env.get(name, "")
        if raw.isascii() and raw.isdigit():
            return int(raw)
    return None


def oversubscribed(env: dict[str, str]) -> bool | None:
    """Whether this host runs more ranks than it has cores (None: the launcher did not say)."""
    ranks = local_ranks(env)
    if ranks is None:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return ranks > cores


BUFFER_CACHE_MB = 1024.0  # idle memory a rank keeps for reuse, at most
BUFFER_CACHE_MIN_MB = 64.0  # ... and at least, however many ranks share the host
BUFFER_CACHE_SHARE = 0.25  # of the host's memory, for the idle buffers of all its ranks together


def default_buffer_cache_mb(env: dict[str, str]) -> float:
    """RINGDIST_BUFFER_CACHE_MB's default: 1024, or less where this host's ranks together would
    keep more than a quarter of its memory idle (64 ranks on 128 GiB: 512 each), but at least 64."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, AttributeError):  # the system does not say
        return BUFFER_CACHE_MB
    share = memory * BUFFER_CACHE_SHARE / (local_ranks(env) or 1) / (1 << 20)
    return max(BUFFER_CACHE_MIN_MB, min(BUFFER_CACHE_MB, share))


def default_spin_us(shared: bool | None) -> float:
    """Spin briefly before blocking when the launcher said how many ranks share this host.

    With a core per rank, a plain spin beats the kernel's wake-up latency. With more
    ranks than cores a plain spin would take the core a peer needs, so the spin yields
    between polls (and only small operations spin: see Group.run).
    """
    if shared is None:
        return 0.0
    return SHARED_SPIN_US if shared else SPIN_US
