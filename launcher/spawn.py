"""Starting rank processes and signalling them: the mechanics, no decisions.

Each rank is a `subprocess.Popen` in its own session (so the launcher can
signal its whole process group, and a terminal's Ctrl-C reaches only the
launcher), with stdin closed and stdout/stderr piped to the launcher. A
spawner per kind of host: `LocalSpawner` for this machine; an ssh spawner
will sit beside it and return the same `Popen` (of the local ssh client).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Callable, Mapping, Protocol, Sequence

from ringdist.errors import ConfigError
from ringdist.hostfile import Placement

_PR_SET_PDEATHSIG = 1


class Spawner(Protocol):
    """Starts one rank and returns its process; `env` holds only the variables to add."""

    def start(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None
    ) -> subprocess.Popen[bytes]: ...


class LocalSpawner:
    """Starts ranks as children of the launcher on this machine."""

    def __init__(self) -> None:
        self._preexec = _die_with_parent()

    def start(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` with the launcher's environment plus `env`, in a new session."""
        return subprocess.Popen(
            list(argv),
            env={**os.environ, **env},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=self._preexec,
        )


def spawner_for(placement: Placement, local: LocalSpawner) -> Spawner:
    """The spawner that can start a rank at `placement`; `ConfigError` if none can yet."""
    if placement.is_local:
        return local
    raise ConfigError(f"host {placement.host!r} is not local; ssh launch is not implemented yet")


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the rank's whole process group; a group already gone is fine."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        # PermissionError: macOS reports EPERM for a group whose only member is a zombie.
        pass


def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Block until the rank exits; return its returncode (-N for signal N).

    On Linux the process is left unreaped (a zombie) so that its pid, and thus
    its process group id, cannot be reused until the launcher reaps it with
    `proc.wait()` - signalling the group later can never hit an unrelated process.
    """
    if sys.platform.startswith("linux"):
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    return proc.wait()


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the rank if the launcher dies (Linux only).

    The death signal follows the thread that forked the child, so ranks must be
    started from a thread that lives as long as the launcher (the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    launcher_pid = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != launcher_pid:  # the launcher died before prctl took effect
            os._exit(1)

    return set_parent_death_signal
