"""The shared-memory link's portable backend: POSIX shared memory and a Unix socket file.

For systems without Linux's `memfd_create` and abstract Unix sockets (macOS), and on
Linux with `RINGDIST_SHM=posix`. Like `channel`, an edge where `OSError` becomes a
`RingError` (or None: the caller falls back to TCP).

- `make_segment`: `shm_open` under a random name (O_CREAT|O_EXCL, mode 0600), unlinked
  at once, before it is even sized: the name exists for microseconds, and the memory is
  then reached only through the descriptor, handed to peers over the authenticated Unix
  connection (SCM_RIGHTS) as with `memfd`. Nothing named outlives the processes.
- `listen`, `dial`: a Unix socket file `s` in a directory of its own (mode 0700, named by
  the caller from an HMAC of the job secret) under the base directory: ringdist-launch's
  per-job directory (`RINGDIST_SOCKET_DIR`, removed when the job ends), else `$TMPDIR`.
  `remove` deletes both when the endpoint closes, and at interpreter exit whatever this
  process made and did not remove. A process killed with SIGKILL leaves its socket file
  (no data: a name to connect to) in its 0700 directory, until the launcher's per-job
  directory goes.
"""

from __future__ import annotations

import mmap
import os
import secrets
import socket
import stat
import sys
import tempfile
import threading

from . import channel, forks
from .errors import ConnectError

try:
    import _posixshmem
except ImportError:  # not a POSIX system
    _posixshmem = None

SEGMENT_PREFIX = "/rd"  # then 8 hex digits of the job id and 16 random: 27 characters (macOS allows 31)
SOCKET_FILE = "s"
# Bytes of a Unix socket file's path: sun_path holds 108 with its NUL on Linux, 104 on macOS and the BSDs.
PATH_MAX = 107 if sys.platform.startswith("linux") else 103
SHORT_BASE = "/tmp"  # where socket directories go when the base directory's path is too long for them

_made: dict[str, int] = {}  # socket path -> the process that made it (a forked child must not remove it)
_made_lock = threading.Lock()


def available() -> bool:
    """Whether this system has what the portable backend needs: POSIX shared memory, Unix
    sockets and descriptor passing."""
    return _posixshmem is not None and hasattr(socket, "AF_UNIX") and hasattr(socket, "send_fds")


_reason = channel.reason


# ---- segments ------------------------------------------------------------------------------


def make_segment(size: int, label: str, job: str) -> tuple[int, mmap.mmap]:
    """A POSIX shared memory object of `size` bytes whose name is gone before this returns,
    and its mapping: (fd, mapping). ConnectError naming `label` if it cannot be made."""
    if _posixshmem is None:
        raise ConnectError(f"{label}: cannot create shared memory: no POSIX shared memory on this system")
    for _ in range(8):  # a name taken (EEXIST) by another process: draw again
        name = f"{SEGMENT_PREFIX}{job[:8]}{secrets.token_hex(8)}"
        try:
            fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConnectError(f"{label}: cannot create shared memory {name}: {_reason(exc)}") from None
        break
    else:
        raise ConnectError(f"{label}: cannot create shared memory: 8 random names all taken")
    try:
        _posixshmem.shm_unlink(name)
    except OSError as exc:
        os.close(fd)
        raise ConnectError(f"{label}: cannot unlink shared memory {name}: {_reason(exc)}") from None
    try:
        os.set_inheritable(fd, False)
        os.ftruncate(fd, size)
        if hasattr(os, "posix_fallocate"):
            # Its pages now, while the rank can still vote for TCP: a sparse segment on a full
            # /dev/shm (a container's 64 MiB) would fail later, as SIGBUS at the first write.
            os.posix_fallocate(fd, 0, size)
        return fd, channel.map_shared(fd, size)
    except OSError as exc:
        os.close(fd)
        raise ConnectError(f"{label}: cannot map {size} bytes of shared memory: {_reason(exc)}") from None


# ---- the Unix socket file ------------------------------------------------------------------


def base_directory(given: str | None) -> str:
    """Where socket directories go: `given` (the launcher's per-job directory), else $TMPDIR;
    /tmp where that is too long a path for a socket file under it (a 90-character $TMPDIR:
    every bind failed, and the group quietly used TCP). Every rank of a machine decides alike."""
    base = given or tempfile.gettempdir()
    return base if fits(base) or not os.path.isdir(SHORT_BASE) else SHORT_BASE


def fits(base: str) -> bool:
    """Whether socket files under `base` (`socket_path`) are short enough to bind."""
    return len(os.fsencode(socket_path(base, "0" * 24))) <= PATH_MAX


def socket_path(base: str, name: str) -> str:
    """The socket file of the endpoint whose abstract name is `name` ('ringdist-' + hex digits):
    `base/rd<24 hex>/s`: 29 bytes past the base, which may then be 78 bytes long on Linux, 74
    on macOS (`PATH_MAX`)."""
    return os.path.join(base, "rd" + name[-24:], SOCKET_FILE)


def _private_directory(path: str) -> None:
    """Make `path` a directory only this user can enter (0700); one already there is taken only
    if it is a real directory of this user with that mode (a leftover of this job's)."""
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # whatever the umask
        return
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) != 0o700:
        raise PermissionError(0, "exists and is not a private directory of this user")


def listen(path: str, backlog: int, label: str) -> socket.socket:
    """A Unix socket listening at `path`, in a private directory made for it; ConnectError
    naming `label` and the path when it cannot be made (the caller then goes without)."""
    directory = os.path.dirname(path)
    lsock = None
    try:
        _private_directory(directory)
        with _made_lock:
            _made[path] = os.getpid()
        try:
            os.unlink(path)  # a leftover of a killed process of this job with this address
        except FileNotFoundError:
            pass
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(backlog)
        return lsock
    except OSError as exc:
        if lsock is not None:
            lsock.close()
        if _made.get(path) == os.getpid():
            remove(path)
        raise ConnectError(f"{label}: cannot listen on local socket {path}: {_reason(exc)}") from None


def dial(path: str, timeout: float) -> socket.socket:
    """A connection to the Unix socket at `path`; ConnectError when nobody listens there."""
    sock = None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise channel.dial_error(f"local socket {path}: {_reason(exc)}", exc) from None
    return sock


def remove(path: str) -> None:
    """Delete the socket file at `path` and its directory, if this process made them; quietly."""
    with _made_lock:
        if _made.get(path) != os.getpid():
            return
        del _made[path]
    for undo, target in ((os.unlink, path), (os.rmdir, os.path.dirname(path))):
        try:
            undo(target)
        except OSError:
            pass


def forget_in_child() -> None:
    """In a forked child: the parent's socket files are not this process's to remove."""
    global _made_lock
    _made_lock = threading.Lock()  # the parent's may have been held by a thread the child lacks
    _made.clear()


def remove_all() -> None:
    """Every socket file this process made and has not removed (at exit: `ringdist._at_exit`)."""
    for path in list(_made):
        remove(path)


forks.in_child(forget_in_child)
